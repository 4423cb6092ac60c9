"""The one way to run a study: :class:`StudyOptions` in, a whole-or-absent result folder out (:func:`run_study`).

``lumbarseg segment`` (and through it the Slicer module's and the web app's engine subprocess) and the
workers of ``lumbarseg batch`` all call :func:`run_study`, so reading, validation, segmentation, the
measurements and the writing of a result folder exist once. A batch worker passes a model it loaded once
(``model=``), so the networks are not read again for every study.

Only light standard-library imports at module level (see :mod:`cli`): torch and SimpleITK load inside.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..results.naming_basis import naming_section
from .console import PROG, StageProgress, err, step, untrained_banner

# Options that say how a result was made (report.json's provenance); the paths stay in "input"/"reference".
PROVENANCE_OPTIONS = ("model", "device", "format", "smoothing", "stl", "preview", "csv", "dicom_seg", "series",
                      "crop_box", "reference_labels", "refine", "finder")


def _geometry(image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [float(v) for v in image.GetSpacing()],
        "origin_lps_mm": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
    }


def check_smoothing(value: float) -> float:
    """The STL smoothing factor, refused outside 0..1 (:func:`results.surfaces.check_smoothing`)."""
    from ..results.surfaces import check_smoothing as check

    return check(value)


def load_model(spec, device: str, warn: bool = True):
    """``--model`` (a shipped model's name or a file; default by device) loaded, with the untrained warning
    (``warn``; a batch worker leaves it to the batch, which prints it once)."""
    from ..inference import models

    model = models.load_model(models.choose_model(spec, models.resolve_device(device)))
    if warn and not model.trained:
        untrained_banner()
    return model


def _segment_and_write(loaded, options: StudyOptions, *, input_desc: dict, out, stem: str, model, reference=None,
                       reference_desc: dict | None = None, smoothing: float, timings: dict, dicom_source=None,
                       progress, box_lps=None, stage3=None, finder=None) -> dict:
    """Segment an already validated CT (:class:`images.LoadedCT`), write every output ``options`` ask for
    into the staging folder of ``out`` (:class:`outputs.OutputFolder`), commit it with ``report.json`` and
    return the report (the command line prints it: :func:`console.print_summary`).

    ``timings``: stages already timed (read, ...); ``dicom_source``: the source series' datasets
    (``dicom_seg.read_source_series``) to write a DICOM SEG."""
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
    t_start = time.perf_counter()
    result = pipeline.segment(image, model=model, device=options.device, box_lps=box_lps, progress=progress,
                              refine=stage3[0] if stage3 else None, finder=finder[0] if finder else None)
    device_used = str(resolve_device(options.device))
    extra_s = sum(timings.values())
    timings = {**timings, **result.timings}

    outputs: dict = {}
    t0 = time.perf_counter()
    labels_path = label_maps.write_labelmap(result.labels, out.staging / f"{stem}_labels.{options.format}")
    outputs["labels"] = str(out.final(labels_path))
    label_array = sitk.GetArrayViewFromImage(result.labels)
    measurements = measuring.measure(label_array, sitk.GetArrayViewFromImage(image), image)
    bone_density = trabecular.add_to_measurements(measurements, label_array, sitk.GetArrayViewFromImage(image), image,
                                                  series=loaded.series, outside_mask=loaded.nonfinite_mask)
    if options.csv:
        outputs["csv"] = str(out.final(measuring.write_measurements_csv(
            measurements, out.staging / f"{stem}_measurements.csv")))
    timings["write"] = time.perf_counter() - t0

    if options.stl:
        done = step(progress, "stl")
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

    if options.preview:
        from ..results.preview import write_preview

        t0 = time.perf_counter()
        path = write_preview(image, result.labels, out.staging / f"{stem}_preview.png", box_index=result.box_index,
                             title=f"LumbarSeg: {stem} - found {', '.join(result.found) or 'none'}")
        outputs["preview"] = str(out.final(path))
        timings["preview"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start + extra_s

    plausibility = measuring.plausibility_warnings(measurements)
    nonfinite = 0 if loaded.nonfinite_mask is None else int(loaded.nonfinite_mask.sum())
    near = images.nonfinite_near(loaded.nonfinite_mask, label_array, image.GetSpacing())
    if near:
        notes.append(f"WARNING: {near} of the {nonfinite} voxels that were not numbers (NaN) lie within 10 mm of "
                     f"the vertebrae found: the image is damaged there and the result is unreliable.")
    messages = list(loaded.messages) + list(result.messages) + plausibility + notes
    outputs["report"] = str(out.target / "report.json")
    model_desc = {**model.describe(), "metadata": names_not_paths(model.metadata)}  # not the trainer's paths
    report = {
        "lumbarseg_version": __version__,
        "notice": RESEARCH_NOTICE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"python": platform.python_version(), "platform": platform.platform()},
        "input": {**input_desc, "nonfinite_voxels_set_to_air": nonfinite},
        "model": model_desc,
        "stage3": _stage3_desc(stage3, result.refined),
        "finder": _stage3_desc(finder, result.counted),
        "device": device_used,
        "found": list(result.found),
        # how each name was decided: "sacrum", "ribs", "both" (counted from them) or "unanchored", and what
        # the count warned of (results.naming_basis reads it for every front end)
        "naming": naming_section(result.naming, result.naming_warnings),
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
        "stl_coordinate_system": surfaces.STL_COORDINATE_SYSTEM if options.stl else None,
        "replaced_result": ({"input": (out.replaced_report.get("input") or {}).get("path"),
                             "created": out.replaced_report.get("created")} if out.replaced_report else None),
        "messages": messages,
        "provenance": provenance(options, model_desc, device_used, messages, _stage3_desc(stage3, result.refined),
                                 _stage3_desc(finder, result.counted)),
    }
    out.commit(report)  # report.json last, then the whole folder moves into place
    if seg_failure is not None:
        raise InputError(f"{seg_failure} The rest of the result is in {out.target}.")
    return report


def _dicom_description(loaded) -> dict:
    if loaded.series is None:
        return {}
    return {"dicom_series": {**loaded.series.to_dict(),
                             "other_series": [s.to_dict() for s in loaded.all_series if s is not loaded.series]}}


def _stage3_desc(chosen, ran: bool) -> dict:
    """Whether a small network's stage ran, and which model file (report.json's "stage3" and "finder")."""
    if not chosen:
        return {"ran": False, "model": None, "sha256": None}
    return {"ran": bool(ran), "model": chosen[1]["name"], "sha256": chosen[1]["sha256"]}


def provenance(options: StudyOptions, model_desc: dict, device_used: str, messages: list[str],
               stage3: dict | None = None, finder: dict | None = None) -> dict:
    """How a result was made, as report.json keeps it and every front end shows it: the LumbarSeg version,
    the model (name, file SHA-256, configuration, trained or not), the device, the options that shape the
    result and the warnings and notes of the run. The Slicer module copies it onto the segmentation node's
    attributes (:mod:`LumbarSegLib.scene.provenance`), the web app shows it under the result."""
    from ..constants import RESEARCH_NOTICE

    return {"lumbarseg_version": __version__, "notice": RESEARCH_NOTICE,
            "model": {"name": model_desc.get("name"), "sha256": model_desc.get("sha256"),
                      "configuration": (model_desc.get("config") or {}).get("name"),
                      "trained": model_desc.get("trained", True)},
            "stage3": stage3 or {"ran": False, "model": None, "sha256": None},
            "finder": finder or {"ran": False, "model": None, "sha256": None},
            "device": device_used,
            "options": {name: _plain(getattr(options, name)) for name in PROVENANCE_OPTIONS},
            "warnings": list(messages)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass
class StudyOptions:
    """What to segment and what to write: the options of ``lumbarseg segment`` (same names and defaults).

    ``input`` (and ``reference``) may be a file, a DICOM folder or an image in memory (a ``SimpleITK.Image``:
    the demo's phantom, a front end's volume); an image in memory is written into the result folder as
    ``<name>_ct.nii.gz`` (``<name>_reference.nii.gz``) so the folder holds what was segmented."""

    input: object  # a CT file, a DICOM folder or a SimpleITK.Image
    output: str  # the result folder (whole or absent)
    reference: object = None  # a reference label map (file or SimpleITK.Image) to compare against
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
    refine: bool | None = None  # stage 3 (one network per vertebra): on, off, or None = on when it is bundled
    finder: bool | None = None  # find and name by counting the finder's peaks: on, off, or None = when bundled
    name: str | None = None  # the output files' stem; default: the input file's name ("image" for one in memory)
    input_facts: dict = field(default_factory=dict)  # more about the input for report.json (the demo's seed)

    @classmethod
    def from_args(cls, args) -> StudyOptions:
        """The options of a parsed ``segment`` command line."""
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)})


def _check_crop_box(values):
    """``--crop-box`` as ((min x y z), (max x y z)) in LPS mm, or None; each minimum below its maximum."""
    if values is None:
        return None
    lo, hi = tuple(float(v) for v in values[:3]), tuple(float(v) for v in values[3:])
    if not all(a < b for a, b in zip(lo, hi)):
        raise InputError(f"--crop-box {' '.join(f'{v:g}' for v in values)}: each minimum (XMIN YMIN ZMIN) must be "
                         f"below its maximum (XMAX YMAX ZMAX), in LPS millimetres.")
    return lo, hi


def _in_memory(value) -> bool:
    return value is not None and not isinstance(value, (str, Path))


def _read_input(options: StudyOptions, out, stem: str):
    """The CT to segment (:class:`images.LoadedCT`) and its description for report.json."""
    from ..io import images

    if _in_memory(options.input):
        image, mask, messages = images.prepare_ct(options.input, name=f"The image '{stem}'")
        path = out.staging / f"{stem}_ct.nii.gz"
        import SimpleITK as sitk

        sitk.WriteImage(options.input, str(path), useCompression=True)
        return images.LoadedCT(image, mask, messages), {"path": str(out.final(path)), "in_memory": True}
    from ..io.input_identity import IDENTITY_KEY, input_identity

    # What identifies the input (a batch rerun compares it), taken before it is read.
    identity = input_identity(options.input, options.series) if Path(options.input).exists() else None
    loaded = images.load_ct(options.input, series_uid=options.series)
    if loaded.series is not None and not options.quiet:
        err(f"{PROG}: DICOM series {loaded.series.describe()}"
            + (f", chosen from {len(loaded.all_series)} series" if len(loaded.all_series) > 1 else ""))
    return loaded, {"path": str(options.input), **_dicom_description(loaded), IDENTITY_KEY: identity}


def _read_reference(options: StudyOptions, out, stem: str, image):
    """The reference label map (LumbarSeg's labels) and its description, or (None, None)."""
    from ..io import label_maps
    from ..measures.agreement import fields_of_view_overlap

    if options.reference is None:
        return None, None
    if _in_memory(options.reference):
        reference = label_maps.labelmap_from_image(options.reference, options.reference_labels,
                                                   what=f"The reference of '{stem}'")
        shown = str(out.final(label_maps.write_labelmap(reference, out.staging / f"{stem}_reference.nii.gz")))
    else:
        reference = label_maps.read_labelmap(options.reference, scheme=options.reference_labels)
        shown = str(options.reference)  # as given: the user's own path, no more
    if not fields_of_view_overlap(image, reference):  # before segmenting, not after
        raise InputError(f"The reference {shown} does not overlap the CT in physical space; "
                         f"check that both belong to the same CT.")
    return reference, {"path": shown, "label_scheme": label_maps.label_scheme_of(reference),
                       "geometry": _geometry(reference)}


def run_study(options: StudyOptions, *, model=None, progress=None, timings: dict | None = None) -> dict:
    """Segment one study into ``options.output`` (whole or absent) and return its report (``report.json``).

    The one way to run a study: ``lumbarseg segment`` and ``demo``, the batch workers and the engine
    subprocess of the Slicer module and the web app all call it. ``model``: an already loaded
    :class:`models.LumbarSegModel` (a batch worker loads it once); None loads ``options.model`` for
    ``options.device``. ``progress(stage, fraction)``: called as stages start (0.0) and end (1.0); by
    default stage lines on stderr unless ``options.quiet``. ``timings``: stages the caller already timed
    (the demo's phantom), added to report.json's. Bad input raises :class:`errors.InputError` before the
    output folder is touched where it can be checked first.
    """
    from ..io import images
    from ..inference.models import resolve_device
    from ..results.outputs import OutputFolder

    resolve_device(options.device)  # an unavailable device fails now, not after reading a large CT
    smoothing = check_smoothing(options.smoothing)
    box_lps = _check_crop_box(options.crop_box)
    memory = _in_memory(options.input)
    if options.series and (memory or not Path(options.input).is_dir()):
        raise InputError(f"--series chooses a series in a DICOM folder, but {options.input} is not a folder.")
    if options.dicom_seg and memory:
        raise InputError("A DICOM SEG references the DICOM series it was made from; an image in memory has none.")
    stem = options.name or ("image" if memory else images.output_stem(options.input))
    files = tuple(v for v in (options.input, options.reference) if v is not None and not _in_memory(v))
    # The output folder is checked (and locked) before anything is read or computed.
    with OutputFolder(options.output, overwrite=options.overwrite, inputs=files) as out:
        dicom_source = None
        if options.dicom_seg:  # a SEG that cannot reference its source fails now, before the segmentation runs
            from ..io.dicom_seg import read_source_series

            dicom_source = read_source_series(options.input, series_uid=options.series)
        progress = progress or StageProgress(options.quiet, options.progress_format)
        done = step(progress, "read")
        t0 = time.perf_counter()
        loaded, input_desc = _read_input(options, out, stem)
        timings = {**(timings or {}), "read": time.perf_counter() - t0}
        done()
        reference, reference_desc = _read_reference(options, out, stem, loaded.image)
        model = model or load_model(options.model, options.device)
        from ..inference.finder import choose as choose_finder
        from ..inference.vertebra_stage import choose as choose_stage3
        from ..results.training_cases import training_case_of, training_data_note

        stage3 = choose_stage3(options.refine)
        finder = choose_finder(options.finder, stage3)
        seen = None if memory else (training_case_of(model.metadata, options.input)  # not a held-out score
                                    or (stage3 and training_case_of(stage3[1]["metadata"], options.input))
                                    or (finder and training_case_of(finder[1]["metadata"], options.input)))
        if seen:
            loaded.messages.append(training_data_note(seen))
        input_desc = {**input_desc, **options.input_facts, **_geometry(loaded.image), "in_model_training_data": seen}
        return _segment_and_write(loaded, options, input_desc=input_desc, out=out, stem=stem, model=model,
                                  reference=reference, reference_desc=reference_desc, smoothing=smoothing,
                                  timings=timings, dicom_source=dicom_source, progress=progress, box_lps=box_lps,
                                  stage3=stage3, finder=finder)
