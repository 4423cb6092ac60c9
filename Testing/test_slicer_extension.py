"""The extension around the module: its CMake files (configured against a stand-in for Slicer's CMake
macros), the parameter node, the PyTorch checks, the self-test with and without torch, and the licence."""

import re
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from conftest import MODULE_FILE, ROOT, load_module, run_python  # noqa: E402  shared helpers


# --------------------------------------------------------------------------------------------------
# CMake: configure the extension against a stand-in for Slicer's macros


SLICER_STUB = r"""
set(Slicer_FOUND 1)
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/cpack.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.13/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.13/qt-scripted-modules)
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  set(out "NAME ${MY_NAME}\n")
  foreach(f ${MY_SCRIPTS})
    if(IS_ABSOLUTE ${f})
      file(RELATIVE_PATH tgt ${CMAKE_CURRENT_BINARY_DIR} ${f})
      set(src ${f})
    else()
      set(tgt ${f})
      set(src ${CMAKE_CURRENT_SOURCE_DIR}/${f})
    endif()
    if(NOT EXISTS ${src})
      message(FATAL_ERROR "missing script ${src}")
    endif()
    string(APPEND out "SCRIPT ${tgt}\n")
  endforeach()
  foreach(f ${MY_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "missing resource ${f}")
    endif()
    string(APPEND out "RESOURCE ${f}\n")
  endforeach()
  file(WRITE ${CMAKE_BINARY_DIR}/manifest.txt "${out}")
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(WRITE ${CMAKE_BINARY_DIR}/unittest.txt "${MY_SCRIPT}")
endfunction()
"""


def test_cmake_extension_configures(tmp_path):
    """The extension configures, and installs LumbarSeg.py with the engine's runtime only (read back from the
    list of scripts CMake hands to Slicer's macro)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    stub = tmp_path / "SlicerStub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(SLICER_STUB)
    (stub / "UseSlicer.cmake").write_text("")
    (stub / "empty.cmake").write_text("")
    (stub / "cpack.cmake").write_text(
        'file(WRITE ${CMAKE_BINARY_DIR}/meta.txt "${EXTENSION_CATEGORY}|${EXTENSION_HOMEPAGE}|'
        '${EXTENSION_ICONURL}|${EXTENSION_SCREENSHOTURLS}|${EXTENSION_CONTRIBUTORS}|${EXTENSION_DESCRIPTION}|'
        '${EXTENSION_DEPENDS}")\n')
    build = tmp_path / "build"
    result = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={stub}",
                             "-DBUILD_TESTING=ON"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = (build / "manifest.txt").read_text(encoding="utf-8").split("\n")
    scripts = {line.split(" ", 1)[1] for line in manifest if line.startswith("SCRIPT ")}
    every = {p.relative_to(ROOT).as_posix() for p in (ROOT / "LumbarSegLib").rglob("*.py")}
    left_out = ("training", "phantoms", "web", "batch")  # not the runtime: never on Slicer's module path
    lib = {rel for rel in every if rel.split("/")[1] not in left_out}
    assert "LumbarSegLib/scene/run.py" in lib and "LumbarSegLib/study/runner.py" in lib
    assert "LumbarSegLib/inference/pipeline.py" in lib and "LumbarSegLib/cli.py" in lib
    assert scripts == {"LumbarSeg.py"} | lib  # the runtime installs beside the module, all of it
    assert not {s for s in scripts if s.split("/")[1:2] and s.split("/")[1] in left_out}
    for rel in lib:
        assert (build / "LumbarSeg" / rel).read_bytes() == (ROOT / rel).read_bytes()
    resources = {line.split(" ", 1)[1] for line in manifest if line.startswith("RESOURCE ")}
    assert resources == {"Resources/Icons/LumbarSeg.png", "Resources/UI/LumbarSeg.ui",
                         "Resources/SegmentationCategoryTypeModifier-LumbarSeg.term.json"}
    # Model bundles with their cards, and the sample CT with its checksum, beside the engine package.
    installed = build / "lib" / "Slicer-5.13" / "qt-scripted-modules" / "Resources"
    for rel in ("Models/lumbarseg_cpu.pt", "Models/lumbarseg_cpu.json", "Models/lumbarseg_cpu.md",
                "SampleData/LumbarSegSampleCT.nrrd", "SampleData/LumbarSegSampleCT.nrrd.sha256"):
        if (ROOT / "Resources" / rel).is_file():
            assert (installed / rel).read_bytes() == (ROOT / "Resources" / rel).read_bytes(), rel
    assert (build / "unittest.txt").read_text(encoding="utf-8") == "LumbarSeg.py"
    meta = (build / "meta.txt").read_text(encoding="utf-8").split("|")
    category, homepage, icon, screenshot, contributors, description, depends = meta
    assert category == "Segmentation" and contributors and "L1-L5" in description
    assert "not a medical device" in description and "developers" in contributors
    assert depends == "PyTorch"  # torch comes through the PyTorch extension's PyTorchUtils
    assert homepage.startswith("https://") and icon.endswith("LumbarSeg/Resources/Icons/LumbarSeg.png")
    assert screenshot.endswith("docs/screenshot.png")
    for url_path in ("LumbarSeg/Resources/Icons/LumbarSeg.png", "docs/screenshot.png"):
        assert (ROOT / url_path).is_file()
    assert "trained on synthetic CTs" not in description and "real" in description


# The Extensions Index's checker (Slicer/ExtensionsIndex scripts/check_description_files.py) reads the top-level
# CMakeLists.txt as plain text with these patterns; CMake variables are not expanded there.
INDEX_PROJECT = r'project\s*\(\s*([^\s\)\n\r]+)'
INDEX_ICONURL = r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)'
INDEX_SCREENSHOTURLS = r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)'
# Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: required keys, allowed keys (no others).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "build_subdirectory",
                                      "enabled", "tier"}
REPOSITORY = "https://github.com/lumbarseg/SlicerLumbarSeg"


def test_extensions_index_reads_the_cmake_file_and_the_catalog_entry_as_it_must():
    import json

    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    flags = re.IGNORECASE | re.MULTILINE
    project = re.findall(INDEX_PROJECT, text, flags)[0]
    entries = sorted((ROOT / "ExtensionsIndex").glob("*.json"))
    assert [e.name for e in entries] == [f"{project}.json"]  # the entry's file name is the extension's name
    assert not project.lower().startswith("slicer")  # the Index: the extension name does not start with Slicer,
    entry = json.loads(entries[0].read_text(encoding="utf-8"))
    repository_name = entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert repository_name == "Slicer" + project  # ... the repository's name does
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_ALLOWED
    assert entry["build_dependencies"] == ["PyTorch"] == re.findall(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', text)[0].split()
    assert entry["category"] == re.findall(r'set\(EXTENSION_CATEGORY "([^"]*)"\)', text)[0]
    assert entry["scm_url"] == REPOSITORY and entry["scm_revision"] == "main" and entry["tier"] == 1
    raw = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    icon = re.findall(INDEX_ICONURL, text, flags)
    screenshots = re.findall(INDEX_SCREENSHOTURLS, text, flags)
    assert icon and screenshots, "the checker finds no icon or screenshot URL"
    for url in [icon[0], *screenshots[0].split()]:
        assert url.startswith(raw) and "${" not in url, url
        assert (ROOT / url[len(raw):]).is_file(), url  # the file the URL will serve once pushed
    assert re.findall(r'set\(EXTENSION_HOMEPAGE "([^"]*)"\)', text)[0] == REPOSITORY + "#readme"


# --------------------------------------------------------------------------------------------------
# Parameter node, PyTorch checks, the self-test with and without torch, licence


def test_torch_version_requirement():
    from LumbarSegLib.scene.dependencies import torch_version_problem

    assert torch_version_problem("2.13.0+cpu") is None
    assert torch_version_problem("2.1.0") is None
    assert "needs torch>=2.1" in torch_version_problem("1.13.1+cu117")
    assert "not installed" in torch_version_problem(None)
    assert load_module().torchProblem() is None  # this environment has torch 2.x


SELF_TEST = """
    import sys, unittest, logging, importlib.util
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    for name in ("qt", "ctk", "slicer.ScriptedLoadableModule"):
        sys.modules[name] = None
    {block_torch}
    spec = importlib.util.spec_from_file_location("LumbarSeg", {module!r})
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    print("torchProblem:", m.torchProblem())
    test = m.LumbarSegTest("runTest")
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(test)
    print("skip reason:", getattr(test, "modelSkipReason", None))
    print("torch imported:", "torch" in sys.modules and sys.modules["torch"] is not None)
    {after}
    sys.exit(0 if result.wasSuccessful() else 1)
"""

# Makes every "import torch" fail, as on the extension build servers (importlib.util.find_spec raises
# ValueError for a module set to None in sys.modules, so a finder that reports it absent is used instead).
BLOCK_TORCH = """
    import importlib.abc, importlib.machinery
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError("No module named 'torch'", name="torch")
            return None
    sys.meta_path.insert(0, NoTorch())
    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "torch" else _find_spec(name, *a)
"""


def test_self_test_passes_without_torch_and_says_why_the_model_part_was_skipped():
    pytest.importorskip("slicer")
    after = """
    try:
        m.LumbarSegLogic().installDependencies()
    except RuntimeError as exc:
        print("install:", exc)
    """
    code = SELF_TEST.format(block_torch=textwrap.indent(textwrap.dedent(BLOCK_TORCH), "    ").strip(),
                            module=str(MODULE_FILE), after=textwrap.indent(textwrap.dedent(after), "    ").strip())
    result = run_python(code, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "torchProblem: PyTorch is not installed." in out
    assert "Skipped the model part of the LumbarSeg self-test: PyTorch is not installed." in out
    assert "Scene logic passed" in out and "skip reason: PyTorch is not installed." in out
    assert "torch imported: False" in out
    assert "install: the PyTorch extension is not installed" in out  # no PyTorchUtils outside Slicer
    assert "OK" in out


@pytest.mark.slow
def test_self_test_runs_the_model_part_when_torch_is_there():
    pytest.importorskip("slicer")
    code = SELF_TEST.format(block_torch="", module=str(MODULE_FILE), after="")
    result = run_python(code, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "skip reason: None" in out
    for step in ("Scene logic passed", "Full flow passed", "Background run and cancel passed"):
        assert step in out, step


def test_each_self_test_method_skips_without_torch_when_unittest_runs_it_directly():
    """The build servers' unittest runs every test_* method on its own, bypassing runTest's torch guard (bug 3):
    without torch the model methods must be skipped, saying why, and the scene-logic one must pass."""
    pytest.importorskip("slicer")
    code = f"""
    import sys, unittest, importlib.util
    for name in ("qt", "ctk", "slicer.ScriptedLoadableModule"):
        sys.modules[name] = None
    {textwrap.indent(textwrap.dedent(BLOCK_TORCH), "    ").strip()}
    spec = importlib.util.spec_from_file_location("LumbarSeg", {str(MODULE_FILE)!r})
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    suite = unittest.TestLoader().loadTestsFromTestCase(m.LumbarSegTest)
    names = sorted(t._testMethodName for t in suite)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    print("methods:", names)
    print("skipped:", sorted(t._testMethodName for t, _ in result.skipped))
    print("reasons:", sorted(set(r for _, r in result.skipped)))
    sys.exit(0 if result.wasSuccessful() else 1)
    """
    result = run_python(code, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "methods: ['test_LumbarSeg_BackgroundRunAndCancel', 'test_LumbarSeg_FullFlow', " \
           "'test_LumbarSeg_SceneLogic']" in out
    assert "skipped: ['test_LumbarSeg_BackgroundRunAndCancel', 'test_LumbarSeg_FullFlow']" in out
    assert "needs PyTorch: PyTorch is not installed." in out


def test_terminology_registers_from_a_source_checkout(tmp_path):
    """In a source checkout LumbarSegLib is one folder up from LumbarSeg.py and only importable after
    ensureLibImportable() (bug 6): registerTerminology must work there, with Slicer's terminology logic."""
    pytest.importorskip("slicer")
    checkout = tmp_path / "SlicerLumbarSeg"
    shutil.copytree(ROOT / "LumbarSeg", checkout / "LumbarSeg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "LumbarSegLib", checkout / "LumbarSegLib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "Resources", checkout / "Resources", ignore=shutil.ignore_patterns("Models"))
    code = f"""
        import sys, importlib.util
        sys.modules["qt"] = None
        # Only the checkout may provide LumbarSegLib: not this repository's editable install.
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                            and "editable" not in getattr(f, "__name__", "").lower()]
        # (a virtual environment inside the repository keeps its site-packages: slicer-core, torch ...)
        sys.path[:] = [p for p in sys.path if not p.startswith({str(ROOT)!r}) or "site-packages" in p]
        assert importlib.util.find_spec("LumbarSegLib") is None
        import types
        import slicer
        logic = slicer.vtkSlicerTerminologiesModuleLogic()  # Slicer's own terminology logic (real)
        # Inside Slicer it is reached through the application's module registry, which slicer-core has not.
        slicer.modules = types.SimpleNamespace(terminologies=types.SimpleNamespace(logic=lambda: logic))
        spec = importlib.util.spec_from_file_location("LumbarSeg", {str(checkout / "LumbarSeg" / "LumbarSeg.py")!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        context = m.registerTerminology()
        print("context:", context)
        print("lib:", sys.modules["LumbarSegLib"].__file__)
    """
    result = run_python(code, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    from LumbarSegLib.constants import TERMINOLOGY_CONTEXT

    assert f"context: {TERMINOLOGY_CONTEXT}" in result.stdout
    assert f"lib: {checkout / 'LumbarSegLib'}" in result.stdout


def test_no_second_segmentations_logic_doubles_the_converter_rules():
    """Every vtkSlicerSegmentationsModuleLogic registers the converter rules again (bug 7): inside Slicer the
    Segmentations module's logic has registered them; headless one logic is made once for all scenes."""
    pytest.importorskip("slicer")
    code = """
        import slicer
        from LumbarSegLib.scene.scene import ensure_segmentations_logic
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        for scene in (slicer.vtkMRMLScene(), slicer.vtkMRMLScene()):
            ensure_segmentations_logic(scene)
        print("headless:", len(factory.GetConverterRules()))
    """
    result = run_python(code, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    code_app = """
        import slicer
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        own = slicer.vtkSlicerSegmentationsModuleLogic()  # as Slicer's Segmentations module makes at start-up
        own.SetMRMLScene(slicer.vtkMRMLScene())
        rules = len(factory.GetConverterRules())
        from LumbarSegLib.scene.scene import ensure_segmentations_logic
        ensure_segmentations_logic(slicer.vtkMRMLScene())
        print("app:", rules, len(factory.GetConverterRules()))
    """
    result_app = run_python(code_app, cwd="/")
    assert result_app.returncode == 0, result_app.stderr[-3000:]
    single = int(result_app.stdout.split("app:")[1].split()[0])
    assert single > 0
    assert f"headless: {single}" in result.stdout
    assert f"app: {single} {single}" in result_app.stdout


def test_help_says_dicom_seg_export_needs_quantitative_reporting_on_older_slicer():
    parent = SimpleNamespace()
    load_module().LumbarSeg(parent)
    assert "QuantitativeReporting" in parent.helpText and "5.8" in parent.helpText


def test_license_is_the_apache_2_0_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_reload_reloads_the_library_lower_layers_first():
    """Developer mode's Reload runs reloadLibrary(): every loaded LumbarSegLib module is executed again (an
    edit to the engine takes effect without restarting Slicer), lower layers before the ones using them.
    In a fresh interpreter: reloading the engine under this test process would split its classes in two."""
    script = textwrap.dedent("""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("LumbarSegModule", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        session_module = module.slicerLib("session")
        before = session_module.StudySession
        names = module.reloadLibrary()
        assert session_module.StudySession is not before, "not reloaded"
        assert sys.modules["LumbarSegLib.scene.session"] is session_module
        assert names.index("LumbarSegLib.errors") < names.index("LumbarSegLib.study.engine_process") \\
            < names.index("LumbarSegLib.scene.engine_job") < names.index("LumbarSegLib.scene.session")
        print("ok", len(names))
        """)
    result = subprocess.run([sys.executable, "-c", script, str(MODULE_FILE)], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]


