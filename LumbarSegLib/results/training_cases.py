"""Which CTs a model was trained on, by content, so a score on one of them is never taken for a held-out one.

``lumbarseg train`` records each real training case's CT file in the bundle's metadata
(``training_data.case_hashes``: case id, file name, size and SHA-256); ``tools/add_training_hashes.py``
adds them to a bundle trained before that. When the CT being segmented (and scored against a reference) is
byte for byte one of them, the console and ``report.json`` say so: a DSC on a case the model has seen
measures how well it fits, not how well it generalises. Earlier bundles a model was warm-started from
(``initialised_from``) count too. Phantoms are not hashed: they are synthetic, and their seeds are recorded.

Only the file's bytes are compared: a CT re-saved in another format or re-compressed is not recognised.
"""

from __future__ import annotations

from pathlib import Path

from .model_card import sha256

HASHES_KEY = "case_hashes"


def case_hash(case_id: str, ct_path) -> dict:
    """The record of one training case's CT file (``ct_file`` is its name, never the training machine's path)."""
    path = Path(ct_path)
    return {"case": case_id, "ct_file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path)}


def hash_cases(cases) -> list[dict]:
    """Records for ``cases``, (case id, CT path) pairs or objects with ``case_id`` and ``ct``."""
    pairs = [(c.case_id, c.ct) if hasattr(c, "case_id") else tuple(c) for c in cases]
    return [case_hash(case_id, ct) for case_id, ct in pairs]


def recorded_hashes(metadata: dict | None) -> list[dict]:
    """Every training-case record of a model, through its warm-start chain."""
    out: list[dict] = []
    node = metadata or {}
    while node:
        out += list((node.get("training_data") or {}).get(HASHES_KEY) or [])
        node = node.get("initialised_from") or {}
    return out


def training_case_of(metadata: dict | None, ct_path) -> dict | None:
    """The training case whose CT file is ``ct_path`` byte for byte, or None (also for a DICOM folder).
    The file is hashed only when its size matches a recorded case."""
    path = Path(ct_path)
    records = recorded_hashes(metadata)
    if not records or not path.is_file():
        return None
    size = path.stat().st_size
    candidates = [r for r in records if r.get("bytes") in (None, size)]
    if not candidates:
        return None
    digest = sha256(path)
    return next((dict(r) for r in candidates if r.get("sha256") == digest), None)


def training_data_note(record: dict) -> str:
    return (f"This CT was in the model's training data (training case {record['case']}, the same file by SHA-256): "
            f"scores on it are not a held-out estimate.")
