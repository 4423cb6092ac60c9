"""Regenerate docs/web_screenshot.png: the README's picture of the web app, taken by its browser test.

    python3 tools/make_web_screenshot.py

Runs the first browser test of Testing/test_web_browser.py (``lumbarseg serve --sample`` in this Python,
Segment in Debian's chromium) with LUMBARSEG_WEB_SCREENSHOT set, so the picture is what that test saw
after the five metric rows appeared. Needs the web app installed (bash tools/install.sh: .venv has it).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "web_screenshot.png"

if __name__ == "__main__":
    env = dict(os.environ, LUMBARSEG_WEB_SCREENSHOT=str(OUT), LUMBARSEG_REQUIRE_WEB="1")
    test = "Testing/test_web_browser.py::test_sample_segment_shows_five_rows_3d_surfaces_and_exports_closed_stl_on_the_labels"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", test], cwd=ROOT, env=env)
    if done.returncode == 0:
        print(f"wrote {OUT}")
    sys.exit(done.returncode)
