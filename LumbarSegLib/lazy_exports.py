"""Package attributes loaded on first use, so importing a package (for ``--help``) pulls in no torch."""

from __future__ import annotations

import importlib


def lazy_getattr(package: str, exports: dict[str, str], namespace: dict):
    """A module ``__getattr__`` for ``package``: attribute -> the submodule it lives in (``exports``); each is
    imported on first use and kept in ``namespace`` (the package's globals)."""

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        namespace[name] = value
        return value

    return __getattr__
