"""The engine in a background thread, polled by the GUI; stage names for the progress bar."""

from __future__ import annotations

import threading

import SimpleITK as sitk


class SegmentationWorker:
    """Runs the engine in a background thread; the GUI polls it from a timer on the main thread.

    No Qt and no scene access happen in the thread: ``start`` gets a SimpleITK image and the worker
    only touches torch/numpy/SimpleITK. ``cancel()`` makes the engine's ``cancel`` callback return True,
    which stops the run with :class:`errors.Cancelled` at its next check.
    """

    def __init__(self, segment_fn=None, model_loader=None):
        self._segment_fn = segment_fn
        self._model_loader = model_loader
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._events: list[tuple[str, float]] = []
        self._thread = None
        self.result = None
        self.error: BaseException | None = None
        self.stage = ""
        self.fraction = 0.0

    def start(self, image: sitk.Image, *, model=None, model_path=None, device="auto", box_lps=None):
        def run():
            try:
                segment_fn = self._segment_fn
                if segment_fn is None:
                    from ..pipeline import segment as segment_fn
                chosen = model
                if chosen is None:
                    self._progress("load model", 0.0)
                    loader = self._model_loader
                    if loader is None:
                        from ..models import load_model as loader
                    chosen = loader(model_path)
                self.result = segment_fn(image, model=chosen, device=device, box_lps=box_lps,
                                         progress=self._progress, cancel=self._cancel.is_set)
            except BaseException as exc:  # reported to the GUI thread
                self.error = exc

        self._thread = threading.Thread(target=run, name="LumbarSeg", daemon=True)
        self._thread.start()
        return self

    def _progress(self, stage: str, fraction: float):
        with self._lock:
            self._events.append((stage, float(fraction)))
            self.stage, self.fraction = stage, float(fraction)

    def poll(self) -> list[tuple[str, float]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def cancel(self):
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout=None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running()


# Stage names from the engine -> (progress bar fraction range, status text).
STAGE_TEXT = {
    "load model": ((0.0, 0.05), "Loading the model..."),
    "load": ((0.05, 0.1), "Preparing the image..."),
    "localize": ((0.1, 0.35), "Stage 1: locating the lumbar spine (heatmap)..."),
    "segment": ((0.35, 0.9), "Stage 2: segmenting L1-L5 in the crop box (XUNet)..."),
    "postprocess": ((0.9, 1.0), "Cleaning up labels..."),
}


def overall_progress(stage: str, fraction: float) -> tuple[float, str]:
    (lo, hi), text = STAGE_TEXT.get(stage, ((0.0, 1.0), f"{stage}..."))
    return lo + (hi - lo) * max(0.0, min(1.0, fraction)), text
