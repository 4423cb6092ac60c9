"""Names, not the paths of the machine that trained a model: for model cards and ``report.json``.

A model's provenance (``lumbarseg train`` metadata: data folders, caches, warm-start bundles, the command
line) holds absolute paths of the training machine, such as ``/home/alice/runs/cache3/phantoms_seed200``.
They mean nothing elsewhere, and they tell who trained where. Every absolute path in such text becomes its
last component (``phantoms_seed200``), which is what identifies a data folder or a bundle; relative paths
and everything else are kept.
"""

from __future__ import annotations

import re

# An absolute POSIX path (/a/b/c) or Windows path (C:\a\b, C:/a/b) inside any text, up to a space or a quote.
_ABSOLUTE = re.compile(r"""(?<![\w.~:/-])(?:[A-Za-z]:[\\/]|/)[^\s'"`,;:()\[\]{}]*""")


def name_only(text: str) -> str:
    """``text`` with every absolute path replaced by its last component."""
    def last_component(match: re.Match) -> str:
        parts = [p for p in re.split(r"[\\/]", match.group(0)) if p]
        return parts[-1] if parts else match.group(0)

    return _ABSOLUTE.sub(last_component, text)


def names_not_paths(value):
    """A copy of ``value`` (JSON-like: dicts, lists, strings, numbers) with :func:`name_only` applied to every
    string, dictionary keys included (``data_dirs`` is keyed by folder)."""
    if isinstance(value, str):
        return name_only(value)
    if isinstance(value, dict):
        return {names_not_paths(k) if isinstance(k, str) else k: names_not_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [names_not_paths(v) for v in value]
    return value
