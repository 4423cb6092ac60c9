"""Wall time of ``lumbarseg --version`` and ``--help`` in a fresh interpreter (not a test; the tests only check
that no torch is loaded, see Testing/test_startup.py).

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def time_command(argv: list[str], repeat: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "LumbarSegLib.cli", *argv], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, Python {platform.python_version()}")
    for argv in (["--version"], ["--help"]):
        times = time_command(argv, args.repeat)
        print(f"lumbarseg {' '.join(argv):<10} median {statistics.median(times):.3f} s, "
              f"min {min(times):.3f} s over {args.repeat} runs")


if __name__ == "__main__":
    main()
