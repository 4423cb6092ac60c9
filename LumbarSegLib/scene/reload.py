"""Reload the library for the Slicer module's "Reload" (Developer mode), lower layers first."""

from __future__ import annotations

import importlib
import sys

LAYERS = ("errors", "constants", "io", "inference", "measures", "results", "study", "scene")  # lowest first


def reload_library() -> list:
    """Reload every loaded ``LumbarSegLib`` module, lower layers first, so that an edit to the engine or the
    scene layer takes effect without restarting Slicer. Returns the names reloaded, in order."""
    def order(name):
        part = name.split(".")[1] if "." in name else ""
        return (LAYERS.index(part) + 1 if part in LAYERS else len(LAYERS) + 1, name.count("."), name)

    names = sorted((n for n in sys.modules if n == "LumbarSegLib" or n.startswith("LumbarSegLib.")), key=order)
    for name in names:
        if sys.modules.get(name) is not None:
            importlib.reload(sys.modules[name])
    return names
