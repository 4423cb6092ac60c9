"""The Slicer module's Logic API (``LumbarSegLogic`` in ``LumbarSeg/LumbarSeg.py`` is this class plus Slicer's
parameter node), without Qt and without the Slicer application: tests and scripts use it headless.

It is a thin camelCase layer (Slicer's style) over the study session :class:`.session.StudySession`, which
the web app shares; it holds the run, the result, the log and the last error. Importing this module imports
nothing else: the Slicer module imports it when Slicer starts, so the engine is loaded on first use only.
"""

from __future__ import annotations


class ModuleLogic:
    def __init__(self):
        self.pythonExecutable = None  # None: PythonSlicer inside Slicer, else this interpreter
        self.logCallback = None  # called with each log line (the module's log panel)
        self._session = None

    def session(self, scene=None):
        """The study session on ``scene`` (made on first use)."""
        if self._session is None:
            from .session import StudySession

            self._session = StudySession(scene, on_log=lambda line: self.logCallback and self.logCallback(line))
        if scene is not None:
            self._session.scene = scene
        self._session.python = self.pythonExecutable
        return self._session

    # What the last run left, for the widget and the diagnostics.
    logLines = property(lambda self: self.session().log_lines)
    lastResult = property(lambda self: self.session().last_result)
    lastError = property(lambda self: self.session().last_error)

    def log(self, text):
        self.session().log(text)

    def recordError(self, exc):
        self.session().record_error(exc)

    def diagnostics(self, slicerVersion=None, modelPath=None):
        """The "Copy diagnostics" text: versions, device, model, last run's stage timings, last error, log."""
        session = self.session()
        session.model = modelPath
        return session.diagnostics(slicerVersion)

    def installDependencies(self, status=None):
        """Install torch through the PyTorch extension (PyTorchUtils), then any other missing package with pip."""
        import slicer

        from .dependencies import install_dependencies

        install_dependencies(status or self.log, lambda requirement: slicer.util.pip_install(requirement))

    def ensureDependencies(self, confirm, status) -> bool:
        """Segment's first step: True when PyTorch and the other packages are there; else ask ``confirm(text)``
        and install them (:meth:`installDependencies`, ``status(text)`` for progress). False: not installed."""
        from .dependencies import TORCH_REQUIREMENT, missing_packages, torch_problem
        from .panel import install_question, tr

        if not missing_packages() and not torch_problem():
            return True
        if not confirm(install_question(TORCH_REQUIREMENT)):
            status(tr("PyTorch must be installed to segment."))
            return False
        self.installDependencies(status)
        ready = not missing_packages() and not torch_problem()
        status(tr("Dependencies installed.") if ready else tr("PyTorch must be installed to segment."))
        return ready

    @staticmethod
    def modelInfoHtml(modelPath=None):
        """What the panel shows about the model that will run, with a link to its model card."""
        from ..results.model_card import model_summary
        from .provenance import model_info_html

        return model_info_html(model_summary(modelPath))

    # --- segmentation: the command line in a subprocess, through the session

    def startSegmentation(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto",
                          modelPath=None, overwriteEdited=False, smoothing=0.5):
        """Start ``lumbarseg segment`` on the volume in a subprocess; returns the job. Poll ``job.process`` from
        a timer, then call :meth:`finishSegmentation`."""
        session = self.session(scene)
        session.device, session.model = device or "auto", modelPath
        return session.start(volumeNode, segmentation_node=segmentationNode, roi_mode=roiMode,
                             replace_edited=overwriteEdited, smoothing=smoothing)

    def finishSegmentation(self, scene, job, referenceNode=None, tableNode=None):
        """After the process ended: its result into the scene. Returns the ApplyOutcome; raises Cancelled or
        the command's one-line error (the scene is then unchanged)."""
        session = self.session(scene)
        session.job = job
        return session.finish(referenceNode, tableNode)

    def cancelSegmentation(self, job):
        """End a running job's process (and its children) and wait for it; nothing in the scene changes."""
        session = self.session()
        session.job = job
        session.cancel()

    def process(self, scene, volumeNode, segmentationNode=None, roiMode="auto", device="auto", modelPath=None,
                overwriteEdited=False, progress=None, cancel=None, smoothing=0.5):
        """Synchronous run (scripting, tests): the same subprocess as the GUI, waited for. Returns
        (SegmentationResult, ApplyOutcome)."""
        session = self.session(scene)
        session.device, session.model = device or "auto", modelPath
        outcome = session.run(volumeNode, progress, cancel, segmentation_node=segmentationNode, roi_mode=roiMode,
                              replace_edited=overwriteEdited, smoothing=smoothing)
        return session.last_result, outcome

    @staticmethod
    def isUserEdited(segmentationNode):
        from .segments import is_user_edited

        return is_user_edited(segmentationNode)

    def setSmoothing(self, segmentationNode, value):
        """Set the surface smoothing; surfaces are rebuilt only when the value changes. Returns True then."""
        return self.session().set_smoothing(segmentationNode, value)

    def computeMetrics(self, scene, segmentationNode, volumeNode, referenceNode=None, tableNode=None):
        return self.session(scene).compute_metrics(segmentationNode, volumeNode, referenceNode, tableNode)

    def exportStl(self, segmentationNode, folder, overwrite=False):
        """One STL per vertebra; an earlier export of a same-named segmentation there is only replaced (as a
        whole) with ``overwrite``."""
        return self.session().export_stl(segmentationNode, folder, overwrite=overwrite)

    def exportStlAsking(self, segmentationNode, folder, confirm):
        """:meth:`exportStl`; when the folder holds an earlier export of a same-named segmentation, ``confirm(text)``
        decides whether to replace it as a whole. Returns the files written, or None (not replaced)."""
        from .export import EarlierExportError
        from .panel import tr

        try:
            return self.exportStl(segmentationNode, folder)
        except EarlierExportError as exc:
            if not confirm(str(exc) + "\n\n" + tr("Replace them?")):
                return None
        return self.exportStl(segmentationNode, folder, overwrite=True)

    def exportLabelmap(self, scene, segmentationNode, volumeNode, path):
        return self.session(scene).export_labelmap(segmentationNode, volumeNode, path)
