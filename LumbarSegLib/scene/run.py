"""Putting an engine result into the scene (:func:`apply_result`, on the main thread), for the module's
subprocess run (:mod:`.engine_job`) and for an in-process run with a given engine (:func:`run_segmentation`:
tests, tools/make_screenshot.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import SimpleITK as sitk

from .metrics_table import plausibility_warnings
from .roi import box_for_run, find_crop_roi, remember_box, set_crop_roi
from .scene import matrix_to_numpy, numpy_to_matrix, slicer_module
from .segments import DEFAULT_SMOOTHING, is_user_edited, labels_to_segmentation, segmentation_content_hash
from .trabecular_rois import add_roi_segments
from .volumes import volume_node_to_sitk


@dataclass
class RunInputs:
    image: sitk.Image
    box_lps: tuple | None
    messages: list[str] = field(default_factory=list)  # e.g. NaN voxels set to air


@dataclass
class ApplyOutcome:
    segmentation_node: object
    roi_node: object
    created_new: bool
    messages: list[str] = field(default_factory=list)
    metrics_table: object = None  # the metrics table node, when the run filled one


def prepare_run(volume_node, roi_node=None, roi_mode: str = "auto") -> RunInputs:
    """Main-thread part before a run: the CT as a SimpleITK image and the crop box to use (or None).

    Raises :class:`errors.InputError` with a user-facing message for a missing or non-CT volume. NaN
    voxels are set to air with a warning, exactly as on the command line (:func:`images.prepare_ct`).
    """
    from ..io import images

    image = volume_node_to_sitk(volume_node)
    name = f"The volume '{volume_node.GetName()}'"
    image, _, messages = images.prepare_ct(image, name=name)
    box = box_for_run(roi_node, volume_node, roi_mode)
    return RunInputs(image, box, messages)


class _SceneRollback:
    """Undo this module's scene changes when putting a result into the scene fails half-way: nodes added
    since entering are removed, and the ROI and a reused segmentation get back their content, so a failed
    run leaves no half-made nodes and loses nothing."""

    def __init__(self, scene):
        self.scene = scene
        self._restore = []

    def __enter__(self):
        self._before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        return self

    def keep(self, node):
        """Remember ``node``'s content (segments or ROI geometry, and its attributes) for a rollback."""
        if node is None or node.GetScene() is None:
            return
        attributes = {name: node.GetAttribute(name) for name in (node.GetAttributeNames() or ())}
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = slicer_module().vtkSegmentation()
            segmentation.DeepCopy(node.GetSegmentation())

            def restore_content():
                node.GetSegmentation().DeepCopy(segmentation)
        else:
            center, size = list(node.GetCenter()), list(node.GetSize())
            matrix = numpy_to_matrix(matrix_to_numpy(node.GetObjectToNodeMatrix()))

            def restore_content():
                node.SetAndObserveObjectToNodeMatrix(matrix)
                node.SetCenter(*center)
                node.SetSize(*size)

        def restore():
            for name in set(node.GetAttributeNames() or ()) - set(attributes):
                node.RemoveAttribute(name)
            for name, value in attributes.items():
                node.SetAttribute(name, value)
            restore_content()

        self._restore.append(restore)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        for i in reversed(range(self.scene.GetNumberOfNodes())):
            node = self.scene.GetNthNode(i)
            if node is not None and node.GetID() not in self._before:
                self.scene.RemoveNode(node)
        for restore in reversed(self._restore):
            restore()
        return False


def apply_result(scene, volume_node, result, segmentation_node=None, roi_node=None,
                 overwrite_edited: bool | str = False, smoothing: float = DEFAULT_SMOOTHING,
                 user_box_lps=None, input_messages=(), check_plausibility: bool = True) -> ApplyOutcome:
    """Put an engine :class:`SegmentationResult` into the scene (crop ROI + segmentation).

    A ``segmentation_node`` the user has edited since it was created is never overwritten unless
    ``overwrite_edited``: a new node is created and the edited one is left as it is. ``overwrite_edited``
    may be the node's content hash (:func:`segments.segmentation_content_hash`) at the moment the user
    agreed to overwrite: edits made after that (while the run was going) are then kept too. A node the user
    deleted meanwhile is not written into. When the run used the user's box (``user_box_lps``, taken from
    ``roi_node``) the ROI is left where the user put it (the engine's voxel-snapped box can be larger on an
    oblique scan; moving the ROI to it would make it grow on every run); otherwise the ROI is placed on the
    localizer's box. If anything fails half-way the scene is rolled back (:class:`_SceneRollback`).
    ``input_messages`` (from :func:`prepare_run`) and plausibility warnings join the outcome's messages;
    ``check_plausibility=False`` when the result's messages already hold them (the command line's report).
    """
    messages = list(input_messages) + list(result.messages)
    if segmentation_node is not None and segmentation_node.GetScene() is None:
        messages.append("The output segmentation was deleted while the run was going; the result was put in a "
                        "new segmentation.")
        segmentation_node = None
    if roi_node is not None and roi_node.GetScene() is None:
        roi_node = user_box_lps = None
    created_new = segmentation_node is None
    if segmentation_node is not None:
        agreed = overwrite_edited is True or (isinstance(overwrite_edited, str) and
                                              overwrite_edited == segmentation_content_hash(segmentation_node))
        if not agreed and is_user_edited(segmentation_node):
            messages.append(f"'{segmentation_node.GetName()}' was edited since it was created; it was kept and "
                            "the new result was put in a new segmentation.")
            segmentation_node = None
            created_new = True
    with _SceneRollback(scene) as rollback:
        rollback.keep(roi_node)
        rollback.keep(segmentation_node)
        if user_box_lps is not None and roi_node is not None:
            remember_box(roi_node, volume_node, user_box_lps, "user")
        elif result.box_lps is not None:
            roi_node = set_crop_roi(scene, volume_node, result.box_lps, roi_node)
        if not result.found:
            # Nothing to show: no empty node is created, and an existing result is left as it was.
            if segmentation_node is not None:
                messages.append(f"'{segmentation_node.GetName()}' was left unchanged.")
            return ApplyOutcome(None if created_new else segmentation_node, roi_node, False, messages)
        segmentation_node = labels_to_segmentation(scene, result.labels, volume_node, segmentation_node,
                                                   smoothing=smoothing)
        add_roi_segments(segmentation_node, volume_node)  # "L1 trabecular ROI" ...: where the HU is measured
        if check_plausibility:
            messages += plausibility_warnings(segmentation_node, volume_node)
    return ApplyOutcome(segmentation_node, roi_node, created_new, messages)


def run_segmentation(scene, volume_node, *, model=None, device: str = "auto", segmentation_node=None,
                     roi_node=None, roi_mode: str = "auto", overwrite_edited: bool | str = False,
                     progress=None, cancel=None, segment_fn=None, refine: bool | None = None,
                     finder: bool | None = None):
    """Synchronous whole flow (tests, scripting, the self-test): returns (result, ApplyOutcome). Without a
    ``segment_fn`` it runs the engine as a study does, the per-vertebra stage included when ``refine`` is
    None and its model is installed (:func:`..inference.vertebra_stage.choose`), and the finder likewise
    (:func:`..inference.finder.choose`)."""
    if segment_fn is None:
        import functools

        from ..inference.pipeline import segment
        from ..inference.finder import choose as choose_finder
        from ..inference.vertebra_stage import choose

        stage3 = choose(refine)
        found_by = choose_finder(finder, stage3)
        segment_fn = functools.partial(segment, refine=stage3[0] if stage3 else None,
                                       finder=found_by[0] if found_by else None)
    if roi_node is None:
        roi_node = find_crop_roi(scene, volume_node)
    inputs = prepare_run(volume_node, roi_node, roi_mode)
    result = segment_fn(inputs.image, model=model, device=device, box_lps=inputs.box_lps,
                        progress=progress, cancel=cancel)
    outcome = apply_result(scene, volume_node, result, segmentation_node, roi_node, overwrite_edited,
                           user_box_lps=inputs.box_lps, input_messages=inputs.messages)
    return result, outcome


def friendly_error(exc: BaseException, device: str = "auto") -> str:
    """A message the user can act on for an exception from the engine."""
    from ..errors import LumbarSegError, is_out_of_memory

    text = str(exc)
    if is_out_of_memory(exc):
        return ("Out of memory while segmenting" + (f" on {device}" if device not in ("auto", "") else "") +
                ". Close other applications, choose the CPU device (if the GPU ran out), or draw a smaller "
                "crop box around the lumbar spine and run again.")
    if isinstance(exc, ModuleNotFoundError):
        return (f"A Python package is missing: {exc.name}. Use 'Install dependencies' in the LumbarSeg module "
                "(or the PyTorch Utils module for torch) and try again.")
    if isinstance(exc, LumbarSegError):
        return text
    return f"Unexpected error: {type(exc).__name__}: {text}"
