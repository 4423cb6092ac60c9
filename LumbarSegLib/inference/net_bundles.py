"""The small networks' model files (stage 3, the finder): configuration, fp16 weights and provenance in one
file, read without running pickled code, loaded once per process and file.

Each kind of file is a :class:`BundleKind`: its format tag, its bundled file name, how to build its network
from the stored configuration, and the command-line option that asks for it (named in errors).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class BundleKind:
    what: str  # in messages: "per-vertebra", "finder"
    format: str  # the tag a file of this kind carries
    file_name: str  # the bundled file, under Resources/Models
    build: Callable  # (config dict) -> an untrained network; raises on an implausible configuration
    option: str  # the option that asks for it ("--refine")
    docs: str  # where to read how to train it

    def default_path(self) -> Path:
        from ..constants import RESOURCES_DIR

        return RESOURCES_DIR / self.file_name

    def save(self, state: dict, path, metadata: dict) -> Path:
        """A trained phase's state (``config``, ``weights``) as a shippable file with its provenance."""
        path = Path(path)
        bundle = {"format": self.format, "config": state["config"], "metadata_json": json.dumps(metadata),
                  "weights": {k: v.half() if v.is_floating_point() else v for k, v in state["weights"].items()}}
        tmp = path.with_suffix(".tmp")
        torch.save(bundle, tmp)
        tmp.replace(path)
        return path

    def choose(self, wanted, path=None):
        """(network, description) a run uses: ``wanted`` True (it must be there), False (none) or None (the
        bundled file when it is there)."""
        from ..errors import InputError

        if wanted is False:
            return None
        target = Path(path) if path else self.default_path()
        if not target.exists():
            if wanted:
                raise InputError(f"{self.option} needs the {self.what} model {target.name}, which is not in "
                                 f"{target.parent}; run without {self.option}, or train it ({self.docs}).")
            return None
        return _load_cached(self, str(target), target.stat().st_mtime_ns)

    def load(self, path=None):
        """(network, metadata) of a file of this kind; None when ``path`` is None and none is bundled."""
        from ..errors import ModelError
        from .models import _load_failure

        if path is None:
            path = self.default_path()
            if not path.exists():
                return None
        path = Path(path)
        try:
            bundle = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt, another kind of file, pickled code
            raise ModelError(f"Cannot read the {self.what} model {path}: {_load_failure(exc)}.") from None
        return self.network(bundle, path)

    def network(self, bundle, path):
        """(network in eval mode, metadata) of a file's contents ``bundle`` as loaded from ``path``."""
        from ..errors import ModelError
        from .models import _load_failure, _load_state

        try:
            if not isinstance(bundle, dict) or bundle.get("format") != self.format:
                fmt = bundle.get("format") if isinstance(bundle, dict) else type(bundle).__name__
                raise ValueError(f"format {fmt!r}, not {self.format}")
            net = self.build(bundle["config"])
        except Exception as exc:  # another kind of file, implausible configuration
            raise ModelError(f"Cannot read the {self.what} model {path}: {_load_failure(exc)}.") from None
        _load_state(net, bundle["weights"], self.what, path)
        return net.eval(), json.loads(bundle.get("metadata_json") or "{}")


@functools.lru_cache(maxsize=4)
def _load_cached(kind: BundleKind, path: str, _mtime_ns: int):
    from .models import files_sha256

    net, meta = kind.load(path)
    return net, {"name": Path(path).name, "sha256": files_sha256([Path(path)]), "metadata": meta}
