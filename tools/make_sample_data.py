"""Regenerate the bundled sample CT (``Resources/SampleData/LumbarSegSampleCT.nrrd``) and its checksum.

A synthetic lumbar CT from the phantom generator (``LumbarSegLib.phantoms.generate_phantom``), about 2 mm
voxels, int16 HU, gzip-compressed NRRD: small enough to keep in the repository, large enough for the
bundled model to find L1-L5. The Slicer module registers it as the *LumbarSeg* sample in Sample Data, so a
new user can try the module offline. The SHA-256 is written beside it (``<file>.sha256``, ``DIGEST *NAME``
as in Slicer's testing data); Sample Data verifies the copy it loads against it.

The same CT is also written as a DICOM series (``Resources/SampleData/LumbarSegSampleCT_DICOM/``, CT Image
Storage, one uncompressed file per slice, 3.2 MB) with every UID a DICOM SEG references, so that
``lumbarseg segment Resources/SampleData/LumbarSegSampleCT_DICOM -o out --dicom-seg`` can be tried without
any patient data. Its UIDs are derived from a fixed seed, so the series is reproducible byte for byte;
``dciodvfy`` (dicom3tools) finds no error in its files.

    python3 tools/make_sample_data.py          # rewrite the file, its checksum and the DICOM series
    python3 tools/make_sample_data.py --check  # exit 1 if the stored files differ from fresh ones
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
SAMPLE_DICOM_DIR = ROOT / "Resources" / "SampleData" / "LumbarSegSampleCT_DICOM"
DICOM_UID_SEED = "LumbarSeg sample CT v2"  # new pixel data, new UIDs
SEED = 1  # seed 0, the first sample, is one the bundled model gets wrong (five blobs on the bowel)
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


def write_sample_dicom(nrrd_path: Path, folder: Path) -> list[Path]:
    """The sample CT (as stored) as a DICOM series in ``folder`` (emptied first)."""
    import shutil

    import SimpleITK as sitk

    from LumbarSegLib.io.dicom_write import write_ct_series

    if folder.exists():
        shutil.rmtree(folder)
    return write_ct_series(sitk.ReadImage(str(nrrd_path)), folder, uid_seed=DICOM_UID_SEED,
                           SeriesDescription="LumbarSeg sample CT (synthetic phantom)",
                           StudyDescription="LumbarSeg sample (synthetic)")


def _folder_digest(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare a fresh file with the stored one")
    parser.add_argument("--dicom-only", action="store_true", help="rewrite only the DICOM series, from the stored CT")
    args = parser.parse_args(argv)
    if args.dicom_only:
        files = write_sample_dicom(SAMPLE_PATH, SAMPLE_DICOM_DIR)
        print(f"wrote {SAMPLE_DICOM_DIR} ({len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.2f} MB)")
        return 0
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = write_sample(Path(tmp) / SAMPLE_PATH.name)
            write_sample_dicom(SAMPLE_PATH, Path(tmp) / "dicom")
            fresh_dicom = _folder_digest(Path(tmp) / "dicom")
        stored = sha256(SAMPLE_PATH) if SAMPLE_PATH.is_file() else None
        stored_dicom = _folder_digest(SAMPLE_DICOM_DIR)
        print(f"stored {stored}\nfresh  {fresh}\nDICOM series: stored {stored_dicom}\n              fresh  {fresh_dicom}")
        return 0 if stored == fresh and stored_dicom == fresh_dicom else 1
    digest = write_sample(SAMPLE_PATH)
    print(f"wrote {SAMPLE_PATH} ({SAMPLE_PATH.stat().st_size / 1e6:.2f} MB, SHA256 {digest})")
    return main(["--dicom-only"])


if __name__ == "__main__":
    sys.exit(main())
