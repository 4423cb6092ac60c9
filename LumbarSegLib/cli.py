"""``lumbarseg`` command line: segment, evaluate, phantom, demo, training's train and evaluate-model, and
the web app's serve.

Every user-fixable problem (:class:`errors.LumbarSegError`) ends as one ``lumbarseg: error: ...`` line on
stderr with exit code 2 - no traceback, because a traceback tells a clinician-user nothing they can act on.
Running with untrained (random) weights is allowed so the tool works end to end before a model ships,
but is announced loudly, since such labels are meaningless.

Subcommand handlers are registered with ``parser.set_defaults(func=handler)`` and return an exit code
(``None`` counts as 0); other modules adding subcommands (``training.commands.register_cli``) follow the same rule.
"""

from __future__ import annotations

# Only light standard-library imports at module level: a Ctrl-C while torch or SimpleITK load must land
# inside main()'s handler (one line, exit 130), not in an import traceback.
import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .errors import InputError, LumbarSegError
# The console side of a study run (light: the runner itself is imported where a command runs it).
from .study.console import PROG, StageProgress, err, print_summary

# The demo phantom: an abdominal field of view (T11-ish to sacrum, so all of L1-L5 is in it) on a
# 256x256x200 grid; the phantom fits the spacing (about 1.5 mm) to that field of view.
DEMO_SHAPE = (256, 256, 200)
DEMO_SPACING = None
DEMO_FOV = "abdomen"


# --------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------

def cmd_segment(args) -> int:
    from .study.runner import StudyOptions, run_study

    print_summary(run_study(StudyOptions.from_args(args)))
    return 0


def cmd_evaluate(args) -> int:
    from .io import label_maps, text_files
    from .measures import agreement
    from .results.outputs import check_output_file

    for path, what in ((args.output, "JSON output"), (args.csv, "CSV output")):
        if path:
            check_output_file(path, what)
    pred = label_maps.read_labelmap(args.pred, scheme=args.pred_labels)
    ref = label_maps.read_labelmap(args.ref, scheme=args.ref_labels)
    notes: list[str] = []
    result = agreement.compare_images(pred, ref, resample=not args.strict_grid, notes=notes)
    note = label_maps.reference_without_lumbar_note(ref)
    if note:
        notes.append(note)
    for note in notes:
        err(f"{PROG}: note: {note}")
    print(agreement.format_table(result))
    if args.output:
        text_files.write_json({
            "prediction": {"path": str(args.pred), "label_scheme": label_maps.label_scheme_of(pred)},  # as given
            "reference": {"path": str(args.ref), "label_scheme": label_maps.label_scheme_of(ref)},
            "metrics": result, "summary": agreement.summary(result), "notes": notes,
        }, args.output)
        print(f"JSON: {args.output}")
    if args.csv:
        agreement.write_metrics_csv(result, args.csv)
        print(f"CSV: {args.csv}")
    return 0


PHANTOM_MIN_VOXELS = 16


def _check_phantom_grid(shape, spacing) -> None:
    """Refuse a phantom grid before generating anything: the generator needs room for a spine, and the
    result must be a CT that LumbarSeg itself accepts."""
    from .io.images import MAX_SPACING_MM, MIN_SPACING_MM, check_memory

    if shape is not None:
        if any(v < PHANTOM_MIN_VOXELS for v in shape):
            raise InputError(f"--shape {' '.join(map(str, shape))}: each of NX NY NZ must be at least "
                             f"{PHANTOM_MIN_VOXELS} voxels (e.g. --shape 256 256 200).")
        check_memory(shape, what=f"A {'x'.join(map(str, shape))} phantom")
    if spacing is not None and not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in spacing):
        raise InputError(f"--spacing {' '.join(f'{v:g}' for v in spacing)}: each of SX SY SZ must be between "
                         f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm (e.g. --spacing 0.8 0.8 1.0).")


def _phantom_case(ct_path: Path, seed: int) -> dict:
    """The grid a phantom was drawn on, from its file's header (the generator draws it when not given)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ct_path))
    reader.ReadImageInformation()
    return {"ct": ct_path.name, "seed": seed, "shape": list(reader.GetSize()),
            "spacing_mm": [round(float(v), 4) for v in reader.GetSpacing()]}


def cmd_phantom(args) -> int:
    from .results.outputs import OutputFolder

    if args.n < 1:
        raise InputError("--n must be at least 1.")
    shape = tuple(args.shape) if args.shape else None
    spacing = tuple(args.spacing) if args.spacing else None
    _check_phantom_grid(shape, spacing)
    from . import phantoms

    kwargs = {"shape": shape, "spacing": spacing, "fov": args.fov}
    t0 = time.perf_counter()

    def progress(done, total, *_, **__):
        if not args.quiet:
            err(f"{PROG}: phantom {done}/{total} written ({time.perf_counter() - t0:.1f} s)")

    with OutputFolder(args.output, overwrite=args.overwrite) as out:
        paths = phantoms.write_verse_dataset(out.staging, args.n, args.seed, progress=progress, **kwargs)
        files = sorted(out.final(p).name for p in paths)
        out.commit({"lumbarseg_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": "phantom", "phantoms": args.n, "seeds": [args.seed, args.seed + args.n - 1],
                    "shape": list(shape) if shape else "drawn per case", "spacing_mm": list(spacing) if spacing
                    else "drawn per case", "fov": args.fov or "drawn per case", "files": files,
                    "cases": [_phantom_case(p, args.seed + i) for i, p in enumerate(paths[::2])]})
    print(f"Wrote {args.n} phantom case(s) ({len(files)} files: CT + vertebra mask each) to {out.target}")
    return 0


def cmd_demo(args) -> int:
    """Phantom -> segment with the bundled model -> metrics against the phantom's truth, all offline: the
    phantom and its truth go to :func:`run_study` as images in memory (written into the result folder)."""
    from .inference.models import resolve_device
    from .study.runner import StudyOptions, check_smoothing, run_study

    resolve_device(args.device)  # before the phantom is drawn: an absent GPU fails at once
    check_smoothing(args.smoothing)
    from . import phantoms

    progress = StageProgress(args.quiet)
    done = progress.step("phantom")
    t0 = time.perf_counter()
    ct, truth_verse = phantoms.generate_phantom(args.seed, shape=DEMO_SHAPE, spacing=DEMO_SPACING, fov=DEMO_FOV)
    generated_s = time.perf_counter() - t0
    done()
    options = StudyOptions(input=ct, output=args.output, reference=truth_verse, reference_labels="verse",
                           name="demo", input_facts={"phantom_seed": args.seed}, model=args.model,
                           device=args.device, stl=True, preview=True, smoothing=args.smoothing,
                           overwrite=args.overwrite, quiet=args.quiet)
    report = run_study(options, progress=progress, timings={"phantom": generated_s})
    print_summary(report)
    target = Path(report["outputs"]["report"]).parent
    print(f"\nOpen {target / 'demo_ct.nii.gz'} with {target / 'demo_labels.nii.gz'} in 3D Slicer, or look "
          f"at {target / 'demo_preview.png'}.")
    return 0


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------

def _installed(part: str) -> bool:
    """Whether the optional part ``part`` (phantoms, training, batch, web) is installed: inside 3D Slicer only
    the runtime is (LumbarSeg/CMakeLists.txt), and the commands of the others are then not offered."""
    import importlib.util

    return importlib.util.find_spec(f"{__package__}.{part}") is not None


def _add_phantom_commands(sub, common, overwrite) -> None:
    from .phantoms import FOV_CHOICES

    p = sub.add_parser("phantom", help="write synthetic CTs with VerSe-style labels",
                       description="Write synthetic CTs with VerSe-style labels. Costly at the default, clinical size "
                       "(grid and spacing drawn per case, e.g. 512x512x343 at 0.67 mm): about 1.5 min of CPU, a "
                       "peak of 5 GiB of memory and 85 MB on disk per default-size case (see docs/commands.md). --shape and "
                       "--spacing make small, quick ones.")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, metavar=("NX", "NY", "NZ"))
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"))
    p.add_argument("--fov", default=None, choices=list(FOV_CHOICES))
    overwrite(p)
    common(p, model=False)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("demo", help="phantom -> segmentation -> metrics, no download needed")
    p.add_argument("-o", "--output", default="lumbarseg_demo", metavar="OUTDIR")
    p.add_argument("--seed", type=int, default=0)
    overwrite(p)
    common(p)
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Automatic L1-L5 lumbar vertebra segmentation in CT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p, model=True):
        if model:
            p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                           help="where the networks run; auto picks CUDA when present, else the CPU (mps only by name)")
            p.add_argument("--model", default=None, metavar="NAME|PATH",
                           help="a shipped model (cpu, paper) or a model file; default: paper on CUDA when "
                           "shipped, else cpu")
            p.add_argument("--smoothing", type=float, default=0.5, help="STL smoothing factor 0..1 (default 0.5)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")

    def overwrite(p):
        p.add_argument("--overwrite", action="store_true",
                       help="replace an earlier result in the output folder (as a whole; nothing is merged)")

    def study_outputs(p):  # segment's and batch's
        p.add_argument("--stl", action="store_true", help="also write one STL per vertebra (LPS mm) to OUTDIR/stl/")
        p.add_argument("--reference-labels", default="auto", choices=["auto", "internal", "verse", "totalseg"],
                       help="label codes of REF (auto-detected by default)")
        p.add_argument("--format", default="nii.gz", choices=["nii.gz", "seg.nrrd"], help="label map format")
        p.add_argument("--preview", action="store_true", help="also write a PNG with three orthogonal slices")
        p.add_argument("--csv", action="store_true",
                       help="also write the per-vertebra measurements (volume, HU, trabecular HU) as "
                            "OUTDIR/<name>_measurements.csv")
        p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                       help="re-segment each vertebra found on its own 1.25 mm crop with the per-vertebra model "
                            "(default: on when that model is installed; report.json's stage3 says whether it ran)")
        p.add_argument("--finder", action=argparse.BooleanOptionalAction, default=None,
                       help="find the vertebrae with the finder network along the column and name them by counting "
                            "from the ribs and the sacrum, instead of the XUNet's pieces (needs the per-vertebra "
                            "stage; default: on when the finder model is installed; report.json's finder says "
                            "whether it ran)")
        p.add_argument("--dicom-seg", action="store_true",
                       help="also write a DICOM Segmentation (OUTDIR/<name>_seg.dcm) referencing the input DICOM series")

    p = sub.add_parser("segment", help="segment L1-L5 in a CT",
                       description="Segment L1-L5 in a CT (NIfTI, NRRD, MHA or a DICOM folder) in Hounsfield units.")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--reference", metavar="REF", help="reference label map to compare against")
    study_outputs(p)
    p.add_argument("--series", metavar="UID",
                   help="for a DICOM folder with several series: the SeriesInstanceUID to segment "
                        "(default: the series with the most slices)")
    p.add_argument("--crop-box", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="segment inside this box (LPS mm, as report.json's crop_box) instead of the localizer's")
    p.add_argument("--progress-format", default="text", choices=["text", "json"],
                   help="stage lines for people (default) or one JSON object per line for a front-end")
    overwrite(p)
    common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="compare a label map with a reference",
                       description="Per-vertebra DSC, FND, FPD (4 decimals) and MSD, ASD, HD95 in mm (2 decimals).")
    p.add_argument("pred")
    p.add_argument("ref")
    p.add_argument("-o", "--output", metavar="OUT.json")
    p.add_argument("--csv", metavar="OUT.csv")
    p.add_argument("--pred-labels", default="auto", choices=["auto", "internal", "verse", "totalseg"])
    p.add_argument("--ref-labels", default="auto", choices=["auto", "internal", "verse", "totalseg"])
    p.add_argument("--strict-grid", action="store_true",
                   help="fail when the grids differ instead of resampling REF onto PRED's grid")
    p.set_defaults(func=cmd_evaluate)

    if _installed("phantoms"):  # phantom, demo
        _add_phantom_commands(sub, common, overwrite)
    if _installed("training"):
        from .training import commands as training_commands

        training_commands.register_cli(sub)  # train, evaluate-model
    if _installed("batch"):
        from .batch import command as batch

        batch.register_cli(sub, common, overwrite, study_outputs)
    if _installed("web"):
        from .web import cli as web_cli

        web_cli.register_cli(sub)  # serve
    return parser


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also during start-up (imports, parser), not only while running
        err(f"{PROG}: interrupted")
        return 130


def _main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed its message
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = handler(args)
    except LumbarSegError as exc:
        err(f"{PROG}: error: {exc}")
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch's CPU allocator reports no memory as a RuntimeError
        from .errors import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        err(f"{PROG}: error: ran out of memory. Crop the CT to the lumbar region or downsample it and retry.")
        return 2
    except OSError as exc:  # disk full, a file system that fails mid-write ...
        err(f"{PROG}: error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
