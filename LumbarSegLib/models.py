"""Model bundles: both networks, their configuration and provenance, saved as one ``torch.save`` file.

The file holds only tensors, strings, numbers, lists and dicts so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs when a user opens a model file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ModelError
from .networks import CONFIGS, LocalizerUNet, ModelConfig, XUNet, build_networks

from .model_card import default_model_path  # noqa: F401  (defined where torch is not needed)

FORMAT_VERSION = 1


@dataclass
class LumbarSegModel:
    config: ModelConfig
    localizer: LocalizerUNet
    xunet: XUNet
    trained: bool
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    def to(self, device: torch.device) -> "LumbarSegModel":
        self.localizer.to(device).eval()
        self.xunet.to(device).eval()
        return self


def resolve_device(name: "str | torch.device" = "auto") -> torch.device:
    """'auto' picks CUDA when PyTorch sees a GPU, else the CPU; an explicit device that is absent is an error.

    Apple's MPS is used only when asked for by name: PyTorch's MPS backend still lacks or falls back on
    some 3D operations, so it is never chosen silently. A ``torch.device`` is taken as given.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but PyTorch sees no CUDA GPU here "
                         "(use --device cpu or auto).")
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "mps" and not has_mps:
        raise ModelError("--device mps was asked for, but Apple MPS is not available (use --device cpu or auto).")
    if name not in ("cpu", "cuda", "mps"):
        raise ModelError(f"Unknown device '{name}': choose auto, cpu, cuda or mps.")
    return torch.device(name)


def save_model(path, config: ModelConfig, localizer: LocalizerUNet, xunet: XUNet, metadata: dict | None = None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        # Weights are stored in half precision to keep the bundled file small; they run in float32.
        "localizer": {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
                      for k, v in localizer.state_dict().items()},
        "xunet": {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
                  for k, v in xunet.state_dict().items()},
        # JSON text so arbitrary provenance survives weights_only loading.
        "metadata_json": json.dumps(metadata or {}),
    }
    torch.save(bundle, path)
    return path


def _load_state(module: torch.nn.Module, state: dict, what: str, path: Path):
    try:
        module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"{path}: the {what} weights do not fit the network configuration ({exc}).") from None


def load_model(path=None, config_name: str = "cpu", allow_untrained: bool = True) -> LumbarSegModel:
    """Load a model bundle; ``path=None`` means the bundled default.

    When the bundled default is missing and ``allow_untrained`` is set, return randomly initialised
    networks of ``config_name`` with ``trained=False`` so the pipeline still runs end to end (callers
    must warn loudly). A user-given path that is missing or unreadable is always an error.
    """
    explicit = path is not None
    path = Path(path) if explicit else default_model_path()
    if not path.is_file():
        if explicit:
            raise ModelError(f"Model file not found: {path}")
        if not allow_untrained:
            raise ModelError(f"The bundled model {path} is missing; reinstall LumbarSeg or pass --model.")
        torch.manual_seed(0)
        config = CONFIGS[config_name]
        localizer, xunet = build_networks(config)
        return LumbarSegModel(config, localizer.eval(), xunet.eval(), trained=False, path=None).to(torch.device("cpu"))
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
        config = ModelConfig.from_dict(bundle["config"])
    except Exception as exc:  # corrupt file, wrong format, pickled code
        raise ModelError(f"Cannot read model file {path}: {exc}. Expected a LumbarSeg model bundle "
                         f"(saved by 'lumbarseg train').") from None
    localizer, xunet = build_networks(config)
    _load_state(localizer, bundle["localizer"], "localizer", path)
    _load_state(xunet, bundle["xunet"], "XUNet", path)
    metadata = json.loads(bundle.get("metadata_json", "{}"))
    return LumbarSegModel(config, localizer.eval(), xunet.eval(), trained=True, metadata=metadata, path=path)
