"""The page's widgets: trame-slicer's viewer layout and segment editor, and the LumbarSeg panel.

Layout as in trame-slicer's SegmentationAppUI: views in the middle, a tool strip on the left that opens
the segment editor; the LumbarSeg panel (open, segment, metrics, export) is a drawer on the right. Every
button calls a :class:`.app.LumbarSegWebApp` handler with this page's id (``ls_me``), which the handlers
check against the owner. Element ids (``ls-...``) are what the browser tests use.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import RESEARCH_NOTICE

# Runs once per page: a random id for this page, kept in a client-only state variable, and a heartbeat
# that claims the server (or keeps it) every 5 s. ``window.lumbarsegPageId`` shows the id to the tests.
_CLIENT_SCRIPT = (
    "ls_me = ls_me || (Math.random().toString(36).slice(2) + Date.now().toString(36));"
    "window.lumbarsegPageId = ls_me;"
    "window.trame.trigger('ls_claim', [ls_me]);"
    "window.setInterval(() => window.trame.trigger('ls_claim', [ls_me]), 5000);"
)


@dataclass
class PageUI:
    layout: object
    editor_ui: object


def _upload_handler(app) -> str:
    # Size and type are checked here before a byte is sent, and again on the server (uploads.PieceUpload).
    # The file goes in PIECE_BYTES pieces, one at a time: the server writes each to disk and answers false
    # once it refuses the upload (too large, not the owner), and no message may be larger (transport.py).
    # A piece goes as a DataView, as trame's own File content does: trame's client walks any argument with
    # a length element by element (a Uint8Array piece became a million promises), and msgpack sends a
    # DataView as binary. Globals other than a few (Math, JSON...) are hidden from a Vue template: window.
    from .transport import PIECE_BYTES

    return (
        "const f = $event.target.files && $event.target.files[0]; if (!f) return;"
        "if (ls_max_upload <= 0) { ls_error = 'Uploads are switched off on this server.'; return; }"
        "if (f.size > ls_max_upload) { ls_error = `${f.name} is ${(f.size / 1e6).toFixed(1)} MB, more than this "
        "server accepts (${(ls_max_upload / 1e6).toFixed(0)} MB).`; $event.target.value = ''; return; }"
        "ls_uploading = true; ls_error = '';"
        "(async () => {"
        " const token = await window.trame.trigger('ls_upload_start', [ls_me, f.name, f.size]);"
        " if (!token) return;"
        f" for (let at = 0; at < f.size; at += {PIECE_BYTES}) {{"
        f"  const piece = new window.DataView(await f.slice(at, at + {PIECE_BYTES}).arrayBuffer());"
        "  if (!await window.trame.trigger('ls_upload_piece', [ls_me, token, at, piece])) return;"
        " }"
        " await window.trame.trigger('ls_upload_finish', [ls_me, token]);"
        "})().finally(() => { ls_uploading = false; });"
        "$event.target.value = '';"
    )


def _download(kind: str, filename_expr: str, mime: str) -> str:
    return (f"window.trame.trigger('ls_export', [ls_me, '{kind}']).then((data) => "
            f"{{ if (data) utils.download({filename_expr}, data, '{mime}'); }})")


def build_ui(app) -> PageUI:
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v3
    from trame_slicer.app.ui import ViewerLayout
    from trame_slicer.app.ui.segmentation import SegmentEditorToolbarUI, SegmentEditorUI, SegmentEditorUndoRedoUI

    server, ctrl = app.server, app.ctrl
    ctrl.trigger("ls_claim")(app.claim)
    ctrl.trigger("ls_upload_start")(app.upload_start)
    ctrl.trigger("ls_upload_piece")(app.upload_piece)
    ctrl.trigger("ls_upload_finish")(app.upload_finish)
    ctrl.trigger("ls_export")(app.export)
    is_viewer = "ls_owner && ls_owner !== ls_me"

    with ViewerLayout(server, title="LumbarSeg", is_drawer_visible=False) as layout:
        client.ClientTriggers(mounted=_CLIENT_SCRIPT)
        with layout.appbar:
            v3.VChip(RESEARCH_NOTICE, color="warning", variant="flat", size="small", classes="mr-4",
                     id="ls-notice")
        with layout.drawer:
            editor_ui = SegmentEditorUI(v_if=("ls_has_seg",))
            html.Div("Segment the CT first; then paint, erase or cut here.", v_if=("!ls_has_seg",), classes="pa-4 text-caption")
        drawer = layout.typed_state.name.is_drawer_visible
        with layout.toolbar:
            v3.VBtn(icon="mdi-brush", id="ls-editor-toggle", variant="text", density="comfortable",
                    disabled=("!ls_has_seg",), click=f"{drawer} = !{drawer}",
                    title="Segment editor (paint, erase, scissors)")
            SegmentEditorToolbarUI(editor_ui=editor_ui)
        with layout.undo_redo:
            SegmentEditorUndoRedoUI(editor_ui=editor_ui)
        with layout.content:
            app.layout_logic.layout_manager.initialize_layout_grid(layout)

        with v3.VNavigationDrawer(location="right", permanent=True, width=430, id="ls-panel"):
            _lumbarseg_panel(app)

        # A second browser: same views, no clicks.
        with v3.VOverlay(model_value=(is_viewer,), persistent=True, contained=False, scrim="black",
                         classes="align-start justify-center", opacity=0.15, id="ls-viewer-overlay"):
            v3.VAlert("Another browser is using this LumbarSeg server. This page is a read-only view; it "
                      "takes over when the other page is closed.", type="info", classes="mt-16",
                      id="ls-viewer-notice")
    return PageUI(layout, editor_ui)


def _lumbarseg_panel(app):
    from trame.widgets import html
    from trame.widgets import vuetify3 as v3

    ctrl = app.ctrl
    with v3.VContainer(classes="pa-3", style="font-size: 0.9rem;"):
        html.Div("Open a CT", classes="text-subtitle-1 mb-1")
        with html.Div(classes="d-flex flex-wrap ga-2 mb-2"):
            v3.VBtn("Sample CT", id="ls-open-sample", size="small", variant="tonal", prepend_icon="mdi-flask",
                    disabled=("ls_running",), click=(ctrl.trigger("ls_open_sample")(app.open_sample), "[ls_me]"))
            v3.VFileInput(label="Upload a CT file", id="ls-upload", density="compact", hide_details=True,
                          accept=".nii,.gz,.nrrd,.mha", prepend_icon="mdi-upload", loading=("ls_uploading",),
                          disabled=("ls_running || ls_uploading",), change=_upload_handler(app),
                          style="min-width: 220px;")
        with html.Div(v_if=("ls_server_cts.length",), classes="d-flex ga-2 mb-2"):
            v3.VSelect(label="From the server's folder", id="ls-server-ct", items=("ls_server_cts",),
                       v_model=("ls_server_choice",), density="compact", hide_details=True)
            v3.VBtn("Open", id="ls-open-server", size="small", disabled=("ls_running || ls_server_choice === null",),
                    click=(ctrl.trigger("ls_open_server")(app.open_server_ct), "[ls_me, ls_server_choice]"))
        html.Div("{{ ls_ct ? 'CT: ' + ls_ct : 'No CT open.' }}", id="ls-ct", classes="text-caption mb-2")

        with html.Div(classes="d-flex ga-2 align-center"):
            v3.VBtn("Segment lumbar spine", id="ls-segment", color="primary", prepend_icon="mdi-play",
                    disabled=("!ls_ct || ls_running",),
                    click=(ctrl.trigger("ls_segment")(app.segment), "[ls_me]"))
            v3.VBtn("Cancel", id="ls-cancel", v_show=("ls_running",), variant="outlined", color="error",
                    click=(ctrl.trigger("ls_cancel")(app.cancel), "[ls_me]"))
        v3.VProgressLinear(model_value=("ls_progress",), v_show=("ls_running",), height=8, color="primary",
                           classes="mt-2", id="ls-progress")
        html.Div("{{ ls_status }}", id="ls-status", classes="text-caption mt-1")
        v3.VAlert("{{ ls_error }}", v_if=("ls_error",), type="error", density="compact", classes="mt-2",
                  id="ls-error", closable=True, click_close="ls_error = ''")
        v3.VCheckbox(label="Show the crop box (drag its handles to correct it, then segment again)",
                     v_model=("ls_show_roi",), density="compact", hide_details=True, v_if=("ls_has_seg",),
                     update_modelValue=(ctrl.trigger("ls_show_roi")(lambda visible: app._show_roi(visible)),
                                        "[$event]"))

        _metrics_table(app)
        _exports()
        _dialogs(app)


def _metrics_table(app):
    from trame.widgets import html
    from trame.widgets import vuetify3 as v3

    select_vertebra = app.ctrl.trigger("ls_select_vertebra")(app.select_vertebra)
    select_segmentation = app.ctrl.trigger("ls_select_segmentation")(app.select_segmentation)
    v3.VSelect(label="Segmentation shown", id="ls-segmentation", items=("ls_segmentations",),
               model_value=("ls_active_seg",), v_if=("ls_segmentations.length > 1",), density="compact",
               hide_details=True, classes="mt-3", disabled=("ls_running",),
               update_modelValue=(select_segmentation, "[ls_me, $event]"))
    with html.Div(v_if=("ls_metrics.length",), classes="mt-3", id="ls-metrics"):
        html.Div("Vertebrae", classes="text-subtitle-1")
        with v3.VTable(density="compact"):
            with html.Thead():
                with html.Tr():
                    for title in ("", "Volume mL", "Height mm", "Mean HU"):
                        html.Th(title)
                    html.Th("Trab. HU", v_if=("ls_metrics.some(r => r.trabecular_hu !== null)",))
                    html.Th("Named by", v_if=("ls_metrics.some(r => r.named_by)",))
            with html.Tbody():
                with html.Tr(v_for="row in ls_metrics", key="row.name", classes="ls-metric-row"):
                    with html.Td(style="white-space: nowrap;"):
                        html.Span(style=("{display: 'inline-block', width: '12px', height: '12px', "
                                         "background: row.color, marginRight: '6px'}",))
                        html.A("{{ row.name }}", classes="ls-metric-name", style="cursor: pointer;",
                               title="Edit this vertebra in the segment editor",
                               click=(select_vertebra, "[ls_me, row.name]"))
                    html.Td("{{ row.volume_ml }}")
                    html.Td("{{ row.height_mm }}")
                    html.Td("{{ row.mean_hu }}")
                    html.Td("{{ row.trabecular_hu === null ? '-' : row.trabecular_hu }}",
                            v_if=("ls_metrics.some(r => r.trabecular_hu !== null)",))
                    # how the run decided the level; a level to check says so in the warning colour
                    with html.Td(v_if=("ls_metrics.some(r => r.named_by)",), classes="ls-named-by"):
                        html.Span("{{ row.named_by || '-' }}")
                        html.Div("{{ row.level_check }}", v_if=("row.level_check",),
                                 classes="text-caption text-warning ls-level-check")
        html.Div("Edited since the run: measured on your edit." , v_if=("ls_edited",), classes="text-caption")
        html.Div("{{ ls_naming }}", v_if=("ls_naming",), id="ls-naming", classes="text-caption mt-1")
        html.Div("{{ w }}", v_for="w in ls_warnings", key="w", classes="text-caption text-warning mt-1 ls-warning")
        html.Div("{{ m }}", v_for="m in ls_messages", key="m", classes="text-caption mt-1 ls-message")
        html.Div("{{ ls_model }}", id="ls-model", classes="text-caption mt-1")
        html.Div(RESEARCH_NOTICE + ": every result must be checked and corrected by a qualified person.",
                 classes="text-caption text-warning mt-1")


def _exports():
    from trame.widgets import html
    from trame.widgets import vuetify3 as v3

    with html.Div(v_if=("ls_has_seg",), classes="mt-3 d-flex flex-wrap ga-2"):
        v3.VBtn("STL (zip)", id="ls-export-stl", size="small", prepend_icon="mdi-download",
                click=_download("stl", "ls_stem + '_stl.zip'", "application/zip"))
        v3.VBtn(".seg.nrrd", id="ls-export-seg", size="small", prepend_icon="mdi-download",
                click=_download("seg", "ls_stem + '.seg.nrrd'", "application/octet-stream"))
        v3.VBtn("DICOM SEG", id="ls-export-dicom", size="small", prepend_icon="mdi-download",
                v_if=("ls_is_dicom",), click=_download("dicom", "ls_stem + '_seg.dcm'", "application/dicom"))


def _dialogs(app):
    from trame.widgets import html
    from trame.widgets import vuetify3 as v3

    ctrl = app.ctrl
    replace = ctrl.trigger("ls_confirm_replace")(app.confirm_replace)
    with v3.VDialog(model_value=("ls_ask_replace",), persistent=True, max_width=520, id="ls-ask-replace"):
        with v3.VCard(title="The segmentation was edited"):
            v3.VCardText("Segmenting again would replace your edits. Keep the edited segmentation (the new "
                         "result goes into a new one) or replace it?")
            with v3.VCardActions():
                v3.VBtn("Keep my edits", id="ls-keep-edits", click=(replace, "[ls_me, 'keep']"))
                v3.VBtn("Replace", id="ls-replace-edits", color="error", click=(replace, "[ls_me, 'replace']"))
                v3.VBtn("Cancel", id="ls-replace-cancel", click=(replace, "[ls_me, 'cancel']"))
    confirm_open = ctrl.trigger("ls_confirm_open")(app.confirm_open)
    with v3.VDialog(model_value=("ls_ask_open",), persistent=True, max_width=520, id="ls-ask-open"):
        with v3.VCard(title="Discard the edited segmentation?"):
            v3.VCardText("Opening another CT closes this one and its edited segmentation. Export it first if "
                         "you need it.")
            with v3.VCardActions():
                v3.VBtn("Discard and open", id="ls-discard-open", color="error", click=(confirm_open, "[ls_me, true]"))
                v3.VBtn("Cancel", id="ls-keep-open", click=(confirm_open, "[ls_me, false]"))
