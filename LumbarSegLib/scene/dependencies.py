"""The Python packages the module needs inside Slicer, what is wrong with them, and installing them.

Nothing here imports torch, SimpleITK, numpy or scipy: it must work (and say what is missing) when they are
not installed. torch comes through Slicer's PyTorch extension (PyTorchUtils, which picks the build that fits
the GPU driver, or the CPU build); the others through pip.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

try:  # Slicer's translation function (Slicer >= 5.4); the text itself elsewhere
    from slicer.i18n import tr as _
except ImportError:
    def _(text):
        return text

TORCH_REQUIREMENT = ">=2.1"  # handed to PyTorchUtils; the engine needs torch 2.x (torch.cuda.OutOfMemoryError)
PYTHON_REQUIREMENTS = {  # import name -> pip requirement; torch is installed through the PyTorch extension
    "torch": "torch" + TORCH_REQUIREMENT,
    "SimpleITK": "SimpleITK>=2.3",
    "scipy": "scipy>=1.10",
    "numpy": "numpy>=1.24",
}


def missing_packages() -> list[str]:
    """Import names of required Python packages that are not installed (nothing is imported)."""
    return [name for name in PYTHON_REQUIREMENTS if importlib.util.find_spec(name) is None]


def torch_version_problem(version, requirement: str = TORCH_REQUIREMENT) -> str | None:
    """Why the installed torch ``version`` cannot be used (None when it meets ``requirement``)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        return _("PyTorch is not installed.")
    try:
        base = Version(Version(str(version)).base_version)  # "2.13.0+cpu" -> 2.13.0
    except InvalidVersion:
        return _("PyTorch reports an unreadable version ({version}).").format(version=version)
    if base not in SpecifierSet(requirement):
        return _("PyTorch {version} is installed; LumbarSeg needs torch{requirement}.").format(
            version=version, requirement=requirement)
    return None


def torch_problem() -> str | None:
    """Why the model cannot run here (None when PyTorch is importable and recent enough); imports nothing."""
    if importlib.util.find_spec("torch") is None:
        return _("PyTorch is not installed.")
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return torch_version_problem(version)


def install_dependencies(status, pip_install) -> None:
    """Install torch through the PyTorch extension (PyTorchUtils, with the version requirement), then any other
    missing package with ``pip_install`` (``slicer.util.pip_install``); ``status(text)`` shows progress."""
    problem = torch_problem()
    if problem:
        try:
            import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS) picks the right CUDA/CPU build
        except ImportError:
            raise RuntimeError(_("the PyTorch extension is not installed. Install 'PyTorch' from the Extensions "
                                 "Manager and restart Slicer.")) from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        status(_("Installing PyTorch ({requirement}): {reason}").format(requirement=TORCH_REQUIREMENT,
                                                                        reason=problem))
        torch = torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError(_("the PyTorch extension did not install PyTorch"))
        status(_("PyTorch {version} installed.").format(version=torch.__version__))
    for name in missing_packages():
        if name != "torch":
            status(_("Installing {package}...").format(package=name))
            pip_install(PYTHON_REQUIREMENTS[name])
    importlib.invalidate_caches()

