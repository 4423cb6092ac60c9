"""Pack what ``tools/train_gpu.sh`` needs on the GPU machine into the ignored folder ``gpu_carry/``.

    python3 tools/pack_gpu_carry.py [--data ../shared/data] [--out gpu_carry] [--no-wheel]

* ``gpu_carry/data/``: the real training cases (``real/``, ``tptbox_l3/``, ``real_boneonly/``) and the
  vertebra masks of the phantoms' shape library (``masks/``), re-written as compressed NIfTI with CTs in
  int16 (Hounsfield units rounded) and label maps in uint8 - the geometry is kept, labels are checked to be
  unchanged and CTs to be within 0.5 HU;
* ``gpu_carry/wheels/``: the SimpleITK wheel for the GPU machine, which has PyTorch but not SimpleITK
  (Python 3.12 there; SimpleITK's ``cp311-abi3`` wheel serves every CPython from 3.11 on), installed there
  with ``pip install --no-index``. The wheel is re-compressed with LZMA (still a valid wheel: its files and
  their RECORD hashes are unchanged, and pip reads LZMA members through ``zipfile``): 29 MB instead of 53,
  which leaves room in the 64 MiB for the shipped ``paper`` model (16 MB) in the repository.

Everything that travels to the GPU machine (the files git tracks or would add, plus this folder) must stay
under 64 MiB; the script measures it and fails when it does not fit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("real", "tptbox_l3", "real_boneonly", "masks")
LIMIT_BYTES = 64 * 2 ** 20
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def is_label_map(path: Path, folder: str) -> bool:
    return folder == "masks" or "_msk" in path.name or "_seg" in path.name.lower()


def convert(src: Path, dst: Path, label: bool) -> str:
    img = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(img)
    if label:
        if arr.min() < 0 or arr.max() > 255 or not np.array_equal(arr, np.rint(arr)):
            raise SystemExit(f"{src}: label values outside 0..255 or not whole numbers; cannot store as uint8")
        out_arr = arr.astype(np.uint8)
        assert np.array_equal(out_arr, arr)
    else:
        out_arr = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
        if np.abs(out_arr.astype(np.float64) - arr).max() > 0.5:
            raise SystemExit(f"{src}: CT values outside the int16 range")
    out = sitk.GetImageFromArray(out_arr)
    out.CopyInformation(img)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(dst), useCompression=True)
    return f"{arr.dtype}->{out_arr.dtype}"


def pack_data(data: Path, out: Path) -> None:
    for folder in FOLDERS:
        root = data / folder
        if not root.is_dir():
            print(f"  (no {root}: skipped)")
            continue
        for src in sorted(root.rglob("*")):
            if not src.is_file():
                continue
            dst = out / folder / src.relative_to(root)
            if src.name.endswith((".nii.gz", ".nii")):
                what = convert(src, dst.with_name(dst.name if dst.name.endswith(".gz") else dst.name + ".gz"),
                               is_label_map(src, folder))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                what = "copied"
            print(f"  {folder}/{src.relative_to(root)}: {what}")


def download_wheel(out: Path, lzma: bool = True) -> None:
    version = sitk.Version_VersionString() if hasattr(sitk, "Version_VersionString") else sitk.__version__
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"SimpleITK=={version}", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(out)]
    for platform in WHEEL_PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd, check=True)
    wheels = sorted(out.glob("simpleitk-*.whl")) + sorted(out.glob("SimpleITK-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one SimpleITK wheel in {out}, found {[w.name for w in wheels]}")
    if lzma:
        print(f"re-compressing {wheels[0].name} with LZMA (about two minutes) ...", flush=True)
        recompress_wheel(wheels[0])


def recompress_wheel(wheel: Path) -> None:
    """Re-write the wheel's zip members with LZMA; names, contents, dates and permissions stay as they were."""
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for info in zin.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            member.external_attr = info.external_attr
            member.compress_type = zipfile.ZIP_LZMA
            zout.writestr(member, zin.read(info))
    with zipfile.ZipFile(tmp) as check:
        if check.testzip() is not None:
            raise SystemExit(f"re-compressed {wheel.name} failed its check")
    os.replace(tmp, wheel)


def travelling_bytes(carry: Path) -> tuple[int, int]:
    """(bytes of the files git tracks or would add, bytes of the carried folder)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((REPO / name.decode()).stat().st_size for name in listed if name and (REPO / name.decode()).is_file())
    carried = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    return tree, carried


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data folder")
    p.add_argument("--out", default=str(REPO / "gpu_carry"), help="folder to write (default gpu_carry/)")
    p.add_argument("--no-wheel", action="store_true", help="data only (no download)")
    p.add_argument("--keep-wheel-compression", action="store_true",
                   help="carry the wheel as PyPI serves it (53 MB: no room left for a shipped paper model)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    print(f"data from {args.data} -> {out / 'data'}")
    pack_data(Path(args.data), out / "data")
    if not args.no_wheel:
        download_wheel(out / "wheels", lzma=not args.keep_wheel_compression)
    tree, carried = travelling_bytes(out)
    total = tree + carried
    mib = 2 ** 20
    print(f"travelling tree: {tree / mib:.1f} MiB of repository files + {carried / mib:.1f} MiB in {out.name}/ "
          f"= {total / mib:.1f} MiB (limit {LIMIT_BYTES / mib:.0f} MiB)")
    if total > LIMIT_BYTES:
        print("ERROR: too large to travel to the GPU machine", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
