"""Wall time per stage and peak memory of one segmentation of a clinical-size CT (not a test).

Builds a 512x512x300 CT at 0.8x0.8x1.0 mm (a phantom when ``LumbarSegLib.phantoms`` is available, else a
simple synthetic torso), writes it to a temporary NIfTI so that reading is timed like a user's run, then
times read, localize, segment, postprocess, STL and total with the bundled model.

    python benchmarks/bench_pipeline.py [--repeat 3] [--device auto] [--shape 512 512 300] [--spacing 0.8 0.8 1.0]
        [--finder-model ../finder_state/fold-A.pt] [--profile 30] [--no-kept-heap]

``--no-kept-heap`` runs the segmentation with glibc's own malloc settings instead of ``inference.heap``'s (freed
memory kept for reuse): run both, alternately, to see what that saves on a machine.

Peak memory is the process's resident high-water mark (``ru_maxrss``), which includes PyTorch's own
allocations that ``tracemalloc`` cannot see; the table also shows the Python-heap peak from ``tracemalloc``
for the segmentation call alone when ``--tracemalloc`` is given (it slows numpy-heavy code down).
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import platform
import pstats
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LumbarSegLib.inference import pipeline  # noqa: E402
from LumbarSegLib.results import surfaces  # noqa: E402
from LumbarSegLib.io import images  # noqa: E402
from LumbarSegLib.inference.models import load_model, resolve_device  # noqa: E402

STAGES = ("read", "load", "localize", "segment", "postprocess", "refine", "stl", "total")


def peak_rss_mib() -> float:
    # Linux reports kilobytes, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 ** 2 if sys.platform == "darwin" else 1024)


def simple_ct(shape, spacing) -> sitk.Image:
    """A torso with a column of bony 'vertebrae' in HU, for when the phantom generator is absent."""
    nx, ny, nz = shape
    sx, sy, sz = spacing
    y, x = np.mgrid[:ny, :nx]
    xm, ym = (x - nx / 2) * sx, (y - ny / 2) * sy
    body = (xm / 160) ** 2 + (ym / 110) ** 2 <= 1
    column = xm ** 2 + (ym - 40) ** 2 <= 22 ** 2
    ct = np.full((nz, ny, nx), -1000, np.int16)
    rng = np.random.default_rng(0)
    for k in range(nz):
        sl = ct[k]
        sl[body] = 40
        if (k * sz) % 35 < 27:  # 27 mm vertebral bodies, 8 mm discs
            sl[column] = 600
    ct += rng.normal(0, 10, ct.shape).astype(np.int16)
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing(spacing)
    return img


def make_ct(shape, spacing, path: Path) -> str:
    """Write the benchmark CT to ``path``; runs in a child process so that the generator's own memory
    peak does not pollute this process's ru_maxrss."""
    try:
        from LumbarSegLib import phantoms
    except ImportError:
        ct, source = simple_ct(shape, spacing), "simple synthetic torso"
    else:
        ct, _ = phantoms.generate_phantom(0, shape=shape, spacing=spacing, fov="abdomen")
        source = "phantom (seed 0, abdomen field of view)"
    sitk.WriteImage(ct, str(path), useCompression=True)
    return source


def run_once(path: Path, model, device: str, outdir: Path, trace: bool, refine=None, finder=None,
             profile=None) -> dict[str, float]:
    times: dict[str, float] = {}
    t_total = time.perf_counter()
    t0 = time.perf_counter()
    image = images.read_ct(path)
    times["read"] = time.perf_counter() - t0
    if trace:
        import tracemalloc

        tracemalloc.start()
    if profile is not None:
        profile.enable()
    result = pipeline.segment(image, model=model, device=device, refine=refine, finder=finder)
    if profile is not None:
        profile.disable()
    if trace:
        times["python_heap_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    times.update(result.timings)
    t0 = time.perf_counter()
    surfaces.write_stl(result.labels, outdir)
    times["stl"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_total
    times["found"] = len(result.found)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0))
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="cProfile the last run's segmentation and print the engine's N functions that take "
                             "longest, calls included (profiling slows the run it watches)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                        help="the per-vertebra stage (default: on when its model is installed, as segment)")
    parser.add_argument("--finder", action=argparse.BooleanOptionalAction, default=None,
                        help="the finder's path (default: on when its model is installed, as segment)")
    parser.add_argument("--finder-model", help="a finder model file or training checkpoint instead of the bundled one")
    parser.add_argument("--kept-heap", action=argparse.BooleanOptionalAction, default=True,
                        help="keep freed memory for reuse while a study runs (inference.heap; the default, as segment)")
    args = parser.parse_args(argv)
    if not args.kept_heap:
        import contextlib

        from LumbarSegLib.inference import heap

        heap.kept_heap = contextlib.nullcontext  # what pipeline.segment enters

    device = str(resolve_device(args.device))
    model = load_model(args.model)
    tmpdir = tempfile.TemporaryDirectory()
    path = Path(tmpdir.name) / "bench_ct.nii.gz"
    t0 = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        source = pool.submit(make_ct, tuple(args.shape), tuple(args.spacing), path).result()
    build_s = time.perf_counter() - t0
    print(f"CT: {'x'.join(map(str, args.shape))} at {'x'.join(f'{s:g}' for s in args.spacing)} mm, "
          f"{source} (built in {build_s:.1f} s)")
    print(f"Model: {model.path or 'random weights (no bundled model)'}, trained={model.trained}; device {device}; "
          f"torch threads {__import__('torch').get_num_threads()}; {platform.processor() or platform.machine()}")
    if not model.trained:
        print("WARNING: untrained weights - timings are representative, results are not.")
    if hasattr(os, "getloadavg"):  # a timing means little without the load it was measured under
        print(f"Load average before the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
              f"({'idle' if os.getloadavg()[0] < 0.5 else 'NOT idle: other processes share the CPUs'})")

    from LumbarSegLib.inference.vertebra_stage import choose

    chosen = choose(args.refine)
    stage3 = chosen[0] if chosen else None
    print(f"Per-vertebra stage: {chosen[1]['name'] if chosen else 'off'}; freed memory "
          f"{'kept for reuse (inference.heap)' if args.kept_heap else 'given back at once (glibc as it is)'}")
    from LumbarSegLib.inference import finder as finder_module

    if args.finder_model:  # a training checkpoint ({"config", "weights", ...}) or a model file
        import torch

        found_by = finder_module.load_finder(torch.load(args.finder_model, map_location="cpu", weights_only=True),
                                             args.finder_model) if stage3 is not None else None
        print(f"Finder: {args.finder_model if found_by is not None else 'off (needs the per-vertebra stage)'}")
    else:
        found = finder_module.choose(args.finder, chosen)
        found_by = found[0] if found else None
        print(f"Finder: {found[1]['name'] if found else 'off'}")
    baseline = peak_rss_mib()  # interpreter + torch + model: paid once, whatever the CT size
    runs = []
    with tmpdir:
        for i in range(args.repeat):
            last = i == args.repeat - 1
            profile = cProfile.Profile() if args.profile and last else None
            runs.append(run_once(path, model, device, Path(tmpdir.name) / f"stl{i}", args.tracemalloc, stage3,
                                 found_by, profile))
            print(f"run {i + 1}/{args.repeat}: total {runs[-1]['total']:.2f} s, found {runs[-1]['found']} vertebrae",
                  flush=True)
    n_voxels = int(np.prod(args.shape))
    if args.profile:
        print("\nThe last run's segmentation under cProfile (its own total above is slowed by it):")
        pstats.Stats(profile).sort_stats("cumulative").print_stats("LumbarSegLib", args.profile)

    print()
    print(f"{'stage':<12} {'median s':>9} {'min s':>8} {'max s':>8}")
    print("-" * 40)
    for stage in STAGES:
        values = [r[stage] for r in runs if stage in r]
        if values:
            print(f"{stage:<12} {statistics.median(values):9.2f} {min(values):8.2f} {max(values):8.2f}")
    print("-" * 40)
    peak = peak_rss_mib()
    print(f"peak resident memory (ru_maxrss): {peak:.0f} MiB; {baseline:.0f} MiB before the first run; the "
          f"difference is {(peak - baseline) * 2**20 / n_voxels:.1f} bytes per CT voxel "
          f"(images.BYTES_PER_VOXEL = {images.BYTES_PER_VOXEL} is what the memory check assumes)")
    if args.tracemalloc:
        print(f"peak Python heap during segment (tracemalloc): "
              f"{max(r['python_heap_peak_mib'] for r in runs):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
