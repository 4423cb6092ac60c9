"""``lumbarseg`` command line: segment, evaluate, phantom, demo, training's train and evaluate-model, and
the web app's serve.

Every user-fixable problem (:class:`errors.LumbarSegError`) ends as one ``lumbarseg: error: ...`` line on
stderr with exit code 2 - no traceback, because a traceback tells a clinician-user nothing they can act on.
Running with untrained (random) weights is allowed so the tool works end to end before a model ships,
but is announced loudly, since such labels are meaningless.

Subcommand handlers are registered with ``parser.set_defaults(func=handler)`` and return an exit code
(``None`` counts as 0); other modules adding subcommands (``training.cli.register_cli``) follow the same rule.
"""

from __future__ import annotations

# Only light standard-library imports at module level: a Ctrl-C while torch or SimpleITK load must land
# inside main()'s handler (one line, exit 130), not in an import traceback.
import argparse
import platform
import sys
import time
from pathlib import Path

from . import __version__
from .errors import InputError, LumbarSegError

PROG = "lumbarseg"
# The demo phantom: an abdominal field of view (T11-ish to sacrum, so all of L1-L5 is in it) on a
# 256x256x200 grid; the phantom fits the spacing (about 1.5 mm) to that field of view.
DEMO_SHAPE = (256, 256, 200)
DEMO_SPACING = None
DEMO_FOV = "abdomen"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _untrained_banner() -> None:
    bar = "!" * 78
    _err(f"{bar}\nWARNING: no trained model was found - LumbarSeg is running with RANDOM weights.\n"
         f"WARNING: the segmentation below is MEANINGLESS. Install the bundled model or pass --model PATH.\n{bar}")


class _StageProgress:
    """Stage lines on stderr ('localize ... 1.23 s'): readable in logs, unlike redrawn progress bars.

    ``fmt="json"`` (``--progress-format json``) writes one JSON object per event instead
    (``{"event": "progress", "stage": ..., "fraction": ...}``), for a front-end that runs this command as a
    subprocess (:mod:`LumbarSegLib.engine_process`)."""

    def __init__(self, quiet: bool = False, fmt: str = "text"):
        self.quiet, self.fmt = quiet, fmt
        self._t0: dict[str, float] = {}

    def __call__(self, stage: str, fraction: float) -> None:
        if self.fmt == "json":
            import json

            _err(json.dumps({"event": "progress", "stage": stage, "fraction": float(fraction)}))
            return
        if self.quiet:
            return
        if fraction <= 0.0:
            self._t0[stage] = time.perf_counter()
            _err(f"{PROG}: {stage} ...")
        elif fraction >= 1.0:
            dt = time.perf_counter() - self._t0.get(stage, time.perf_counter())
            _err(f"{PROG}: {stage} done ({dt:.2f} s)")

    def step(self, stage: str):
        """Announce one of our own (non-pipeline) stages; call the returned function when it ends."""
        self(stage, 0.0)
        return lambda: self(stage, 1.0)


def _geometry(image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [float(v) for v in image.GetSpacing()],
        "origin_lps_mm": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
    }


def _check_smoothing(value: float) -> float:
    from .surfaces import check_smoothing

    return check_smoothing(value)


def _load_model(spec, device: str):
    """``--model`` (a shipped model's name or a file; default by device) loaded, with the untrained warning."""
    from .models import choose_model, load_model, resolve_device

    model = load_model(choose_model(spec, resolve_device(device)))
    if not model.trained:
        _untrained_banner()
    return model


def _run_segmentation(loaded, *, input_desc: dict, out, stem: str, model, device: str, fmt: str, stl: bool,
                      preview: bool, reference=None, reference_desc: dict | None = None, smoothing: float,
                      quiet: bool, extra_timings: dict | None = None, dicom_source=None, box_lps=None,
                      progress_format: str = "text") -> dict:
    """Segment an already validated CT (:class:`io.LoadedCT`), write every requested output into the
    staging folder of ``out`` (:class:`outputs.OutputFolder`), commit it with ``report.json`` and return
    the report.

    ``dicom_source``: the source series' datasets (``dicom_seg.read_source_series``) to write a DICOM SEG.
    ``box_lps``: the user's crop box ((min xyz), (max xyz), LPS mm); the localizer is skipped then."""
    import SimpleITK as sitk

    from . import io, metrics, pipeline, surfaces
    from .constants import RESEARCH_NOTICE
    from .models import resolve_device

    image = loaded.image
    progress = _StageProgress(quiet, progress_format)
    t_start = time.perf_counter()
    result = pipeline.segment(image, model=model, device=device, box_lps=box_lps, progress=progress)
    timings = dict(extra_timings or {})
    timings.update(result.timings)

    outputs: dict = {}
    t0 = time.perf_counter()
    labels_path = io.write_labelmap(result.labels, out.staging / f"{stem}_labels.{fmt}")
    outputs["labels"] = str(out.final(labels_path))
    label_array = sitk.GetArrayViewFromImage(result.labels)
    measurements = metrics.measure(label_array, sitk.GetArrayViewFromImage(image), image)
    timings["write"] = time.perf_counter() - t0

    if stl:
        done = progress.step("stl")
        t0 = time.perf_counter()
        written = surfaces.write_stl(result.labels, out.staging / "stl", smoothing)
        outputs["stl"] = {k: str(out.final(v)) for k, v in written.items()}
        timings["stl"] = time.perf_counter() - t0
        done()

    comparison = None
    notes: list[str] = []
    if dicom_source is not None:
        from .dicom_seg import write_dicom_seg

        seg_path = write_dicom_seg(result.labels, dicom_source, out.staging / f"{stem}_seg.dcm")
        if seg_path is None:
            notes.append("No vertebra was found, so no DICOM SEG was written (a SEG needs at least one segment).")
        else:
            outputs["dicom_seg"] = str(out.final(seg_path))
    if reference is not None:
        comparison = metrics.compare_images(result.labels, reference, resample=True, notes=notes)
        note = io.reference_without_lumbar_note(reference)
        if note:
            notes.append(note)

    if preview:
        from .preview import write_preview

        t0 = time.perf_counter()
        path = write_preview(image, result.labels, out.staging / f"{stem}_preview.png", box_index=result.box_index,
                             title=f"LumbarSeg: {stem} - found {', '.join(result.found) or 'none'}")
        outputs["preview"] = str(out.final(path))
        timings["preview"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start + sum((extra_timings or {}).values())

    plausibility = metrics.plausibility_warnings(measurements)
    nonfinite = 0 if loaded.nonfinite_mask is None else int(loaded.nonfinite_mask.sum())
    near = io.nonfinite_near(loaded.nonfinite_mask, label_array, image.GetSpacing())
    if near:
        notes.append(f"WARNING: {near} of the {nonfinite} voxels that were not numbers (NaN) lie within 10 mm of "
                     f"the vertebrae found: the image is damaged there and the result is unreliable.")
    messages = list(loaded.messages) + list(result.messages) + plausibility + notes
    outputs["report"] = str(out.target / "report.json")
    report = {
        "lumbarseg_version": __version__,
        "notice": RESEARCH_NOTICE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"python": platform.python_version(), "platform": platform.platform()},
        "input": {**input_desc, "nonfinite_voxels_set_to_air": nonfinite},
        "model": {**model.describe(), "metadata": model.metadata},
        "device": str(resolve_device(device)),
        "found": list(result.found),
        "crop_box": None if result.box_index is None else {
            "index_lo_xyz": list(result.box_index[0]), "index_hi_xyz": list(result.box_index[1]),
            "index_space": "canonical LPS-reoriented image, hi exclusive",
            "lps_min_mm": list(result.box_lps[0]) if result.box_lps else None,
            "lps_max_mm": list(result.box_lps[1]) if result.box_lps else None,
        },
        "heatmap_peak": result.heatmap_peak,
        "timings_s": timings,
        "measurements": measurements,
        "plausibility": {"volume_ml_range": list(metrics.VERTEBRA_VOLUME_ML),
                         "height_mm_range": list(metrics.VERTEBRA_HEIGHT_MM),
                         "plausible": not plausibility, "warnings": plausibility},
        "reference": reference_desc,
        "metrics": comparison,
        "metrics_summary": metrics.summary(comparison) if comparison else None,
        "outputs": outputs,
        "stl_coordinate_system": surfaces.STL_COORDINATE_SYSTEM if stl else None,
        "replaced_result": ({"input": (out.replaced_report.get("input") or {}).get("path"),
                             "created": out.replaced_report.get("created")} if out.replaced_report else None),
        "messages": messages,
    }
    out.commit(report)  # report.json last, then the whole folder moves into place
    _print_summary(report, comparison)
    return report


def _print_summary(report: dict, comparison) -> None:
    from . import metrics

    for msg in report["messages"]:
        _err(f"{PROG}: {msg}" if msg.upper().startswith("WARNING") else f"{PROG}: note: {msg}")
    found = report["found"]
    print(f"Found vertebrae: {', '.join(found) if found else 'none - no lumbar spine found in this image'}")
    if report["measurements"]:
        print(metrics.format_measurements(report["measurements"]))
    if comparison is not None:
        print("\nAgreement with the reference:")
        print(metrics.format_table(comparison))
    print()
    for key, value in report["outputs"].items():
        if isinstance(value, dict):
            if value:
                print(f"{key:>8}: {Path(next(iter(value.values()))).parent}/ ({', '.join(value)})")
        else:
            print(f"{key:>8}: {value}")


# --------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------

def _dicom_description(loaded) -> dict:
    if loaded.series is None:
        return {}
    return {"dicom_series": {**loaded.series.to_dict(),
                             "other_series": [s.to_dict() for s in loaded.all_series if s is not loaded.series]}}


def cmd_segment(args) -> int:
    from . import io
    from .models import resolve_device
    from .outputs import OutputFolder

    resolve_device(args.device)  # an unavailable device fails now, not after reading a large CT
    smoothing = _check_smoothing(args.smoothing)
    box_lps = _check_crop_box(args.crop_box)
    if args.series and not Path(args.input).is_dir():
        raise InputError(f"--series chooses a series in a DICOM folder, but {args.input} is not a folder.")
    # The output folder is checked (and locked) before anything is read or computed.
    with OutputFolder(args.output, overwrite=args.overwrite, inputs=(args.input, args.reference)) as out:
        dicom_source = None
        if args.dicom_seg:  # a SEG that cannot reference its source fails now, before the segmentation runs
            from .dicom_seg import read_source_series

            dicom_source = read_source_series(args.input, series_uid=args.series)
        progress = _StageProgress(args.quiet, args.progress_format)
        done = progress.step("read")
        t0 = time.perf_counter()
        loaded = io.load_ct(args.input, series_uid=args.series)
        read_s = time.perf_counter() - t0
        done()
        if loaded.series is not None and not args.quiet:
            _err(f"{PROG}: DICOM series {loaded.series.describe()}"
                 + (f", chosen from {len(loaded.all_series)} series" if len(loaded.all_series) > 1 else ""))
        reference = reference_desc = None
        if args.reference:
            from .metrics import fields_of_view_overlap

            reference = io.read_labelmap(args.reference, scheme=args.reference_labels)
            if not fields_of_view_overlap(loaded.image, reference):  # before segmenting, not after
                raise InputError(f"The reference {args.reference} does not overlap the CT in physical space; "
                                 f"check that both belong to the same CT.")
            reference_desc = {"path": str(Path(args.reference).resolve()),
                              "label_scheme": io.label_scheme_of(reference), "geometry": _geometry(reference)}
        model = _load_model(args.model, args.device)
        input_desc = {"path": str(Path(args.input).resolve()), **_dicom_description(loaded), **_geometry(loaded.image)}
        _run_segmentation(loaded, input_desc=input_desc, out=out, stem=io.output_stem(args.input), model=model,
                          device=args.device, fmt=args.format, stl=args.stl, preview=args.preview,
                          reference=reference, reference_desc=reference_desc, smoothing=smoothing,
                          quiet=args.quiet, extra_timings={"read": read_s}, dicom_source=dicom_source,
                          box_lps=box_lps, progress_format=args.progress_format)
    return 0


def _check_crop_box(values):
    """``--crop-box`` as ((min x y z), (max x y z)) in LPS mm, or None; each minimum below its maximum."""
    if values is None:
        return None
    lo, hi = tuple(float(v) for v in values[:3]), tuple(float(v) for v in values[3:])
    if not all(a < b for a, b in zip(lo, hi)):
        raise InputError(f"--crop-box {' '.join(f'{v:g}' for v in values)}: each minimum (XMIN YMIN ZMIN) must be "
                         f"below its maximum (XMAX YMAX ZMAX), in LPS millimetres.")
    return lo, hi


def cmd_evaluate(args) -> int:
    from . import io, metrics
    from .outputs import check_output_file

    for path, what in ((args.output, "JSON output"), (args.csv, "CSV output")):
        if path:
            check_output_file(path, what)
    pred = io.read_labelmap(args.pred, scheme=args.pred_labels)
    ref = io.read_labelmap(args.ref, scheme=args.ref_labels)
    notes: list[str] = []
    result = metrics.compare_images(pred, ref, resample=not args.strict_grid, notes=notes)
    note = io.reference_without_lumbar_note(ref)
    if note:
        notes.append(note)
    for note in notes:
        _err(f"{PROG}: note: {note}")
    print(metrics.format_table(result))
    if args.output:
        metrics.write_json({
            "prediction": {"path": str(Path(args.pred).resolve()), "label_scheme": io.label_scheme_of(pred)},
            "reference": {"path": str(Path(args.ref).resolve()), "label_scheme": io.label_scheme_of(ref)},
            "metrics": result, "summary": metrics.summary(result), "notes": notes,
        }, args.output)
        print(f"JSON: {args.output}")
    if args.csv:
        metrics.write_metrics_csv(result, args.csv)
        print(f"CSV: {args.csv}")
    return 0


PHANTOM_MIN_VOXELS = 16


def _check_phantom_grid(shape, spacing) -> None:
    """Refuse a phantom grid before generating anything: the generator needs room for a spine, and the
    result must be a CT that LumbarSeg itself accepts."""
    from .io import MAX_SPACING_MM, MIN_SPACING_MM, check_memory

    if shape is not None:
        if any(v < PHANTOM_MIN_VOXELS for v in shape):
            raise InputError(f"--shape {' '.join(map(str, shape))}: each of NX NY NZ must be at least "
                             f"{PHANTOM_MIN_VOXELS} voxels (e.g. --shape 256 256 200).")
        check_memory(shape, what=f"A {'x'.join(map(str, shape))} phantom")
    if spacing is not None and not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in spacing):
        raise InputError(f"--spacing {' '.join(f'{v:g}' for v in spacing)}: each of SX SY SZ must be between "
                         f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm (e.g. --spacing 0.8 0.8 1.0).")


def cmd_phantom(args) -> int:
    from .outputs import OutputFolder

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
            _err(f"{PROG}: phantom {done}/{total} written ({time.perf_counter() - t0:.1f} s)")

    with OutputFolder(args.output, overwrite=args.overwrite) as out:
        paths = phantoms.write_verse_dataset(out.staging, args.n, args.seed, progress=progress, **kwargs)
        files = sorted(out.final(p).name for p in paths)
        out.commit({"lumbarseg_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": "phantom", "phantoms": args.n, "seeds": [args.seed, args.seed + args.n - 1],
                    "shape": list(shape) if shape else None, "spacing_mm": list(spacing) if spacing else None,
                    "fov": args.fov, "files": files})
    print(f"Wrote {args.n} phantom case(s) ({len(files)} files: CT + vertebra mask each) to {out.target}")
    return 0


def cmd_demo(args) -> int:
    """Phantom -> segment with the bundled model -> metrics against the phantom's truth, all offline."""
    import SimpleITK as sitk

    from . import io
    from .models import resolve_device
    from .outputs import OutputFolder

    resolve_device(args.device)
    smoothing = _check_smoothing(args.smoothing)
    from . import phantoms

    with OutputFolder(args.output, overwrite=args.overwrite) as out:
        progress = _StageProgress(args.quiet)
        done = progress.step("phantom")
        t0 = time.perf_counter()
        ct, truth_verse = phantoms.generate_phantom(args.seed, shape=DEMO_SHAPE, spacing=DEMO_SPACING, fov=DEMO_FOV)
        gen_s = time.perf_counter() - t0
        done()
        ct_path = out.staging / "demo_ct.nii.gz"
        sitk.WriteImage(ct, str(ct_path), useCompression=True)
        truth = sitk.GetImageFromArray(io.to_internal_labels(sitk.GetArrayViewFromImage(truth_verse), "verse"))
        truth.CopyInformation(truth_verse)
        truth_path = io.write_labelmap(truth, out.staging / "demo_truth.nii.gz")
        image, mask, messages = io.prepare_ct(ct, name="The demo phantom")
        model = _load_model(args.model, args.device)
        _run_segmentation(io.LoadedCT(image, mask, messages),
                          input_desc={"path": str(out.final(ct_path)), "phantom_seed": args.seed, **_geometry(ct)},
                          out=out, stem="demo", model=model, device=args.device, fmt="nii.gz", stl=True,
                          preview=True, reference=truth,
                          reference_desc={"path": str(out.final(truth_path)), "label_scheme": "phantom truth"},
                          smoothing=smoothing, quiet=args.quiet, extra_timings={"phantom": gen_s})
    print(f"\nOpen {out.target / 'demo_ct.nii.gz'} with {out.target / 'demo_labels.nii.gz'} in 3D Slicer, or look "
          f"at {out.target / 'demo_preview.png'}.")
    return 0


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------

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

    p = sub.add_parser("segment", help="segment L1-L5 in a CT",
                       description="Segment L1-L5 in a CT (NIfTI, NRRD, MHA or a DICOM folder) in Hounsfield units.")
    p.add_argument("input", help="CT file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--stl", action="store_true", help="also write one STL per vertebra (LPS mm) to OUTDIR/stl/")
    p.add_argument("--reference", metavar="REF", help="reference label map to compare against")
    p.add_argument("--reference-labels", default="auto", choices=["auto", "internal", "verse", "totalseg"],
                   help="label codes of REF (auto-detected by default)")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "seg.nrrd"], help="label map format")
    p.add_argument("--preview", action="store_true", help="also write a PNG with three orthogonal slices")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM Segmentation (OUTDIR/<name>_seg.dcm) referencing the input DICOM series")
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

    from .phantoms import FOV_CHOICES

    p = sub.add_parser("phantom", help="write synthetic CTs with VerSe-style labels")
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

    from .training import cli as training_cli

    training_cli.register_cli(sub)  # train, evaluate-model
    from .web import cli as web_cli

    web_cli.register_cli(sub)  # serve
    return parser


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also during start-up (imports, parser), not only while running
        _err(f"{PROG}: interrupted")
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
        _err(f"{PROG}: error: {exc}")
        return 2
    except MemoryError:
        _err(f"{PROG}: error: ran out of memory. Crop the CT to the lumbar region or downsample it and retry.")
        return 1
    except OSError as exc:  # disk full, a file system that fails mid-write ...
        _err(f"{PROG}: error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
