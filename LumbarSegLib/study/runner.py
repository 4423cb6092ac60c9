"""The one way to run a study: :class:`StudyOptions` in, a whole-or-absent result folder out (:func:`run_study`).

``lumbarseg segment`` (and through it the Slicer module's and the web app's engine subprocess) and the
workers of ``lumbarseg batch`` all call :func:`run_study`, so reading, validation, segmentation, the
measurements and the writing of a result folder exist once. A batch worker passes a model it loaded once
(``model=``), so the networks are not read again for every study.

Only light standard-library imports at module level (see :mod:`cli`): torch and SimpleITK load inside.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import InputError

PROG = "lumbarseg"


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
    subprocess (:mod:`LumbarSegLib.study.engine_process`)."""

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
        return _step(self, stage)


def _step(progress, stage: str):
    """Announce one of our own (non-pipeline) stages to any ``progress(stage, fraction)``; call the returned
    function when it ends."""
    progress(stage, 0.0)
    return lambda: progress(stage, 1.0)


def _geometry(image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [float(v) for v in image.GetSpacing()],
        "origin_lps_mm": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
    }


def _check_smoothing(value: float) -> float:
    from ..results.surfaces import check_smoothing

    return check_smoothing(value)


def _load_model(spec, device: str, warn: bool = True):
    """``--model`` (a shipped model's name or a file; default by device) loaded, with the untrained warning
    (``warn``; a batch worker leaves it to the batch, which prints it once)."""
    from ..inference.models import choose_model, load_model, resolve_device

    model = load_model(choose_model(spec, resolve_device(device)))
    if warn and not model.trained:
        _untrained_banner()
    return model


def _run_segmentation(loaded, *, input_desc: dict, out, stem: str, model, device: str, fmt: str, stl: bool,
                      preview: bool, reference=None, reference_desc: dict | None = None, smoothing: float,
                      quiet: bool, extra_timings: dict | None = None, dicom_source=None, progress=None,
                      csv: bool = False, box_lps=None) -> dict:
    """Segment an already validated CT (:class:`images.LoadedCT`), write every requested output into the
    staging folder of ``out`` (:class:`outputs.OutputFolder`), commit it with ``report.json`` and return
    the report (the caller prints it: :func:`_print_summary`).

    ``dicom_source``: the source series' datasets (``dicom_seg.read_source_series``) to write a DICOM SEG."""
    import SimpleITK as sitk

    from ..constants import RESEARCH_NOTICE
    from ..inference import pipeline
    from ..inference.models import resolve_device
    from ..io import images, label_maps
    from ..measures import agreement, trabecular
    from ..measures import measurements as measuring
    from ..results import surfaces
    from ..results.crop_box import crop_box_report
    from ..results.machine_paths import names_not_paths

    image = loaded.image
    progress = progress or _StageProgress(quiet)
    t_start = time.perf_counter()
    result = pipeline.segment(image, model=model, device=device, box_lps=box_lps, progress=progress)
    timings = dict(extra_timings or {})
    timings.update(result.timings)

    outputs: dict = {}
    t0 = time.perf_counter()
    labels_path = label_maps.write_labelmap(result.labels, out.staging / f"{stem}_labels.{fmt}")
    outputs["labels"] = str(out.final(labels_path))
    label_array = sitk.GetArrayViewFromImage(result.labels)
    measurements = measuring.measure(label_array, sitk.GetArrayViewFromImage(image), image)
    bone_density = trabecular.add_to_measurements(measurements, label_array, sitk.GetArrayViewFromImage(image), image,
                                                  series=loaded.series, outside_mask=loaded.nonfinite_mask)
    if csv:
        outputs["csv"] = str(out.final(measuring.write_measurements_csv(
            measurements, out.staging / f"{stem}_measurements.csv")))
    timings["write"] = time.perf_counter() - t0

    if stl:
        done = _step(progress, "stl")
        t0 = time.perf_counter()
        written = surfaces.write_stl(result.labels, out.staging / "stl", smoothing)
        outputs["stl"] = {k: str(out.final(v)) for k, v in written.items()}
        timings["stl"] = time.perf_counter() - t0
        done()

    comparison = None
    notes: list[str] = []
    seg_failure = None
    if dicom_source is not None:
        from ..io.dicom_seg import DicomSegError, write_dicom_seg

        try:  # a header highdicom refuses must not cost the segmentation: it is written, then reported
            seg_path = write_dicom_seg(result.labels, dicom_source, out.staging / f"{stem}_seg.dcm",
                                       roi_segments=bone_density.segments)
        except DicomSegError as exc:
            seg_failure = exc
            seg_path = False
            notes.append(f"WARNING: {exc}")
        if seg_path is None:
            notes.append("No vertebra was found, so no DICOM SEG was written (a SEG needs at least one segment).")
        elif seg_path:
            outputs["dicom_seg"] = str(out.final(seg_path))
    if reference is not None:
        comparison = agreement.compare_images(result.labels, reference, resample=True, notes=notes)
        note = label_maps.reference_without_lumbar_note(reference)
        if note:
            notes.append(note)

    if preview:
        from ..results.preview import write_preview

        t0 = time.perf_counter()
        path = write_preview(image, result.labels, out.staging / f"{stem}_preview.png", box_index=result.box_index,
                             title=f"LumbarSeg: {stem} - found {', '.join(result.found) or 'none'}")
        outputs["preview"] = str(out.final(path))
        timings["preview"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start + sum((extra_timings or {}).values())

    plausibility = measuring.plausibility_warnings(measurements)
    nonfinite = 0 if loaded.nonfinite_mask is None else int(loaded.nonfinite_mask.sum())
    near = images.nonfinite_near(loaded.nonfinite_mask, label_array, image.GetSpacing())
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
        "model": {**model.describe(), "metadata": names_not_paths(model.metadata)},  # not the trainer's paths
        "device": str(resolve_device(device)),
        "found": list(result.found),
        "crop_box": crop_box_report(image, result.box_index, result.box_lps),  # on the file's own axes
        "heatmap_peak": result.heatmap_peak,
        "timings_s": timings,
        "measurements": measurements,
        "bone_density": bone_density.report,
        "plausibility": {"volume_ml_range": list(measuring.VERTEBRA_VOLUME_ML),
                         "height_mm_range": list(measuring.VERTEBRA_HEIGHT_MM),
                         "plausible": not plausibility, "warnings": plausibility},
        "reference": reference_desc,
        "metrics": comparison,
        "metrics_summary": agreement.summary(comparison) if comparison else None,
        "outputs": outputs,
        "stl_coordinate_system": surfaces.STL_COORDINATE_SYSTEM if stl else None,
        "replaced_result": ({"input": (out.replaced_report.get("input") or {}).get("path"),
                             "created": out.replaced_report.get("created")} if out.replaced_report else None),
        "messages": messages,
    }
    out.commit(report)  # report.json last, then the whole folder moves into place
    if seg_failure is not None:
        raise InputError(f"{seg_failure} The rest of the result is in {out.target}.")
    return report


def _print_summary(report: dict, comparison) -> None:
    from ..measures import agreement, measurements

    for msg in report["messages"]:
        _err(f"{PROG}: {msg}" if msg.upper().startswith("WARNING") else f"{PROG}: note: {msg}")
    found = report["found"]
    print(f"Found vertebrae: {', '.join(found) if found else 'none - no lumbar spine found in this image'}")
    if report["measurements"]:
        from ..measures.bone_screening import format_table

        print(measurements.format_measurements(report["measurements"]))
        print("\n" + format_table(report["measurements"], report.get("bone_density")))
    if comparison is not None:
        print("\nAgreement with the reference:")
        print(agreement.format_table(comparison))
    print()
    for key, value in report["outputs"].items():
        if isinstance(value, dict):
            if value:
                print(f"{key:>8}: {Path(next(iter(value.values()))).parent}/ ({', '.join(value)})")
        else:
            print(f"{key:>8}: {value}")


def _dicom_description(loaded) -> dict:
    if loaded.series is None:
        return {}
    return {"dicom_series": {**loaded.series.to_dict(),
                             "other_series": [s.to_dict() for s in loaded.all_series if s is not loaded.series]}}



@dataclass
class StudyOptions:
    """What to segment and what to write: the options of ``lumbarseg segment`` (same names and defaults)."""

    input: str  # a CT file or a DICOM folder
    output: str  # the result folder (whole or absent)
    reference: str | None = None  # a reference label map to compare against
    reference_labels: str = "auto"  # its label codes: auto, internal, verse, totalseg
    model: str | None = None  # a shipped model's name or a model file; None: the default for the device
    device: str = "auto"
    stl: bool = False
    dicom_seg: bool = False
    preview: bool = False
    format: str = "nii.gz"  # label map format: nii.gz or seg.nrrd
    smoothing: float = 0.5  # STL smoothing 0..1
    series: str | None = None  # the SeriesInstanceUID to segment in a DICOM folder holding several
    overwrite: bool = False  # replace an earlier result in ``output`` as a whole
    quiet: bool = False  # no stage lines on stderr
    csv: bool = False  # also write the per-vertebra measurements as <name>_measurements.csv
    crop_box: tuple | None = None  # XMIN YMIN ZMIN XMAX YMAX ZMAX (LPS mm): segment there, not the localizer's box
    progress_format: str = "text"  # "json": one JSON object per progress event (engine_process reads them)

    @classmethod
    def from_args(cls, args) -> StudyOptions:
        """The options of a parsed ``segment`` command line."""
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})


def _check_crop_box(values):
    """``--crop-box`` as ((min x y z), (max x y z)) in LPS mm, or None; each minimum below its maximum."""
    if values is None:
        return None
    lo, hi = tuple(float(v) for v in values[:3]), tuple(float(v) for v in values[3:])
    if not all(a < b for a, b in zip(lo, hi)):
        raise InputError(f"--crop-box {' '.join(f'{v:g}' for v in values)}: each minimum (XMIN YMIN ZMIN) must be "
                         f"below its maximum (XMAX YMAX ZMAX), in LPS millimetres.")
    return lo, hi


def run_study(options: StudyOptions, *, model=None, progress=None) -> dict:
    """Segment one study into ``options.output`` (whole or absent) and return its report (``report.json``).

    ``model``: an already loaded :class:`models.LumbarSegModel` (a batch worker loads it once); None loads
    ``options.model`` for ``options.device``. ``progress(stage, fraction)``: called as stages start (0.0)
    and end (1.0); by default stage lines on stderr unless ``options.quiet``. Bad input raises
    :class:`errors.InputError` before the output folder is touched where it can be checked first.
    """
    from ..io import images, label_maps
    from ..inference.models import resolve_device
    from ..results.outputs import OutputFolder

    args = options  # the body is segment's, moved here as it was (its `args` were these options)
    resolve_device(args.device)  # an unavailable device fails now, not after reading a large CT
    smoothing = _check_smoothing(args.smoothing)
    box_lps = _check_crop_box(args.crop_box)
    if args.series and not Path(args.input).is_dir():
        raise InputError(f"--series chooses a series in a DICOM folder, but {args.input} is not a folder.")
    # The output folder is checked (and locked) before anything is read or computed.
    with OutputFolder(args.output, overwrite=args.overwrite, inputs=(args.input, args.reference)) as out:
        dicom_source = None
        if args.dicom_seg:  # a SEG that cannot reference its source fails now, before the segmentation runs
            from ..io.dicom_seg import read_source_series

            dicom_source = read_source_series(args.input, series_uid=args.series)
        progress = progress or _StageProgress(args.quiet, args.progress_format)
        done = _step(progress, "read")
        t0 = time.perf_counter()
        from ..io.input_identity import IDENTITY_KEY, input_identity

        identity = input_identity(args.input, args.series) if Path(args.input).exists() else None  # before reading
        loaded = images.load_ct(args.input, series_uid=args.series)
        read_s = time.perf_counter() - t0
        done()
        if loaded.series is not None and not args.quiet:
            _err(f"{PROG}: DICOM series {loaded.series.describe()}"
                 + (f", chosen from {len(loaded.all_series)} series" if len(loaded.all_series) > 1 else ""))
        reference = reference_desc = None
        if args.reference:
            from ..measures.agreement import fields_of_view_overlap

            reference = label_maps.read_labelmap(args.reference, scheme=args.reference_labels)
            if not fields_of_view_overlap(loaded.image, reference):  # before segmenting, not after
                raise InputError(f"The reference {args.reference} does not overlap the CT in physical space; "
                                 f"check that both belong to the same CT.")
            reference_desc = {"path": str(args.reference),  # as given: the user's own path, no more
                              "label_scheme": label_maps.label_scheme_of(reference), "geometry": _geometry(reference)}
        model = model or _load_model(args.model, args.device)
        from ..results.training_cases import training_case_of, training_data_note

        seen = training_case_of(model.metadata, args.input)  # a score on it would not be a held-out one
        if seen:
            loaded.messages.append(training_data_note(seen))
        input_desc = {"path": str(args.input), **_dicom_description(loaded), **_geometry(loaded.image),
                      "in_model_training_data": seen, IDENTITY_KEY: identity}
        return _run_segmentation(loaded, input_desc=input_desc, out=out, stem=images.output_stem(args.input),
                                 model=model, device=args.device, fmt=args.format, stl=args.stl, preview=args.preview,
                                 reference=reference, reference_desc=reference_desc, smoothing=smoothing,
                                 quiet=args.quiet, extra_timings={"read": read_s}, dicom_source=dicom_source,
                                 progress=progress, csv=args.csv, box_lps=box_lps)
