"""Click-to-result time of the Slicer module against the command line on the same CT.

The module runs the command line in a subprocess (LumbarSegLib.study.engine_process), so its extra cost is what it
does around it: hand the volume over as a file (none for an unchanged file), poll, read the label map, build
the segmentation (segments and closed surfaces) and ROI, and fill the metrics table (from the report). Both are timed here,
alternately (the machine may be shared), on a real MRML scene (slicer-core) with this Python standing in for
PythonSlicer:

    python3 benchmarks/bench_slicer_module.py [--ct CT] [--repeat 3] [--in-memory]

``cli``: ``python -m LumbarSegLib.cli segment CT -o OUT --device cpu`` as a user would type it (wall time).
``module``: ``LumbarSegLogic.startSegmentation`` -> ``poll()`` until done (the widget's timer, no sleep) ->
``finishSegmentation`` (segments, surfaces, ROI, metrics table): from the click to the result in the scene.
``--in-memory`` makes the volume a node without a file (as after editing), so it is written to a temporary
NRRD first. Prints one JSON object: the medians, the module - cli difference (the issue asks for <= 2 s),
and ``module_overhead_s`` = start + into_scene, the module's own work around the command (on a busy
machine the command's own time varies by more than that from run to run, which the difference includes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from LumbarSegLib.scene.sample_data import SAMPLE_FILE  # noqa: E402


def load_module_file():
    spec = importlib.util.spec_from_file_location("LumbarSegModule", ROOT / "LumbarSeg" / "LumbarSeg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_cli(ct: Path) -> float:
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "LumbarSegLib.cli", "segment", str(ct), "-o", f"{folder}/out",
                        "--device", "cpu", "-q"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def time_module(module, ct: Path, in_memory: bool) -> dict:
    import SimpleITK as sitk
    import slicer

    from LumbarSegLib.scene.scene import ensure_segmentations_logic
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    scene = slicer.vtkMRMLScene()
    ensure_segmentations_logic(scene)
    if in_memory:
        volume = sitk_to_volume_node(scene, sitk.ReadImage(str(ct)), "CT")
    else:
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(ct))
        storage.ReadData(volume)
        volume.SetAndObserveStorageNodeID(storage.GetID())
    logic = module.LumbarSegLogic()
    logic.pythonExecutable = sys.executable
    t0 = time.perf_counter()
    job = logic.startSegmentation(scene, volume, device="cpu")
    t_started = time.perf_counter()
    while job.process.running:
        job.process.wait_for_output(0.1)
        job.process.poll()
    t_ended = time.perf_counter()
    logic.finishSegmentation(scene, job)  # segments, surfaces, ROI and the metrics table
    t1 = time.perf_counter()
    return {"total": t1 - t0, "start": t_started - t0, "process": t_ended - t_started, "into_scene": t1 - t_ended,
            "found": list(logic.lastResult.found)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ct", type=Path, default=SAMPLE_FILE, help="CT file (default: the bundled sample CT)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--in-memory", action="store_true", help="the volume has no file (temporary NRRD)")
    args = parser.parse_args(argv)
    module = load_module_file()
    cli, runs = [], []
    for _ in range(args.repeat):  # alternate, so a change in machine load hits both alike
        cli.append(time_cli(args.ct))
        runs.append(time_module(module, args.ct, args.in_memory))
    median = {key: statistics.median(r[key] for r in runs) for key in ("total", "start", "process", "into_scene")}
    print(json.dumps({
        "ct": str(args.ct), "repeat": args.repeat, "in_memory": args.in_memory,
        "cli_s": round(statistics.median(cli), 2), "module_s": round(median["total"], 2),
        "module_minus_cli_s": round(median["total"] - statistics.median(cli), 2),
        # What the module adds around the same command: hand-over before it, loading the result after it.
        "module_overhead_s": round(median["start"] + median["into_scene"], 2),
        "module_parts_s": {k: round(v, 2) for k, v in median.items() if k != "total"},
        "cli_runs_s": [round(v, 2) for v in cli], "module_runs_s": [round(r["total"], 2) for r in runs],
        "found": runs[-1]["found"],
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
