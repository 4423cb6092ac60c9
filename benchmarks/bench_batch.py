"""Studies per hour: ``lumbarseg batch`` vs. a plain loop of ``lumbarseg segment`` calls (not a test).

Writes ``--studies`` phantom CTs, then segments them three ways on this machine, each from a fresh
process as a user would run them: a shell-style loop of ``segment`` calls (each loads Python, torch and
the model again), ``batch`` with its default local cluster, and ``batch --workers N`` for each N given.
Prints studies per hour, the ratio to the loop, and each batch worker's peak resident memory (from the
``worker_peak_mb`` column of ``summary.csv``), with the machine's core count and load average, since a
shared machine's numbers move with its load.

    python benchmarks/bench_batch.py [--studies 6] [--shape 160 160 120] [--workers 1 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from LumbarSegLib.batch import summary as batch_summary  # noqa: E402


def lumbarseg(*args) -> list[str]:
    return [sys.executable, "-m", "LumbarSegLib.cli", *map(str, args)]


def write_phantoms(folder: Path, n: int, shape) -> None:
    import SimpleITK as sitk

    from LumbarSegLib import phantoms

    folder.mkdir(parents=True)
    for i in range(n):
        ct, _ = phantoms.generate_phantom(1000 + i, shape=shape, fov="abdomen")
        sitk.WriteImage(ct, str(folder / f"ct{i:03d}.nii.gz"), useCompression=True)


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=False, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def loop_of_segment(cts: list[Path], out: Path, device: str) -> float:
    return sum(timed(lumbarseg("segment", ct, "-o", out / ct.name.split(".")[0], "--device", device, "-q"))
               for ct in cts)


def run_batch(data: Path, out: Path, device: str, workers: int | None) -> tuple[float, dict[str, float], int]:
    extra = ["--workers", workers] if workers else []
    seconds = timed(lumbarseg("batch", data, "-o", out, "--device", device, "-q", *extra))
    rows = batch_summary.read_summary(out / batch_summary.SUMMARY_NAME)
    peaks: dict[str, float] = {}
    for row in rows:
        if row.get("worker"):
            peaks[row["worker"]] = max(peaks.get(row["worker"], 0.0), float(row["worker_peak_mb"] or 0))
    return seconds, peaks, sum(row["status"] == "ok" for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 160, 120), metavar=("NX", "NY", "NZ"))
    parser.add_argument("--workers", type=int, nargs="*", default=[2], help="batch --workers values to time")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        tmp = Path(tmp)
        write_phantoms(tmp / "in", args.studies, args.shape)
        cts = sorted((tmp / "in").iterdir())
        load = os.getloadavg()[0]
        loop_s = loop_of_segment(cts, tmp / "loop", args.device)
        per_hour = {"loop of segment calls": (args.studies / loop_s * 3600, loop_s, {}, args.studies)}
        for workers in [None, *args.workers]:
            seconds, peaks, ok = run_batch(tmp / "in", tmp / f"batch_{workers or 'default'}", args.device, workers)
            name = f"batch --workers {workers}" if workers else "batch (default local cluster)"
            per_hour[name] = (ok / seconds * 3600, seconds, peaks, ok)
        load = max(load, os.getloadavg()[0])

    base = per_hour["loop of segment calls"][0]
    print(f"{args.studies} phantom CTs of {'x'.join(map(str, args.shape))} voxels, device {args.device}, "
          f"{os.cpu_count()} cores, load average up to {load:.1f}")
    print(f"{'run':<32} {'studies ok':>10} {'wall s':>8} {'studies/h':>10} {'vs loop':>8}  peak MB per worker")
    for name, (rate, seconds, peaks, ok) in per_hour.items():
        peak_text = ", ".join(f"{v:.0f}" for v in sorted(peaks.values())) or "-"
        print(f"{name:<32} {ok:>10} {seconds:>8.1f} {rate:>10.0f} {rate / base:>7.2f}x  {peak_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
