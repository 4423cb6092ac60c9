"""Model bundles: both networks, their configuration and provenance, saved with ``torch.save``; and the
registry of the models shipped in ``Resources/Models``.

A bundle is one file (``NAME.pt``), or two (``NAME.localizer.pt`` + ``NAME.xunet.pt``) where one file would
be too large to move around (the ``paper`` model: 16 MB of half-precision weights). Both parts carry the
configuration and provenance, and the SHA-256 of the single-file bundle they were split from, so parts of
two different models are never combined. The files hold only tensors, strings, numbers, lists and dicts,
so they load with ``torch.load(..., weights_only=True)`` (no pickled code runs when a user opens a model).

Shipped models, by name (``--model NAME``): ``cpu`` - narrow networks that segment a clinical CT in seconds
on a laptop CPU (the default on the CPU); ``paper`` - the published widths, for GPUs (the default on CUDA
when it is shipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Defined where torch is not needed (the Slicer panel reads them before PyTorch is installed).
from ..constants import RESOURCES_DIR, default_model_path  # noqa: F401
from ..errors import ModelError
from .networks import CONFIGS, LocalizerUNet, ModelConfig, XUNet, build_networks

SHIPPED_MODELS = {"cpu": "lumbarseg_cpu", "paper": "lumbarseg_paper"}  # name -> file stem in RESOURCES_DIR
FORMAT_VERSION = 1
PARTS = ("localizer", "xunet")


def part_paths(path) -> dict[str, Path]:
    """The two part files of the split bundle ``path`` (``X.pt``, ``X.localizer.pt`` or ``X.xunet.pt``)."""
    path = Path(path)
    stem = path.name[:-3] if path.name.endswith(".pt") else path.name
    for part in PARTS:
        if stem.endswith("." + part):
            stem = stem[: -len(part) - 1]
    return {part: path.with_name(f"{stem}.{part}.pt") for part in PARTS}


def bundle_files(path) -> list[Path] | None:
    """The file(s) holding the bundle ``path``: itself when it is a single-file bundle, its two parts when
    ``path`` names a split bundle (either part, or ``X.pt`` when only the parts exist); None when absent."""
    path = Path(path)
    parts = part_paths(path)
    if path.is_file() and path not in parts.values():
        return [path]
    if all(p.is_file() for p in parts.values()):
        return [parts[k] for k in PARTS]
    return None


def files_sha256(files) -> str:
    """SHA-256 of the model's file(s) read one after the other (for one file: that file's SHA-256)."""
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def shipped_model_path(name: str) -> Path | None:
    """Where the shipped model ``name`` is, when it is installed (single file or split), else None."""
    if name not in SHIPPED_MODELS:
        raise ModelError(f"Unknown shipped model '{name}': choose one of {', '.join(SHIPPED_MODELS)}, or give a file.")
    path = RESOURCES_DIR / f"{SHIPPED_MODELS[name]}.pt"
    files = bundle_files(path)
    return files[0] if files else None


def choose_model(spec: str | None, device: torch.device) -> Path | None:
    """The model file for ``--model``: a shipped model's name or a path; None means the default, which is
    the ``paper`` model on CUDA when it is shipped, else the ``cpu`` model (None: :func:`load_model`'s
    bundled default, so a missing one still gives its clear message). A file named like a shipped model
    is given as a path (``./cpu``)."""
    if spec is None:
        return shipped_model_path("paper") if torch.device(device).type == "cuda" else None
    if spec in SHIPPED_MODELS:
        path = shipped_model_path(spec)
        if path is None:
            installed = [n for n in SHIPPED_MODELS if shipped_model_path(n) is not None]
            raise ModelError(f"The '{spec}' model is not installed in {RESOURCES_DIR} (installed: "
                             f"{', '.join(installed) or 'none'}). Choose an installed one or give a model file.")
        return path
    return Path(spec)


@dataclass
class LumbarSegModel:
    config: ModelConfig
    localizer: LocalizerUNet
    xunet: XUNet
    trained: bool
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    files: list = field(default_factory=list)  # the file(s) the weights came from

    def to(self, device: torch.device) -> "LumbarSegModel":
        """On ``device``, in eval mode and channels-last (the XUNet's pass takes 0.95 s on a 2-core CPU channels-last,
        1.15 s in NCDHW; :func:`.pipeline.network_input` feeds both networks that layout)."""
        for net in (self.localizer, self.xunet):
            net.to(device, memory_format=torch.channels_last_3d).eval()
        return self

    @property
    def name(self) -> str | None:
        """The shipped model's name when the weights are a shipped model's files, else None."""
        for name, stem in SHIPPED_MODELS.items():
            files = bundle_files(RESOURCES_DIR / f"{stem}.pt")
            if files and self.files and [Path(f).resolve() for f in self.files] == [f.resolve() for f in files]:
                return name
        return None

    def describe(self) -> dict:
        """Which model this is, for reports: name, path, files, bytes, SHA-256, configuration. A shipped
        model's path is given inside the installation (``Resources/Models/...``), not on this machine; a
        model file the user gave keeps the path as given."""
        files = [Path(f) for f in self.files]
        path = None
        if self.path:
            inside = RESOURCES_DIR.resolve() in Path(self.path).resolve().parents
            path = (Path(RESOURCES_DIR.parent.name, RESOURCES_DIR.name, Path(self.path).name).as_posix() if inside
                    else str(self.path))
        return {"name": self.name, "path": path,
                "files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files),
                "sha256": files_sha256(files) if files else None, "trained": bool(self.trained),
                "config": self.config.to_dict()}


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


def _half_state(module: torch.nn.Module) -> dict:
    # Weights are stored in half precision to keep the files small; they run in float32.
    return {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
            for k, v in module.state_dict().items()}


def save_model(path, config: ModelConfig, localizer: LocalizerUNet, xunet: XUNet, metadata: dict | None = None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "localizer": _half_state(localizer),
        "xunet": _half_state(xunet),
        # JSON text so arbitrary provenance survives weights_only loading.
        "metadata_json": json.dumps(metadata or {}),
    }
    torch.save(bundle, path)
    return path


def split_bundle(path, out_stem=None) -> list[Path]:
    """Write the single-file bundle ``path`` as ``OUT_STEM.localizer.pt`` + ``OUT_STEM.xunet.pt`` (default:
    beside it) and return the two paths. Each part is about the size of its network's weights."""
    path = Path(path)
    bundle = _read_bundle_file(path)
    if "localizer" not in bundle or "xunet" not in bundle:
        raise ModelError(f"{path} is not a single-file model bundle (nothing to split).")
    sha = files_sha256([path])
    out_stem = Path(out_stem) if out_stem else path.with_suffix("")
    written = []
    for part in PARTS:
        target = out_stem.with_name(f"{out_stem.name}.{part}.pt")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        torch.save({"format_version": FORMAT_VERSION, "config": bundle["config"], "part": part,
                    part: bundle[part], "split_from_sha256": sha,
                    "metadata_json": bundle.get("metadata_json", "{}")}, tmp)
        os.replace(tmp, target)
        written.append(target)
    return written


def set_bundle_metadata(path, metadata: dict) -> list[Path]:
    """Replace the provenance metadata of the bundle ``path`` (in each part of a split one), weights and
    configuration untouched; each file is replaced whole (written beside it, then renamed). The file's
    SHA-256 changes, so a model card written for it must be written again."""
    files = bundle_files(path)
    if files is None:
        raise ModelError(f"Model file not found: {path}")
    for f in files:
        bundle = _read_bundle_file(f)
        bundle["metadata_json"] = json.dumps(metadata)
        tmp = f.with_name(f.name + ".tmp")
        torch.save(bundle, tmp)
        os.replace(tmp, f)
    return files


def bundle_metadata(path) -> dict:
    """The provenance metadata of the bundle ``path`` (without building the networks)."""
    files = bundle_files(path)
    if files is None:
        raise ModelError(f"Model file not found: {path}")
    return json.loads(_read_bundle_file(files[-1]).get("metadata_json", "{}"))


def _read_bundle_file(path: Path) -> dict:
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
        ModelConfig.from_dict(bundle["config"])  # checks the ranges, before any network is built
        return bundle
    except ModelError as exc:  # a configuration out of range (networks.ModelConfig.range_problem)
        raise ModelError(f"{path}: {exc} It is not a usable LumbarSeg model.") from None
    except Exception as exc:  # corrupt file, wrong format, pickled code
        raise ModelError(f"Cannot read model file {path}: {_load_failure(exc)}. Expected a LumbarSeg model "
                         f"bundle (saved by 'lumbarseg train').") from None


def _load_failure(exc: Exception) -> str:
    """Why torch.load refused a file, in one line. torch's refusal of pickled code advises loading with
    ``weights_only`` turned off, which would run whatever code the file holds: that advice is never shown."""
    text = str(exc)
    if "weights only load failed" in text.lower() or "weightsunpickler" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y"
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds pickled Python objects{what}, not only weights, and LumbarSeg never runs code from a "
                f"model file")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _load_state(module: torch.nn.Module, state: dict, what: str, path: Path):
    try:
        module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"{path}: the {what} weights do not fit the network configuration ({exc}).") from None
    broken = [k for k, v in module.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # NaN weights make every output NaN, which would read as "no lumbar spine found"
        raise ModelError(f"{path}: the {what} weights hold values that are not numbers (NaN or infinite) in "
                         f"{len(broken)} tensor(s), e.g. {broken[0]}; the model file is corrupt. Use another model "
                         f"file (or the bundled one).")


def _read_parts(files: list[Path]) -> dict:
    """The two parts of a split bundle as one bundle dict; parts of different models are an error."""
    parts = {}
    for f in files:
        b = _read_bundle_file(f)
        part = b.get("part")
        if part not in PARTS or part not in b or part in parts:
            raise ModelError(f"{f} is not the {' or '.join(PARTS)} part of a split LumbarSeg model.")
        parts[part] = b
    loc, xu = parts["localizer"], parts["xunet"]
    if loc["config"] != xu["config"] or loc.get("split_from_sha256") != xu.get("split_from_sha256"):
        raise ModelError(f"{files[0].name} and {files[1].name} are parts of two different models; "
                         f"use two parts split from the same model.")
    return {"config": xu["config"], "localizer": loc["localizer"], "xunet": xu["xunet"],
            "metadata_json": xu.get("metadata_json", "{}")}


def load_model(path=None, config_name: str = "cpu", allow_untrained: bool = True) -> LumbarSegModel:
    """Load a model bundle (one file, or either part / the stem of a split one); ``path=None`` means the
    bundled default.

    When the bundled default is missing and ``allow_untrained`` is set, return randomly initialised
    networks of ``config_name`` with ``trained=False`` so the pipeline still runs end to end (callers
    must warn loudly). A user-given path that is missing or unreadable is always an error.
    """
    explicit = path is not None
    path = Path(path) if explicit else default_model_path()
    files = bundle_files(path)
    if files is None:
        if explicit:
            parts = part_paths(path)
            if any(p.is_file() for p in parts.values()):
                missing = next(p for p in parts.values() if not p.is_file())
                raise ModelError(f"Model file {path}: its other part {missing.name} is missing (a split model "
                                 f"needs both {' and '.join(p.name for p in parts.values())}).")
            raise ModelError(f"Model file not found: {path}")
        if not allow_untrained:
            raise ModelError(f"The bundled model {path} is missing; reinstall LumbarSeg or pass --model.")
        torch.manual_seed(0)
        config = CONFIGS[config_name]
        localizer, xunet = build_networks(config)
        return LumbarSegModel(config, localizer.eval(), xunet.eval(), trained=False, path=None).to(torch.device("cpu"))
    bundle = _read_bundle_file(files[0]) if len(files) == 1 else _read_parts(files)
    config = ModelConfig.from_dict(bundle["config"])
    localizer, xunet = build_networks(config)
    _load_state(localizer, bundle["localizer"], "localizer", path)
    _load_state(xunet, bundle["xunet"], "XUNet", path)
    metadata = json.loads(bundle.get("metadata_json", "{}"))
    return LumbarSegModel(config, localizer.eval(), xunet.eval(), trained=True, metadata=metadata, path=path,
                          files=files)
