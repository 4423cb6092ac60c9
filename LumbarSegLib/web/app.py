"""The page: trame-slicer's slice and 3D views and segment editor, plus the LumbarSeg panel (:mod:`.panel`).

Built like trame-slicer's own SegmentationApp (a ``SlicerApp``, remote-rendered views, its segment editor
logic and UI), with LumbarSeg's flow beside it. Every handler here is a few lines that call
:class:`.session.StudySession` and copy its answers into the trame state; the engine runs in its own
process (:mod:`LumbarSegLib.study.engine_process`) and this event loop only polls it.

One browser drives a server at a time. trame shares one state (and one scene) among every browser that
connects, so a second browser would see and change the first one's study. The first page to connect owns
the server; any other page shows the same views read-only under a notice (an overlay stops its clicks, and
every LumbarSeg handler refuses a caller that is not the owner). When the owner's page is closed (it stops
sending its 5-second heartbeat) the next page takes over.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..errors import LumbarSegError
from .session import SAMPLE_CT, EditedSegmentation, StudySession
from .uploads import EXPORT_FOLDER, UPLOAD_FOLDER, PieceUpload, display_name, remove_patient_data

POLL_SECONDS = 0.25
READ_ONLY = "Another browser is using this server; this page is a read-only view."  # said to the refused page only
OWNER_TIMEOUT_S = 15.0  # an owner page silent this long (closed, crashed) gives the server to the next page
SERVER_CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def list_server_cts(folder) -> list[dict]:
    """What ``--data-dir`` offers: its CT files and its sub-folders (DICOM series), top level only, sorted.
    The page sends back an index into this list, never a path."""
    if folder is None:
        return []
    entries = []
    for path in sorted(Path(folder).iterdir(), key=lambda p: p.name.lower()):
        if path.name.startswith("."):
            continue
        if path.is_dir() or path.name.lower().endswith(SERVER_CT_SUFFIXES):
            entries.append({"title": path.name + ("/ (DICOM)" if path.is_dir() else ""), "value": len(entries),
                            "path": str(path)})
    return entries


class LumbarSegWebApp:
    def __init__(self, server, *, data_dir=None, work_dir=None, max_upload_bytes=0, device="auto", model=None,
                 keep_uploads=False):
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic.layout_button_logic import LayoutButtonLogic
        from trame_slicer.app.logic.segmentation import SegmentEditorLogic
        from trame_slicer.core import SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server
        self.state, self.ctrl = server.state, server.controller
        server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, server)
        self.editor_logic = SegmentEditorLogic(server, self.slicer_app)
        self.layout_logic = LayoutButtonLogic(server, self.slicer_app)
        self._own_work_dir = work_dir is None
        self.keep_uploads = bool(keep_uploads)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="lumbarseg-web-"))
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.session = StudySession(self.slicer_app.scene, self.work_dir / EXPORT_FOLDER, device=device, model=model)
        self.data_dir = data_dir
        self.server_cts = list_server_cts(data_dir)
        self.max_upload_bytes = int(max_upload_bytes)
        self._owner_seen: dict[str, float] = {}
        self._upload: PieceUpload | None = None  # the owner's upload under way, one at a time
        # the CT waiting for "discard the edits?": kept here, not in the shared state, which the page can write
        # (a path from the page would open any file on the server)
        self._pending_open: tuple[Path, str] | None = None
        self._poll_task = None
        self._init_state()
        from .panel import build_ui

        self.ui = build_ui(self)
        self.editor_logic.set_ui(self.ui.editor_ui)
        self._refresh_handle = None
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._on_edited)
        self.slicer_app.segmentation_editor.active_effect_name_changed.connect(self._lock_roi_while_editing)
        self.layout_logic.data.current_layout_id = "3D Primary"  # 3D view on the left, three slice views

    # --- state

    def _init_state(self):
        s = self.state
        s.trame__title = "LumbarSeg"
        s.client_only("ls_me")
        s.update({
            "ls_owner": "", "ls_ct": "", "ls_is_dicom": False, "ls_status": "Open a CT to begin.", "ls_error": "",
            "ls_running": False, "ls_progress": 0, "ls_metrics": [], "ls_warnings": [], "ls_messages": [],
            "ls_naming": "", "ls_model": "", "ls_has_seg": False, "ls_ask_replace": False, "ls_ask_open": False,
            "ls_server_cts": [{"title": e["title"], "value": e["value"]} for e in self.server_cts],
            "ls_server_choice": None, "ls_max_upload": self.max_upload_bytes, "ls_uploading": False,
            "ls_stem": "LumbarSeg", "ls_show_roi": True, "ls_edited": False,
            "ls_segmentations": [], "ls_active_seg": None,
        })

    def _refresh(self):
        """Copy what the session knows into the page's state."""
        sess, s = self.session, self.state
        rows = sess.metrics_rows()
        s.ls_ct = sess.ct.label if sess.ct else ""
        s.ls_is_dicom = bool(sess.ct and sess.ct.is_dicom)
        s.ls_metrics = rows
        warnings = sess.warnings() if rows else []
        s.ls_warnings = warnings
        s.ls_messages = [m for m in sess.messages if m not in warnings and "implausible" not in m]
        s.ls_naming = sess.naming_summary()
        s.ls_model = sess.model_summary()
        s.ls_has_seg = sess.segmentation_node is not None
        s.ls_edited = sess.shown_is_edited()
        s.ls_stem = sess.stem()
        s.ls_segmentations = sess.segmentations()
        s.ls_active_seg = sess.segmentation_node.GetID() if sess.segmentation_node is not None else None

    def _on_edited(self, *_):
        """A paint/erase/scissors stroke: measure again once the strokes pause (1 s), not on every one."""
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()

        def refresh():
            self._refresh_handle = None
            with self.state:
                self._refresh()

        try:
            self._refresh_handle = asyncio.get_event_loop().call_later(1.0, refresh)
        except RuntimeError:  # no event loop (headless use)
            self._refresh()

    def _lock_roi_while_editing(self, effect_name: str):
        """While a paint/erase/scissors tool is active, strokes over the crop box must edit the segment, not
        drag the box's handles (which would change the next run's crop)."""
        roi = self.session.crop_roi()
        display = roi.GetDisplayNode() if roi is not None else None
        if display is not None:
            display.SetHandlesInteractive(not effect_name or effect_name.endswith("NoTool"))

    def _activate_in_editor(self, node):
        editor = self.slicer_app.segmentation_editor
        editor.set_surface_representation_enabled(True)  # else the editor drops the closed surfaces
        # Before the activation too: it signals every effect pipeline, and the Threshold / intensity-mask ones
        # then update a vtkImageThreshold that only a pipeline with a view has connected - without one, each
        # slice view printed "vtkImageThreshold ... has 0 connections but is not optional" on every result.
        self._attach_effect_pipelines_to_views()
        editor.set_active_segmentation(node, self.session.volume_node)
        self._attach_effect_pipelines_to_views()  # and any pipeline the activation made

    def _attach_effect_pipelines_to_views(self):
        """Give every segment-editor effect pipeline its view.

        trame-slicer 2.0.0 registers its effects' parameter nodes when the editor logic is made, before the
        views exist; the pipelines that slicer-layer-dm then makes for each new view are created while that
        view is not yet in the view manager, so they get no view and Paint/Erase fail on activation
        ('NoneType' object has no attribute 'paint_interaction_stopped'). Setting the view afterwards is
        what trame-slicer would have done had the view been registered first.
        """
        views = self.slicer_app.view_manager
        for effect in self.slicer_app.segmentation_editor._effects.values():
            for pipeline_ref in getattr(effect, "_pipelines", ()):
                pipeline = pipeline_ref()
                if pipeline is not None and getattr(pipeline, "_view", True) is None:
                    pipeline.SetView(views.get_view(pipeline.viewNode))

    def select_segmentation(self, client_id, node_id):
        if not self._owns(client_id):
            return READ_ONLY
        if self.session.running:
            return
        try:
            node = self.session.show_segmentation(node_id)
        except LumbarSegError as exc:
            self._fail(exc)
            return
        self._activate_in_editor(node)
        self._refresh()

    def select_vertebra(self, client_id, name):
        """A click on a vertebra's name: that segment becomes the one the editor paints or erases."""
        if not self._owns(client_id):
            return READ_ONLY
        segment_id = self.session.segment_id_of(name)
        if segment_id is not None:
            self.slicer_app.segmentation_editor.set_active_segment_id(segment_id)

    # --- ownership

    def claim(self, client_id: str) -> str:
        """Heartbeat of every page: the owner keeps the server, another page gets it when the owner is gone."""
        now = time.monotonic()
        owner = self.state.ls_owner
        if not owner or now - self._owner_seen.get(owner, 0.0) > OWNER_TIMEOUT_S:
            owner = client_id
        self._owner_seen[client_id] = now
        if owner != self.state.ls_owner:
            self.state.ls_owner = owner
        return owner

    def _owns(self, client_id) -> bool:
        """Whether ``client_id``'s page owns the server. A refusal is told to that page only (the handler
        returns :data:`READ_ONLY` as its answer to the call, and the page shows its read-only notice), never
        through the state, which every page shares: the owner's page would show it too."""
        return bool(client_id) and client_id == self.state.ls_owner

    def _fail(self, exc: BaseException) -> None:
        from ..scene.run import friendly_error

        self.state.ls_error = friendly_error(exc)

    # --- opening

    def open_sample(self, client_id):
        if not self._owns(client_id):
            return READ_ONLY
        self._open(SAMPLE_CT, "LumbarSeg sample CT (synthetic)")

    def open_server_ct(self, client_id, choice):
        if not self._owns(client_id):
            return READ_ONLY
        entry = next((e for e in self.server_cts if e["value"] == choice), None)
        if entry is None:
            self.state.ls_error = "Choose a CT from the list of the server's folder."
            return
        self._open(Path(entry["path"]), entry["title"])

    # An upload comes in pieces (uploads.PieceUpload): the page starts it with the file's name and size,
    # sends transport.PIECE_BYTES at a time, awaiting each answer, then finishes it. The owner is checked
    # before a piece is written; the transport (transport.py) has already refused any message over one
    # piece, so a page that is not the owner makes the server hold at most one piece, briefly.

    def upload_start(self, client_id, name, size):
        """Returns this upload's token for its pieces, or None (the reason is on the page)."""
        if not self._owns(client_id):
            return None
        self._discard_upload()
        self.state.ls_error = ""
        try:
            self._upload = PieceUpload(name, size, self.work_dir / UPLOAD_FOLDER, self.max_upload_bytes)
        except LumbarSegError as exc:
            self._fail(exc)
            return None
        return self._upload.token

    def upload_piece(self, client_id, token, offset, data) -> bool:
        """Whether the page should send the next piece."""
        if not self._owns(client_id) or self._upload is None or token != self._upload.token:
            return False
        try:
            self._upload.add(offset, data)
        except LumbarSegError as exc:
            self._upload = None  # add() discarded it
            self._fail(exc)
            return False
        return True

    def upload_finish(self, client_id, token):
        if not self._owns(client_id):
            return READ_ONLY
        if self._upload is None or token != self._upload.token:
            return None  # refused or replaced on the way; the page already shows why
        upload, self._upload = self._upload, None
        try:
            path = upload.finish()
        except LumbarSegError as exc:
            self._fail(exc)
            return None
        self._open(path, display_name(upload.client_name), remove_on_fail=True)
        return None

    def _discard_upload(self):
        if self._upload is not None:
            self._upload.discard()
            self._upload = None

    def _open(self, path, label, *, discard_edits=False, remove_on_fail=False):
        s = self.state
        s.ls_error = ""
        try:
            volume = self.session.open_ct(path, label, discard_edits=discard_edits)
        except EditedSegmentation:
            self._pending_open = (Path(path), label)
            s.ls_ask_open = True
            return
        except LumbarSegError as exc:
            self._fail(exc)
            if remove_on_fail:
                Path(path).unlink(missing_ok=True)
            return
        # The CT in the slice views only: the 3D view shows the vertebrae's surfaces and the crop box.
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(volume)
        display.show_volume_in_slice_foreground(None)
        display.reset_views()
        s.ls_status = f"Opened {label}. Click 'Segment lumbar spine'."
        self._refresh()

    def confirm_open(self, client_id, discard: bool):
        if not self._owns(client_id):
            return READ_ONLY
        pending, self._pending_open, self.state.ls_ask_open = self._pending_open, None, False
        if discard and pending:
            self._open(*pending, discard_edits=True)

    # --- segmenting

    def segment(self, client_id):
        if not self._owns(client_id):
            return READ_ONLY
        if self.session.running:
            return
        if self.session.shown_is_edited():
            self.state.ls_ask_replace = True  # the page asks: replace the edited one, or keep it
            return
        self._start(replace_edited=False)

    def confirm_replace(self, client_id, choice: str):
        if not self._owns(client_id):
            return READ_ONLY
        self.state.ls_ask_replace = False
        if choice in ("replace", "keep"):
            self._start(replace_edited=choice == "replace")

    def _start(self, replace_edited: bool):
        s = self.state
        s.ls_error = ""
        try:
            self.session.start(replace_edited=replace_edited)
        except Exception as exc:  # noqa: BLE001 - anything (an unwritable work folder too) is shown, as Slicer does
            self._fail(exc)
            return
        s.ls_running, s.ls_progress, s.ls_status = True, 0, "Starting the engine..."
        self._poll_task = asyncio.ensure_future(self._poll())

    async def _poll(self):
        while self.session.running:
            fraction, text = self.session.poll()
            with self.state:
                self.state.ls_progress = round(100 * fraction)
                self.state.ls_status = text or "Working..."
            if not self.session.running:
                break
            await asyncio.sleep(POLL_SECONDS)
        with self.state:
            self._finish()

    def _finish(self):
        s = self.state
        s.ls_running = False
        if self.session.job is None:  # cancelled
            return
        try:
            self.session.finish()
        except Exception as exc:  # noqa: BLE001 - an unexpected one too, or the page would show the last stage
            s.ls_status = "The segmentation did not finish; the scene is as it was."
            self._fail(exc)
            return
        node = self.session.segmentation_node
        if node is not None:
            self._activate_in_editor(node)
            for view in self.slicer_app.view_manager.get_views():
                if type(view).__name__ == "ThreeDView":
                    view.reset_view()  # frame the vertebrae and the crop box
            self._show_roi(self.state.ls_show_roi)
        found = [r["name"] for r in self.session.metrics_rows()]
        s.ls_progress = 100
        s.ls_status = f"Found {', '.join(found)}." if found else "No lumbar vertebra was found."
        self._refresh()

    def cancel(self, client_id):
        if not self._owns(client_id):
            return READ_ONLY
        if not self.session.running:
            return
        self.session.cancel()
        s = self.state
        s.ls_running, s.ls_progress = False, 0
        s.ls_status = "Cancelled; nothing was changed."

    def _show_roi(self, visible: bool):
        roi = self.session.crop_roi()
        if roi is not None and roi.GetDisplayNode() is not None:
            roi.GetDisplayNode().SetVisibility(bool(visible))

    def refresh_metrics(self, client_id):
        if not self._owns(client_id):
            return READ_ONLY
        self._refresh()

    # --- exports

    def export(self, client_id, kind: str):
        """The file's bytes as a download attachment (or None, with the reason on the page)."""
        if not self._owns(client_id):
            return None
        makers = {"stl": self.session.export_stl_zip, "seg": self.session.export_seg_nrrd,
                  "dicom": self.session.export_dicom_seg}
        try:
            path = makers[kind]()
        except (LumbarSegError, KeyError, ValueError, RuntimeError) as exc:
            self._fail(exc)
            return None
        content = path.read_bytes()
        shutil.rmtree(path.parent, ignore_errors=True)
        self.state.ls_error = ""
        return self.server.protocol.addAttachment(content)

    def close(self):
        self._discard_upload()
        if self.session.running:
            self.session.cancel()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        else:  # the user's --work-dir: the uploads (patient data) go unless --keep-uploads
            remove_patient_data(self.work_dir, keep_uploads=self.keep_uploads)


def serve(args) -> int:
    """Start the server (``lumbarseg serve``); returns when it stops."""
    from .transport import FRAME_LIMIT, bound_transport

    bound_transport()  # before trame makes its websocket server: no page message over one upload piece
    from trame.app import get_server

    server = get_server("lumbarseg", client_type="vue3")
    server.options["ws_max_msg_size"] = FRAME_LIMIT  # trame copies it into wslink's setting at start
    max_bytes = int(args.max_upload_mb * 1e6)
    app = LumbarSegWebApp(server, data_dir=args.data_dir, work_dir=args.work_dir, max_upload_bytes=max_bytes,
                          device=args.device, model=args.model, keep_uploads=getattr(args, "keep_uploads", False))
    if args.sample:
        app._open(SAMPLE_CT, "LumbarSeg sample CT (synthetic)")
        if app.state.ls_error:
            print(f"lumbarseg: error: {app.state.ls_error}", file=sys.stderr)
            return 2
    print(f"lumbarseg: serving on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a service manager's stop runs the clean-up below too
    try:
        # backend named: aiohttp's is the one bound_transport bounds (TRAME_BACKEND could pick another)
        server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                     disable_logging=True, exec_mode="main", timeout=0, backend="aiohttp")
    finally:
        app.close()
    return 0


def _exit_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # ends server.start like Ctrl-C, so its ``finally`` removes the uploads
