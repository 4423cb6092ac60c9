"""Regenerate the bundled sample CT (``Resources/SampleData/LumbarSegSampleCT.nrrd``) and its checksum.

A synthetic lumbar CT from the phantom generator (``LumbarSegLib.phantoms.generate_phantom``), about 2 mm
voxels, int16 HU, gzip-compressed NRRD: small enough to keep in the repository, large enough for the
bundled model to find L1-L5. The Slicer module registers it as the *LumbarSeg* sample in Sample Data, so a
new user can try the module offline. The SHA-256 is written beside it (``<file>.sha256``, ``DIGEST *NAME``
as in Slicer's testing data); Sample Data verifies the copy it loads against it.

    python3 tools/make_sample_data.py          # rewrite the file and its checksum
    python3 tools/make_sample_data.py --check  # exit 1 if the stored file differs from a fresh one
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE_PATH = ROOT / "Resources" / "SampleData" / "LumbarSegSampleCT.nrrd"
SEED = 0
SHAPE = (128, 128, 90)  # x, y, z voxels
SPACING = (2.0, 2.0, 2.0)  # mm
FOV = "lumbar"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sample(path: Path) -> str:
    import SimpleITK as sitk

    from LumbarSegLib.phantoms import generate_phantom

    ct, _ = generate_phantom(SEED, shape=SHAPE, spacing=SPACING, fov=FOV)
    ct = sitk.Cast(ct, sitk.sitkInt16)
    for key in ct.GetMetaDataKeys():
        ct.EraseMetaData(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(path), useCompression=True)
    digest = sha256(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest} *{path.name}\n", encoding="utf-8")
    return digest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare a fresh file with the stored one")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = write_sample(Path(tmp) / SAMPLE_PATH.name)
        stored = sha256(SAMPLE_PATH) if SAMPLE_PATH.is_file() else None
        print(f"stored {stored}\nfresh  {fresh}")
        return 0 if stored == fresh else 1
    digest = write_sample(SAMPLE_PATH)
    print(f"wrote {SAMPLE_PATH} ({SAMPLE_PATH.stat().st_size / 1e6:.2f} MB, SHA256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
