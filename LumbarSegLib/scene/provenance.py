"""What ran, where: node attributes on the result (report.json's provenance: model, version, options,
warnings; the front end's settings; the research notice) and the
"copy diagnostics" text users paste into bug reports (versions, device, model, stage timings, last error).

Nothing here imports torch: the diagnostics must work when PyTorch is missing or broken.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import sys
import traceback

from .. import __version__  # the diagnostics' own version
from ..constants import RESEARCH_NOTICE
from .scene import ATTR_NOTICE

try:  # Slicer's translation function (Slicer >= 5.4); the text itself elsewhere
    from slicer.i18n import tr as _
except ImportError:
    def _(text):
        return text

ATTR_MODEL = "LumbarSeg.Model"  # model name
ATTR_MODEL_SHA256 = "LumbarSeg.ModelSHA256"
ATTR_MODEL_CONFIG = "LumbarSeg.ModelConfiguration"
ATTR_VERSION = "LumbarSeg.Version"  # LumbarSeg version that made the result
ATTR_SETTINGS = "LumbarSeg.Settings"  # JSON: device asked/used, crop box source, smoothing, timings, ...
ATTR_PROVENANCE = "LumbarSeg.Provenance"  # JSON: report.json's provenance, as the run wrote it

PACKAGES = ("torch", "SimpleITK", "numpy", "scipy", "vtk", "highdicom", "pydicom", "slicer-core")


def record_provenance(node, report_provenance: dict, settings: dict | None = None, result=None) -> dict:
    """Copy a run's provenance - report.json's ``provenance`` (:func:`LumbarSegLib.study.runner.provenance`:
    version, model, device, options, warnings) - onto ``node``'s attributes, with the front end's own
    ``settings`` (device asked for, crop box source, smoothing ...) and what the ``result`` found. The
    report is the one source: the module shows what the run wrote, not what it believes it asked for.
    Returns the settings dict that was stored (JSON in ``LumbarSeg.Settings``)."""
    model = report_provenance.get("model") or {}
    stored = {**(settings or {}), "device_used": report_provenance.get("device") or None,
              "trained_model": bool(model.get("trained", True)), "options": report_provenance.get("options")}
    if result is not None:
        stored.update({
            "found": list(result.found),
            "heatmap_peak": None if math.isnan(result.heatmap_peak) else round(float(result.heatmap_peak), 4),
            "timings_s": {k: round(float(v), 3) for k, v in result.timings.items()},
            "messages": list(result.messages),
        })
    node.SetAttribute(ATTR_MODEL, str(model.get("name") or ""))
    node.SetAttribute(ATTR_MODEL_SHA256, str(model.get("sha256") or ""))
    node.SetAttribute(ATTR_MODEL_CONFIG, str(model.get("configuration") or ""))
    node.SetAttribute(ATTR_VERSION, str(report_provenance.get("lumbarseg_version") or ""))
    node.SetAttribute(ATTR_SETTINGS, json.dumps(stored, sort_keys=True))
    node.SetAttribute(ATTR_PROVENANCE, json.dumps(report_provenance, sort_keys=True))
    node.SetAttribute(ATTR_NOTICE, report_provenance.get("notice") or RESEARCH_NOTICE)
    return stored


def read_provenance(node) -> dict:
    """The attributes :func:`record_provenance` wrote (settings and the report's provenance decoded)."""
    settings = node.GetAttribute(ATTR_SETTINGS)
    report = node.GetAttribute(ATTR_PROVENANCE)
    return {"model": node.GetAttribute(ATTR_MODEL), "model_sha256": node.GetAttribute(ATTR_MODEL_SHA256),
            "configuration": node.GetAttribute(ATTR_MODEL_CONFIG), "version": node.GetAttribute(ATTR_VERSION),
            "notice": node.GetAttribute(ATTR_NOTICE), "settings": json.loads(settings) if settings else None,
            "report": json.loads(report) if report else None}


def package_versions() -> dict:
    """Installed versions (from package metadata: nothing is imported), None when not installed."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_report() -> str:
    """What PyTorch sees, without importing it when it is not loaded yet (importing can take seconds)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return "not checked (PyTorch is not loaded yet)"
    try:
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return f"CUDA {torch.version.cuda}: {', '.join(names)}; automatic choice: cuda"
        return "no CUDA GPU visible to PyTorch; automatic choice: cpu"
    except Exception as exc:  # a broken CUDA install is exactly what a bug report needs to show
        return f"CUDA check failed: {type(exc).__name__}: {exc}"


def diagnostics_text(model_summary: dict | None = None, last_result=None, last_error: BaseException | None = None,
                     settings: dict | None = None, slicer_version: str | None = None, log_lines=()) -> str:
    """Plain text for "Copy diagnostics": versions, device, model, last run's stage timings, last error."""
    lines = [f"LumbarSeg {__version__} diagnostics", f"Notice: {RESEARCH_NOTICE}"]
    if slicer_version:
        lines.append(f"3D Slicer: {slicer_version}")
    lines.append(f"Python: {platform.python_version()} on {platform.platform()}")
    lines.append("Packages: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in package_versions().items()))
    lines.append(f"Device: {device_report()}")
    if model_summary:
        from ..results.model_card import summary_text

        lines.append(summary_text(model_summary))
        if model_summary.get("sha256"):
            lines.append(f"Model SHA-256: {model_summary['sha256']}")
    if settings:
        lines.append("Settings: " + json.dumps(settings, sort_keys=True))
    if last_result is not None:
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in last_result.timings.items())
        lines.append(f"Last run: found {', '.join(last_result.found) or 'none'} on "
                     f"{getattr(last_result, 'device', '') or '?'}; stages: {timings or 'none'}")
        for message in last_result.messages:
            lines.append(f"  message: {message}")
    if last_error is not None:
        lines.append(f"Last error: {type(last_error).__name__}: {last_error}")
        tb = "".join(traceback.format_exception(type(last_error), last_error, last_error.__traceback__))
        lines.extend("  " + line for line in tb.rstrip().splitlines()[-12:])
    else:
        lines.append("Last error: none")
    if log_lines:
        lines.append("Recent log:")
        lines.extend("  " + line for line in list(log_lines)[-40:])
    return "\n".join(lines)


def model_info_html(summary: dict) -> str:
    """What the panel shows about the model that will run (:func:`model_card.model_summary`), with a link to
    its model card."""
    import html

    rows = [f"<b>{html.escape(summary['name'])}</b>" + (_(" (bundled)") if summary["bundled"] else "")]
    for key, title in (("configuration", _("Configuration")), ("trained_on", _("Trained on")),
                       ("accuracy", _("Measured accuracy"))):
        if summary.get(key):
            rows.append(f"{title}: {html.escape(str(summary[key]))}")
    if summary.get("matches_card") is False:
        rows.append("<b>" + _("Warning: this file is not the one its model card describes.") + "</b>")
    if summary.get("card_url"):
        rows.append(f'<a href="{summary["card_url"]}">' + _("Model card") + "</a>")
    return "<br>".join(rows)
