"""What the model is, for people: the model card that sits next to a model bundle, read without torch.

``lumbarseg evaluate-model --card`` writes ``<model>.md`` and ``<model>.json`` beside ``<model>.pt``. This
module reads the JSON (and never imports torch, so the Slicer panel can show it before PyTorch is
installed) and condenses it into the few facts a user needs before trusting a result: name, configuration,
what it was trained on, its measured accuracy, and where the full card is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..constants import default_model_path


def card_paths(model_path=None) -> tuple[Path, Path]:
    """(JSON card, Markdown card) paths beside the model bundle (the bundled model when None)."""
    path = Path(model_path) if model_path else default_model_path()
    return path.with_suffix(".json"), path.with_suffix(".md")


def read_model_card(model_path=None) -> dict | None:
    """The JSON model card beside ``model_path``, or None when there is none (or it is not valid JSON)."""
    json_path, _ = card_paths(model_path)
    try:
        return json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mean(stats) -> float | None:
    return float(stats["mean"]) if isinstance(stats, dict) and stats.get("mean") is not None else None


def model_summary(model_path=None) -> dict:
    """What the panel and the result's node attributes say about the model that will run.

    Keys: ``name``, ``path``, ``exists``, ``bundled``, ``configuration``, ``trained_on``, ``accuracy``
    (one line), ``mean_dsc``, ``identity_accuracy``, ``card`` (Markdown card path or None), ``card_url``,
    ``sha256`` and ``matches_card`` (the file is the one the card describes; None without a card).
    """
    path = Path(model_path) if model_path else default_model_path()
    card = read_model_card(path)
    _, md_path = card_paths(path)
    exists = path.is_file()
    summary = {
        "name": path.name, "path": str(path), "exists": exists, "bundled": not model_path,
        "configuration": None, "trained_on": None, "accuracy": None, "mean_dsc": None, "identity_accuracy": None,
        "card": str(md_path) if md_path.is_file() else None,
        "card_url": md_path.resolve().as_uri() if md_path.is_file() else None,
        "sha256": sha256(path) if exists else None, "matches_card": None,
    }
    if not exists:
        summary["accuracy"] = ("no trained model file: the run uses random weights and its result is meaningless"
                               if not model_path else "model file not found")
        return summary
    if card is None:
        summary["accuracy"] = "not measured (no model card beside the model file)"
        return summary
    model = card.get("model", {})
    config = model.get("config", {})
    summary["matches_card"] = model.get("sha256") == summary["sha256"] if model.get("sha256") else None
    if config:
        summary["configuration"] = (f"'{config.get('name', '?')}': localizer {config.get('localizer_channels')} "
                                    f"channels at {tuple(config.get('localizer_input', ()))}, XUNet base width "
                                    f"{config.get('xunet_base')} at {tuple(config.get('xunet_input', ()))}")
    data = card.get("training", {}).get("training_data", {})
    parts = []
    if data.get("cases"):
        parts.append(f"{data['cases']} cases")
    phantoms = data.get("phantoms") or {}
    if phantoms.get("count") or data.get("data_dir_cases"):
        parts.append("synthetic phantoms (LumbarSegLib.phantoms)")
    real = (data.get("real") or {}).get("cases") or []
    parts.append(f"{len(real)} real labelled CTs (as re-imaged views)" if real else "no real CT")
    summary["trained_on"] = ", ".join(parts)
    evaluation = card.get("evaluation", {})
    overall = evaluation.get("overall", {})
    identity = evaluation.get("identity", {})
    summary["mean_dsc"] = _mean(overall.get("DSC"))
    summary["identity_accuracy"] = identity.get("accuracy")
    if summary["mean_dsc"] is not None:
        n = evaluation.get("phantoms")
        text = f"mean DSC {summary['mean_dsc']:.2f}"
        if summary["identity_accuracy"] is not None:
            text += f", vertebra identity {100 * summary['identity_accuracy']:.0f} %"
        text += f" on {n} held-out synthetic phantoms" if n else " (held-out evaluation)"
        loo = (card.get("real_leave_one_out") or {}).get("summary") or {}
        if loo.get("cases"):
            summary["real_mean_dsc"] = loo.get("mean_dsc")
            text += (f"; mean DSC {loo['mean_dsc']:.2f} on {loo['cases']} real CTs, each left out of training "
                     "(leave-one-case-out)")
        summary["accuracy"] = text
    else:
        summary["accuracy"] = "not measured in the model card"
    return summary


def summary_text(summary: dict) -> str:
    """Plain-text lines of :func:`model_summary` for a panel, a log or a bug report."""
    lines = [f"Model: {summary['name']}" + (" (bundled)" if summary.get("bundled") else "")]
    for key, title in (("configuration", "Configuration"), ("trained_on", "Trained on"), ("accuracy", "Accuracy")):
        if summary.get(key):
            lines.append(f"{title}: {summary[key]}")
    if summary.get("matches_card") is False:
        lines.append("WARNING: the model file differs from the one its model card describes.")
    if summary.get("card"):
        lines.append(f"Model card: {summary['card']}")
    return "\n".join(lines)
