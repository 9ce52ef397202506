"""The Slicer extension layout and the three module shells, checked without 3D Slicer.

Full Slicer cannot run here, so these tests pin what can be pinned outside it: the shared static check
(``check_slicer_shells.py``), that each ``.ui`` is valid Qt Designer XML whose bound widgets can really be
connected by Slicer's parameter-node wrapper, the CMake lists, the icons, the terminology file, and the
Slicer-side helpers of ``MSKSegLib`` and :mod:`mskseg.slicer_support`. The module files themselves are imported with stand-ins
for the few Slicer parts that need the GUI (``ScriptedLoadableModule``, ``parameterNodeWrapper``), over the
real MRML classes of slicer-core, so that their parameter-node annotations, their logic, the panel behaviour
they take from ``TaskWidgetMixin`` (driven through stand-in widgets) and their Slicer self-tests are exercised.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib.util
import json
import pathlib
import re
import struct
import subprocess
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

import mskseg
from conftest import REPO, SHARED, require
import MSKSegLib
from MSKSegLib import dependencies, selftest
from MSKSegLib import module as lib_module
from mskseg import slicer_support
from mskseg.errors import CancelledError, MSKSegError
from mskseg.terminology import slicer_term_json

MODULES = ("SarcopeniaSeg", "BoneSeg", "SpineSeg")
TASKS = {"SarcopeniaSeg": "sarcopenia", "BoneSeg": "bone", "SpineSeg": "spine"}
TITLES = {"SarcopeniaSeg": "Sarcopenia Segmentation", "BoneSeg": "Bone Segmentation", "SpineSeg": "Spine Segmentation"}
COMMON_FIELDS = {"inputVolume", "modelCard", "device", "outputSegmentation", "exportFolder", "overwrite"}
SARCOPENIA_FIELDS = {"height_m", "weight_kg", "sex", "cutoffSet", "slabSlices", "muscleGroups", "tissueMethod", "levelNames"}
#: Top-level imports a module file may have: Slicer starts every module at start-up, so nothing heavy.
ALLOWED_TOP_IMPORTS = {"importlib.util", "os", "pathlib", "sys", "typing", "__future__", "vtk", "slicer",
                       "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "slicer.util",
                       "mskseg", "mskseg.mrml", "MSKSegLib"}


def _ui(module: str) -> ET.Element:
    return ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()


def _bound_widgets(module: str) -> dict[str, ET.Element]:
    """SlicerParameterName -> widget element of the module's .ui."""
    bound = {}
    for widget in _ui(module).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound["".join(prop.itertext()).strip()] = widget
    return bound


def _source_tree(module: str) -> ast.Module:
    path = REPO / module / f"{module}.py"
    return ast.parse(path.read_text(), str(path))


# ------------------------------------------------------------------------------ the shared static check
def test_shared_static_check_reports_no_problem():
    tool = require(SHARED / "tools" / "check_slicer_shells.py")
    result = subprocess.run([sys.executable, str(tool)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "problems 0" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0


# ------------------------------------------------------------------------------ .ui files
@pytest.mark.parametrize("module", MODULES)
def test_ui_is_designer_xml_with_a_qmrmlwidget_root_named_after_the_module(module):
    root = _ui(module)
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == module
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectNames"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= custom, "a ctk/qMRML widget is not declared"


@pytest.mark.parametrize("module", MODULES)
def test_every_node_selector_receives_the_scene(module):
    """A qMRMLNodeComboBox not connected to mrmlSceneChanged stays empty in Slicer."""
    root = _ui(module)
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == module and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors and selectors <= connected


@pytest.mark.parametrize("module", MODULES)
def test_ui_binds_every_parameter_but_the_model_card(module):
    """modelCard has run-time choices, which connectGui cannot bind: the widget syncs it in code."""
    expected = COMMON_FIELDS | (SARCOPENIA_FIELDS if module == "SarcopeniaSeg" else set())
    assert set(_bound_widgets(module)) == expected - {"modelCard"}


@pytest.mark.parametrize("module", MODULES)
def test_ui_holds_the_widgets_the_shared_widget_code_uses(module):
    names = {w.get("name") for w in _ui(module).iter("widget")}
    used_by_mixin = {node.attr for path in sorted((REPO / "MSKSegLib").glob("*.py"))
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                     and node.value.attr == "ui"}
    assert set(MSKSegLib.TaskWidgetMixin.COMMON_WIDGETS) == used_by_mixin
    assert used_by_mixin <= names
    assert {"applyButton", "inputVolumeSelector", "outputSegmentationSelector"} <= used_by_mixin | names


# ------------------------------------------------------------------------------ CMake
@pytest.mark.parametrize("module", MODULES)
def test_module_cmakelists_lists_its_files_and_registers_its_tests(module):
    text = (REPO / module / "CMakeLists.txt").read_text()
    assert re.search(rf"set\(MODULE_NAME {module}\)", text)
    for entry in ("${MODULE_NAME}.py", "Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert entry in text
    assert re.search(r"slicerMacroBuildScriptedModule\(.*NAME \$\{MODULE_NAME\}.*WITH_GENERIC_TESTS.*\)", text, re.S)
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    assert testing and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing.group(1)
    for relative in ("{m}.py", "Resources/Icons/{m}.png", "Resources/UI/{m}.ui"):
        assert (REPO / module / relative.format(m=module)).is_file()


def test_top_cmakelists_declares_the_extension_and_installs_the_core():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(MSKSeg\)", text, re.M)
    fields = dict(re.findall(r'set\((EXTENSION_[A-Z]+) "([^"]*)"\)', text))
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert fields.get(f"EXTENSION_{field}"), f"EXTENSION_{field} missing or empty"
    assert fields["EXTENSION_CATEGORY"] == "Segmentation"
    assert fields["EXTENSION_CONTRIBUTORS"] == "MSKSeg contributors"
    assert "PyTorch" in fields["EXTENSION_DEPENDS"].split()
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                     "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                     "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    assert "mskseg/*.py" in text and "mskseg/*.json" in text
    assert "Resources/Models/*" in text and "Resources/MSKSeg.term.json" in text
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in text
    assert "MSKSegLib/*.py" in text  # the Slicer-side library, installed beside the modules like the core


# ------------------------------------------------------------------------------ module sources
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_nothing_heavy_at_top_level(module):
    tree = _source_tree(module)
    imported = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module)
    assert set(imported) <= ALLOWED_TOP_IMPORTS, set(imported) - ALLOWED_TOP_IMPORTS
    # the sys.path fallback for developer mode must run before mskseg or MSKSegLib is imported
    first_mskseg = next(n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                        and any(name.lower().startswith("mskseg") for name in
                                ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module])))
    fallback = next(n.lineno for n in tree.body if isinstance(n, ast.If) and "sys.path.insert" in ast.unparse(n))
    assert fallback < first_mskseg


def _method_dumps(module: str) -> dict[str, str]:
    """``Class.method`` -> AST dump of every method in ``<module>.py``, with the module's name made generic."""
    dumps = {}
    for cls in (n for n in _source_tree(module).body if isinstance(n, ast.ClassDef)):
        for function in (n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            dumps[f"{cls.name}.{function.name}"] = ast.dump(function).replace(module, "<M>")
    return dumps


def test_no_method_is_written_in_two_module_shells():
    """Shared behaviour lives once, in the mixins of MSKSegLib; a module file keeps its own."""
    first_seen: dict[str, str] = {}
    for module in MODULES:
        for name, dump in _method_dumps(module).items():
            assert dump not in first_seen, f"{name} repeats {first_seen[dump]}: move it to MSKSegLib"
            first_seen[dump] = name
    # bone and spine have no tool of their own: their widget, logic and test classes only set data
    for module in ("BoneSeg", "SpineSeg"):
        assert set(_method_dumps(module)) == {f"{module}.__init__"}


def test_slicer_side_imports_neither_slicer_nor_qt_nor_torch_at_import_time():
    heavy = "{'slicer', 'torch', 'monai', 'qt', 'ctk', 'SimpleITK'}"
    code = ("import sys, mskseg.slicer_support, mskseg.worker, MSKSegLib, MSKSegLib.background; "
            f"print(sorted({heavy} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ icons, terminology
def _png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_are_distinct_128_pixel_pngs():
    paths = [REPO / m / "Resources" / "Icons" / f"{m}.png" for m in MODULES] + [REPO / "Resources" / "MSKSeg.png"]
    for path in paths:
        assert _png_size(path) == (128, 128), path
    assert len({p.read_bytes() for p in paths}) == len(paths)


def test_committed_terminology_file_matches_the_terminology_table():
    committed = (REPO / "Resources" / "MSKSeg.term.json").read_text()
    assert committed == json.dumps(slicer_term_json(), indent=2) + "\n", (
        "Resources/MSKSeg.term.json is stale: regenerate it with "
        "mskseg.terminology.write_slicer_term_json('Resources/MSKSeg.term.json')")
    assert slicer_support.terminology_file() == REPO / "Resources" / "MSKSeg.term.json"


def test_core_package_imports_no_qt_ctk_or_slicer_app():
    """The core runs from the command line and pytest: Qt and the Slicer application belong to MSKSegLib."""
    forbidden = re.compile(r"^\s*(import|from)\s+(qt|ctk)\b|(?<![\w.])(qt|ctk)\.[A-Za-z]|\bslicer\.app\b|"
                           r"\bslicer\.util\b", re.M)
    offenders = [f"{path.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}: {match.group(0).strip()}"
                 for path in sorted((REPO / "mskseg").rglob("*.py"))
                 for text in [path.read_text()] for match in forbidden.finditer(text)]
    assert offenders == []


# ------------------------------------------------------------------------------ mskseg.slicer_support, MSKSegLib
def test_missing_python_packages_names_only_the_absent_requirements():
    requirements = [("json", "json-is-stdlib"), ("no_such_module_mskseg", "nosuch>=1.0"), ("numpy", "numpy>=1")]
    assert slicer_support.missing_python_packages(requirements) == ["nosuch>=1.0"]


def test_requirements_follow_pyproject_without_slicers_own_packages():
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in declared}
    listed = {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower() for _, r in slicer_support.REQUIREMENTS}
    assert listed == names - {"numpy", "simpleitk", "torch"}
    assert {"numpy", "simpleitk", "vtk", "torch"}.isdisjoint(listed)


def test_protected_constraints_pin_the_installed_numpy_exactly():
    import numpy

    lines = slicer_support.protected_constraints()
    assert f"numpy=={numpy.__version__}" in lines
    assert slicer_support.protected_constraints(["no-such-distribution-mskseg"]) == []


def test_task_package_lookup_does_not_import_the_package(monkeypatch):
    from mskseg import tasks

    monkeypatch.delitem(sys.modules, "mskseg.cardtask", raising=False)
    assert tasks.package_available("bone") is True
    assert "mskseg.cardtask" not in sys.modules
    assert tasks.package_available("no_such_task") is False
    assert MSKSegLib.pipeline_unavailable_tooltip("sarcopenia") == (
        "available once MSKSeg's 'sarcopenia' task (body composition at L3 of a CT: muscle, fat, SMI, flags, "
        "report) is installed")


def test_progress_relay_drives_the_bar_and_stops_after_cancel():
    bar, label, events = SimpleNamespace(value=0), SimpleNamespace(text=""), []
    relay = MSKSegLib.ProgressRelay(bar, label, process_events=lambda: events.append(1))
    assert relay(0.25, "inference") is True
    assert (bar.value, label.text, len(events)) == (25, "inference", 1)
    assert relay(1.7) is True and bar.value == 100  # clipped
    relay.cancel()
    assert relay(0.5) is False
    assert len(events) == 3


def test_inputs_are_checked_before_any_work(tmp_path):
    card = tmp_path / "card.json"
    card.write_text("{}")
    with pytest.raises(MSKSegError, match="No input volume"):
        slicer_support.require_inputs(None, str(card))
    with pytest.raises(MSKSegError, match="No model"):
        slicer_support.require_inputs(object(), "")
    with pytest.raises(MSKSegError, match="does not exist"):
        slicer_support.require_inputs(object(), str(tmp_path / "absent.json"))
    slicer_support.require_inputs(object(), str(card))


def test_export_folder_must_be_chosen_and_be_a_folder(tmp_path):
    for unset in (None, "", ".", pathlib.Path()):
        with pytest.raises(MSKSegError, match="No export folder"):
            slicer_support.require_export_folder(unset)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(MSKSegError, match="is a file"):
        slicer_support.require_export_folder(tmp_path / "file.txt")
    assert slicer_support.require_export_folder(tmp_path / "new") == tmp_path / "new"


def test_dicom_seg_is_exported_only_for_volumes_loaded_from_dicom():
    class Node:
        def __init__(self, uids):
            self.uids = uids

        def GetAttribute(self, name):
            return self.uids if name == "DICOM.instanceUIDs" else None

    assert slicer_support.default_export_formats(Node(None)) == ("seg.nrrd", "csv")
    assert "dicom-seg" in slicer_support.default_export_formats(Node("1.2.3 1.2.4"))


def test_task_function_is_a_registry_lookup_that_names_a_missing_function():
    from mskseg.tasks import get_task

    assert MSKSegLib.task_function("sarcopenia", "find_l3") is get_task("sarcopenia").slicer_function("find_l3")
    with pytest.raises(MSKSegError, match="no Slicer function 'find_l3'"):
        MSKSegLib.task_function("bone", "find_l3")
    with pytest.raises(MSKSegError, match="no task named 'knee'"):
        MSKSegLib.task_function("knee", "find_l3")


# ------------------------------------------------------------------------------ module files, imported
@dataclasses.dataclass
class _Choice:
    choices: list


@dataclasses.dataclass
class _WithinRange:
    minimum: float
    maximum: float


def _wrapper_stub(cls):
    """Stand-in for Slicer's parameterNodeWrapper: resolves the hints exactly as it does, records them, and
    wraps a scripted-module node like the real wrapper (its ``parameterNode``)."""
    cls.hints = typing.get_type_hints(cls, include_extras=True)
    cls.__init__ = lambda self, parameterNode: setattr(self, "parameterNode", parameterNode)
    return cls


class _Base:
    def __init__(self, parent=None):
        self.parent = parent


class _LogicBase(_Base):
    """Stand-in for ScriptedLoadableModuleLogic: its getParameterNode gives the scene's scripted-module node."""

    def getParameterNode(self):
        return "scripted module node"


class _SelfTestBase(unittest.TestCase):
    """Stand-in for ScriptedLoadableModuleTest: records what ``delayDisplay`` would show."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.displayed = []

    def delayDisplay(self, message, msec=None):
        self.displayed.append(message)


@pytest.fixture
def slicer_stubs(monkeypatch):
    """slicer-core's real ``slicer`` package plus stand-ins for its GUI-only parts."""
    slicer = pytest.importorskip("slicer", reason="needs the pip package slicer-core")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package has no vtkMRMLScene (install slicer-core)")
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = _Base
    slm.ScriptedLoadableModuleLogic, slm.ScriptedLoadableModuleTest = _LogicBase, _SelfTestBase
    slm.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                   "ScriptedLoadableModuleTest"]
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper, pnw.Choice, pnw.WithinRange = _wrapper_stub, _Choice, _WithinRange
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    connections = []
    monkeypatch.setattr(slicer, "app", SimpleNamespace(connect=lambda *a: connections.append(a),
                                                       processEvents=lambda: None), raising=False)
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    return SimpleNamespace(slicer=slicer, scene=scene, connections=connections)


def _load_module(module: str, monkeypatch) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module, REPO / module / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module, loaded)
    spec.loader.exec_module(loaded)
    return loaded


#: Which data types Slicer's GUI connectors (slicer/parameterNodeWrapper/guiConnectors.py) bind to a widget.
def _connector_accepts(widget_class: str, hint) -> bool:
    base, extras = (typing.get_args(hint)[0], typing.get_args(hint)[1:]) \
        if typing.get_origin(hint) is typing.Annotated else (hint, ())
    if widget_class == "QCheckBox":
        return base is bool
    if widget_class == "QSpinBox":
        return base is int
    if widget_class == "QDoubleSpinBox":
        return base is float
    if widget_class == "QComboBox":  # needs a Choice annotation
        return base in (int, float, str, bool) and any(isinstance(e, _Choice) for e in extras)
    if widget_class == "ctkPathLineEdit":  # needs a pathlib type, not str
        return isinstance(base, type) and issubclass(base, pathlib.PurePath)
    if widget_class == "qMRMLNodeComboBox":
        return isinstance(base, type) and base.__name__.startswith("vtkMRML")
    return widget_class == "QLineEdit" and base is str


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_hints_resolve_and_every_binding_has_a_gui_connector(module, slicer_stubs, monkeypatch):
    loaded = _load_module(module, monkeypatch)
    hints = getattr(loaded, f"{module}ParameterNode").hints
    expected = COMMON_FIELDS | (SARCOPENIA_FIELDS if module == "SarcopeniaSeg" else set())
    assert set(hints) == expected
    assert hints["inputVolume"] is slicer_stubs.slicer.vtkMRMLScalarVolumeNode
    assert hints["outputSegmentation"] is slicer_stubs.slicer.vtkMRMLSegmentationNode
    for name, widget in _bound_widgets(module).items():
        assert _connector_accepts(widget.get("class"), hints[name]), f"{widget.get('class')} cannot bind {name}"
    node_class = getattr(loaded, f"{module}ParameterNode")
    assert node_class.device == "auto" and node_class.overwrite is False
    assert issubclass(node_class, MSKSegLib.TaskParameters) and node_class.modelCard == ""
    device_choices = typing.get_args(hints["device"])[1].choices
    assert device_choices[0] == "auto" and "cpu" in device_choices


def test_sarcopenia_parameter_defaults_follow_bodycomp(slicer_stubs, monkeypatch):
    loaded = _load_module("SarcopeniaSeg", monkeypatch)
    node_class, hints = loaded.SarcopeniaSegParameterNode, loaded.SarcopeniaSegParameterNode.hints
    assert node_class.cutoffSet == "Martin 2013" and node_class.slabSlices == 1 and node_class.muscleGroups is False
    assert typing.get_args(hints["cutoffSet"])[1].choices == [
        "Prado 2008", "Martin 2013", "Derstine 2018", "Yoon 2021", "Kamo 2019"]
    assert node_class.height_m == 0.0 and typing.get_args(hints["height_m"])[1] == _WithinRange(0.0, 2.5)


@pytest.mark.parametrize("module", MODULES)
def test_module_description_cites_data_licences_and_loads_terminology(module, slicer_stubs, monkeypatch):
    loaded = _load_module(module, monkeypatch)
    parent = SimpleNamespace()
    getattr(loaded, module)(parent)
    assert parent.title == TITLES[module]
    assert parent.categories == ["Segmentation.MSKSeg"]
    assert parent.contributors == ["MSKSeg contributors"]
    assert "offline" in parent.helpText and "CPU or GPU" in parent.helpText
    for citation in ("TotalSegmentator", "CC BY 4.0", "VerSe", "CC BY-SA 4.0", "MONAI", "highdicom", "dcmqi"):
        assert citation in parent.acknowledgementText, citation
    assert parent.helpText.rstrip().endswith(MSKSegLib.HELP_FOOTER.rstrip())
    assert ("startupCompleted()", lib_module.load_terminology) in slicer_stubs.connections
    # the shared behaviour comes first in each class, before Slicer's base class
    for suffix, mixin in (("Widget", MSKSegLib.TaskWidgetMixin), ("Logic", MSKSegLib.TaskLogicMixin),
                          ("Test", MSKSegLib.TaskTestMixin)):
        cls = getattr(loaded, f"{module}{suffix}")
        assert cls.__mro__[1:3] in ((mixin, _Base), (mixin, _LogicBase), (mixin, _SelfTestBase)), cls.__mro__


def test_sarcopenia_help_cites_windows_and_every_cutoff_set(slicer_stubs, monkeypatch):
    loaded = _load_module("SarcopeniaSeg", monkeypatch)
    parent = SimpleNamespace()
    loaded.SarcopeniaSeg(parent)
    for text in ("Prado 2008", "Martin 2013", "Derstine 2018", "Yoon 2021", "Kamo 2019", "52.4", "38.5",
                 "45.4", "39.33", "40.31", "-29..+150", "-190..-30", "-150..-50"):
        assert text in parent.helpText, text


#: Module of the sarcopenia task's Slicer functions (declared in ``mskseg.sarcopenia.task``).
SARCOPENIA_SCENE = "mskseg.sarcopenia.scene"


@pytest.fixture
def fake_app(monkeypatch):
    """A stand-in ``mskseg.app`` that records the calls the module logic makes."""
    calls = []
    app = types.ModuleType("mskseg.app")
    app.list_model_cards = lambda task: calls.append(("list_model_cards", task)) or []
    app.device_report = lambda preference: calls.append(("device_report", preference)) or f"device: {preference}"

    def run_segmentation(scene, volume_node, card_path, device="auto", progress=None, segmentation_node=None):
        calls.append(("run_segmentation", scene, volume_node, card_path, device, progress, segmentation_node))
        return "new segmentation node"

    def export_results(scene, segmentation_node, volume_node, out_dir, formats=("seg.nrrd",), overwrite=False):
        calls.append(("export_results", scene, segmentation_node, volume_node, out_dir, formats, overwrite))
        return [f"{out_dir}/a.seg.nrrd"]

    app.run_segmentation, app.export_results = run_segmentation, export_results
    class Node(str):
        """A stand-in node: its name, and attributes that are accepted."""

        def SetAttribute(self, name, value):  # noqa: N802 (MRML's name)
            pass

        def GetID(self):  # noqa: N802
            return f"{self}-id"

    def process(scene, volume_node, *, segmentation_node=None, progress=None, device="auto", model=None):
        """The sarcopenia task's whole run (``mskseg.sarcopenia.scene.process``): the model card is an option."""
        calls.append(("run_segmentation", scene, volume_node, model, device, progress, segmentation_node))
        return Node("new segmentation node"), Node("measurements")

    app.process = process
    monkeypatch.setitem(sys.modules, "mskseg.app", app)
    monkeypatch.setattr(mskseg, "app", app, raising=False)
    monkeypatch.setitem(sys.modules, SARCOPENIA_SCENE, app)  # the sarcopenia task's Slicer functions
    monkeypatch.setitem(sys.modules, "mskseg.bone.scene", app)  # the bone task's Slicer functions
    return calls


@pytest.mark.parametrize("module", MODULES)
def test_logic_passes_nodes_and_choices_to_mskseg_app(module, slicer_stubs, fake_app, monkeypatch, tmp_path):
    logic = getattr(_load_module(module, monkeypatch), f"{module}Logic")()
    card = tmp_path / "card.json"
    card.write_text("{}")
    progress = MSKSegLib.ProgressRelay(SimpleNamespace(value=0), process_events=lambda: None)
    assert logic.modelCards() == []
    assert logic.deviceReport("cpu") == "device: cpu"
    assert logic.process("volume", str(card), "cpu", "old segmentation", progress=progress) == "new segmentation node"
    assert fake_app[:3] == [("list_model_cards", TASKS[module]), ("device_report", "cpu"),
                            ("run_segmentation", slicer_stubs.scene, "volume", str(card), "cpu", progress,
                             "old segmentation")]
    volume = MSKSegLib.add_synthetic_case(["skeletal_muscle"], slicer_stubs.scene)[0]
    assert logic.export("segmentation", volume, tmp_path / "out", overwrite=True) == [f"{tmp_path / 'out'}/a.seg.nrrd"]
    assert fake_app[3] == ("export_results", slicer_stubs.scene, "segmentation", volume, str(tmp_path / "out"),
                           ("seg.nrrd", "csv"), True)
    parameters = logic.getParameterNode()
    assert isinstance(parameters, getattr(sys.modules[module], f"{module}ParameterNode"))
    assert parameters.parameterNode == "scripted module node"


@pytest.mark.parametrize("module", MODULES)
def test_logic_refuses_missing_inputs_before_calling_mskseg_app(module, slicer_stubs, fake_app, monkeypatch):
    logic = getattr(_load_module(module, monkeypatch), f"{module}Logic")()
    with pytest.raises(MSKSegError, match="No input volume"):
        logic.process(None, "")
    with pytest.raises(MSKSegError, match="no segmentation to export"):
        logic.export(None, "volume", "/tmp")
    with pytest.raises(MSKSegError, match="No export folder"):
        logic.export("segmentation", "volume", pathlib.Path())
    assert fake_app == []


def test_synthetic_case_gives_one_labelled_segment_per_class_on_the_volume_grid(slicer_stubs):
    from mskseg import mrml

    classes = ["skeletal_muscle", "subcutaneous_fat", "vertebrae_L3"]
    volume_node, segmentation_node = MSKSegLib.add_synthetic_case(classes, slicer_stubs.scene)
    labelmap, labels = mrml.segmentation_node_to_labelmap(segmentation_node, volume_node)
    assert labels == {1: "skeletal_muscle", 2: "subcutaneous_fat", 3: "vertebrae_L3"}
    assert labelmap.array.shape == (16, 48, 64)
    assert [int((labelmap.array == v).sum()) for v in (1, 2, 3)] == [12 * 14 * 3] * 3
    assert tuple(volume_node.GetSpacing()) == (0.8, 0.8, 2.5)


def test_terminology_is_loaded_once_for_the_three_modules(slicer_stubs, monkeypatch):
    loaded_paths = []
    logic = SimpleNamespace(LoadTerminologyFromFile=lambda path: loaded_paths.append(path) or "MSKSeg context")
    monkeypatch.setattr(slicer_stubs.slicer, "modules", SimpleNamespace(terminologies=SimpleNamespace(
        logic=lambda: logic)), raising=False)
    monkeypatch.setattr(lib_module, "_loaded_terminology", None)
    assert [lib_module.load_terminology() for _ in MODULES] == ["MSKSeg context"] * 3
    assert loaded_paths == [str(REPO / "Resources" / "MSKSeg.term.json")]


def _require_torch_installed() -> None:
    """Without torch, ensure_dependencies turns to the PyTorch extension first (not testable here)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch installed")


@pytest.fixture
def pip_calls(slicer_stubs, monkeypatch):
    """Records ``slicer.util.pip_install`` calls (with the constraints file's text) instead of running pip."""
    calls = []

    def pip_install(args):
        constraints = pathlib.Path(args[args.index("--constraint") + 1]).read_text()
        calls.append((list(args), constraints))

    monkeypatch.setattr(slicer_stubs.slicer.util, "pip_install", pip_install)
    return calls


def test_dependencies_are_installed_only_after_consent_with_numpy_pinned(slicer_stubs, pip_calls, monkeypatch):
    import numpy

    _require_torch_installed()
    answers = []
    monkeypatch.setattr(slicer_stubs.slicer.util, "confirmOkCancelDisplay", lambda *a: answers.pop(0))
    still_missing = [["monai>=1.3"], ["monai>=1.3"], []]
    monkeypatch.setattr(dependencies, "missing_python_packages", lambda *a: still_missing.pop(0))
    answers.append(False)
    with pytest.raises(MSKSegError, match="declined"):
        dependencies.ensure_dependencies(ask=True)
    assert pip_calls == []
    answers.append(True)
    assert dependencies.ensure_dependencies(ask=True) == ["monai>=1.3"]
    (args, constraints), = pip_calls
    assert args[0] == "monai>=1.3" and "--constraint" in args
    assert f"numpy=={numpy.__version__}" in constraints.splitlines()


def test_dependency_check_installs_nothing_when_all_is_present(slicer_stubs, pip_calls, monkeypatch):
    _require_torch_installed()
    monkeypatch.setattr(dependencies, "missing_python_packages", lambda *a: [])
    monkeypatch.setattr(slicer_stubs.slicer.util, "confirmOkCancelDisplay",
                        lambda *a: pytest.fail("asked although nothing is missing"))
    assert dependencies.ensure_dependencies(ask=True) == []
    assert pip_calls == []


def test_a_package_pip_could_not_install_is_named(slicer_stubs, pip_calls, monkeypatch):
    _require_torch_installed()
    monkeypatch.setattr(dependencies, "missing_python_packages", lambda *a: ["highdicom>=0.22"])
    with pytest.raises(MSKSegError, match="could not be installed: highdicom>=0.22"):
        dependencies.ensure_dependencies(ask=False)
    assert len(pip_calls) == 1


# ------------------------------------------------------------------------------ the panel, through stand-in widgets
class _FakeComboBox:
    """The parts of a QComboBox the Model box code uses: items with data, current index and data."""

    def __init__(self, items=()):
        self.items = list(items)
        self.currentIndex = 0 if self.items else -1
        self.toolTip = ""

    @property
    def count(self):
        return len(self.items)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if self.currentIndex >= 0 else None

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def addItem(self, text, data):
        self.items.append((text, data))


def _fake_ui(module: str) -> SimpleNamespace:
    """Stand-ins for the .ui widgets the panel code reads and writes (names checked against the .ui above)."""
    names = set(MSKSegLib.TaskWidgetMixin.COMMON_WIDGETS) | (
        {"findL3Button", "measureButton"} if module == "SarcopeniaSeg" else set())
    ui = SimpleNamespace(**{name: SimpleNamespace(enabled=None, toolTip="", text="", value=0, baseName="")
                            for name in names})
    ui.modelCardComboBox = _FakeComboBox([("Bundled model", "/models/bundled.card.json")])
    return ui


class _Volume:
    def __init__(self, name="CT 1"):
        self.name = name

    def GetName(self):
        return self.name


class _RecordingLogic:
    """A logic that records its calls: ``workerOptions`` gives options (or raises ``outcome`` when it is an
    error), ``loadResult`` gives ``outcome`` (the new segmentation node)."""

    def __init__(self, task, outcome):
        self.TASK, self.outcome, self.calls = task, outcome, []

    def workerOptions(self, parameters):
        self.calls.append(("workerOptions", parameters.inputVolume, parameters.modelCard, parameters.device))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return ["--device", parameters.device]

    def loadResult(self, volumeNode, folder):
        self.calls.append(("loadResult", volumeNode, folder))
        return self.outcome


class _FakeBackgroundRun:
    """Stand-in for ``MSKSegLib.background.BackgroundRun``: records how the panel made it; the test then plays
    the worker's part (:meth:`finish_with`)."""

    def __init__(self, task, volume_node, options, *, progress_bar, status_label=None, on_done=None, on_failed=None,
                 on_finished=None):
        self.task, self.volume_node, self.options = task, volume_node, options
        self.progress_bar, self.status_label = progress_bar, status_label
        self.on_done, self.on_failed, self.on_finished = on_done, on_failed, on_finished
        self.started = self.cancelled = False
        self.runs.append(self)

    def start(self):
        self.started = True
        return self

    def cancel(self):
        self.cancelled = True
        self.status_label.text = "Cancelled."
        self.on_finished()

    def finish_with(self, folder=None, failure=None):
        if folder is not None:
            self.on_done(folder)
        else:
            self.on_failed(*failure)
        self.on_finished()


@pytest.fixture
def background_runs(monkeypatch):
    """The background runs the panel starts (stand-ins: no process is started)."""
    from MSKSegLib import background

    runs = []
    monkeypatch.setattr(background, "BackgroundRun", type("Run", (_FakeBackgroundRun,), {"runs": runs}))
    return runs


@pytest.fixture
def error_displays(slicer_stubs, monkeypatch):
    """Replaces ``slicer.util.tryWithErrorDisplay`` (a Qt message box) by a recorder that re-raises."""
    shown = []

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as error:
            shown.append((message, error))
            raise

    monkeypatch.setattr(slicer_stubs.slicer.util, "tryWithErrorDisplay", try_with_error_display)
    return shown


def _panel(module: str, monkeypatch, *, volume=True, card="/models/bundled.card.json", output=None,
           outcome=None, pipeline_ready=False):
    """A ``<M>Widget`` as its setup() leaves it, with stand-in widgets, parameter node and logic."""
    widget = getattr(_load_module(module, monkeypatch), f"{module}Widget")(SimpleNamespace(isEntered=True))
    widget.ui = _fake_ui(module)
    widget.logic = _RecordingLogic(TASKS[module], outcome)
    widget.logic.progress_bar = widget.ui.progressBar
    widget._parameterNode = SimpleNamespace(inputVolume=_Volume() if volume else None, modelCard=card,
                                            device="cpu", outputSegmentation=output)
    widget.pipelineReady = pipeline_ready
    widget._dependenciesReady = True
    return widget


@pytest.mark.parametrize("module", MODULES)
def test_widget_creates_the_logic_of_its_own_module(module, slicer_stubs, monkeypatch):
    loaded = _load_module(module, monkeypatch)
    widget = getattr(loaded, f"{module}Widget")(SimpleNamespace(isEntered=False))
    assert type(widget.createLogic()) is getattr(loaded, f"{module}Logic")
    assert widget.logic is None and widget._parameterNode is None and not widget.running


@pytest.mark.parametrize("module", MODULES)
def test_apply_needs_a_volume_and_a_model_card_but_not_the_task_package(module, slicer_stubs, monkeypatch):
    widget = _panel(module, monkeypatch, pipeline_ready=False)
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is True
    assert widget.ui.applyButton.toolTip == widget.APPLY_TOOLTIP
    assert (widget.ui.cancelButton.enabled, widget.ui.exportButton.enabled, widget.ui.editButton.enabled) == \
        (False, False, False)

    widget._parameterNode.modelCard = ""
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is False
    assert widget.ui.applyButton.toolTip == MSKSegLib.NO_MODEL_CARD_TOOLTIP

    widget._parameterNode.modelCard, widget._parameterNode.inputVolume = "/models/bundled.card.json", None
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is False


@pytest.mark.parametrize("module", MODULES)
def test_output_is_named_after_the_volume_and_the_model_box_fills_the_parameter_node(module, slicer_stubs,
                                                                                      monkeypatch):
    widget = _panel(module, monkeypatch, card="")
    widget._onParameterNodeModified()
    assert widget._parameterNode.modelCard == "/models/bundled.card.json"
    assert widget.ui.outputSegmentationSelector.baseName == f"CT 1 {widget.OUTPUT_NAME_SUFFIX}"
    assert widget.OUTPUT_NAME_SUFFIX != MSKSegLib.TaskWidgetMixin.OUTPUT_NAME_SUFFIX
    widget._parameterNode.modelCard = "/home/me/own.card.json"  # a user's own card joins the list
    widget.syncModelCard()
    assert widget.ui.modelCardComboBox.currentData == "/home/me/own.card.json"
    assert widget.ui.modelCardComboBox.items[-1] == ("own.card", "/home/me/own.card.json")


@pytest.mark.parametrize("module", MODULES)
def test_apply_runs_the_task_in_the_background_and_loads_its_result(module, slicer_stubs, error_displays,
                                                                    background_runs, monkeypatch):
    new_node = SimpleNamespace(GetName=lambda: "CT 1 result")
    widget = _panel(module, monkeypatch, output="corrected node", outcome=new_node)
    widget.onApplyButton()
    volume = widget._parameterNode.inputVolume
    run, = background_runs
    assert (run.task, run.volume_node, run.options, run.started) == (TASKS[module], volume, ["--device", "cpu"], True)
    assert run.progress_bar is widget.ui.progressBar and run.status_label is widget.ui.statusLabel
    assert widget.logic.calls == [("workerOptions", volume, "/models/bundled.card.json", "cpu")]
    assert widget.running and widget.ui.cancelButton.enabled and not widget.ui.applyButton.enabled
    assert not widget.ui.exportButton.enabled  # nothing to export while the run goes on

    widget._parameterNode.inputVolume = _Volume("CT 2")  # the user selects another volume meanwhile
    run.finish_with(folder=pathlib.Path("/tmp/result"))
    assert widget.logic.calls[-1] == ("loadResult", volume, pathlib.Path("/tmp/result"))  # the run's own volume
    assert widget._parameterNode.outputSegmentation is new_node
    assert widget.ui.statusLabel.text == f"Done: 'CT 1 result'. {widget.APPLY_DONE_HINT}"
    assert not widget.running and widget.ui.applyButton.enabled and widget.ui.exportButton.enabled
    assert error_displays == []


@pytest.mark.parametrize("module", MODULES)
def test_a_refused_failed_or_cancelled_apply_keeps_the_previous_segmentation(module, slicer_stubs, error_displays,
                                                                            background_runs, monkeypatch):
    refusal = MSKSegError("The model card is invalid.", "choose another model")
    widget = _panel(module, monkeypatch, output="corrected node", outcome=refusal)
    with pytest.raises(MSKSegError):
        widget.onApplyButton()
    assert error_displays == [(widget.APPLY_FAILURE, refusal)] and background_runs == []

    boxes = []
    monkeypatch.setattr(slicer_stubs.slicer.util, "errorDisplay", lambda text, **kw: boxes.append((text, kw)),
                        raising=False)
    widget.logic.outcome = "new node"
    widget.onApplyButton()
    background_runs[-1].finish_with(failure=("L3 is not in the field of view", "use --allow-fallback"))
    assert boxes == [(f"{widget.APPLY_FAILURE}\n\nL3 is not in the field of view",
                      {"detailedText": "hint: use --allow-fallback"})]
    assert widget.ui.statusLabel.text == widget.APPLY_FAILURE

    widget.onApplyButton()
    assert widget.running
    widget.onCancelButton()
    assert background_runs[-1].cancelled and widget.ui.statusLabel.text == "Cancelled."
    assert widget._parameterNode.outputSegmentation == "corrected node"
    assert not any(call[0] == "loadResult" for call in widget.logic.calls)
    assert not widget.running and widget.ui.applyButton.enabled is True


def test_worker_options_are_the_panel_choices_in_the_tasks_own_command_line(slicer_stubs, monkeypatch, tmp_path):
    from mskseg.tasks import get_task
    from mskseg.worker import task_options

    logic = _load_module("SarcopeniaSeg", monkeypatch).SarcopeniaSegLogic()
    volume = SimpleNamespace(GetAttribute=lambda name: "17" if name == "MSKSeg.L3.Index" else None)
    parameters = SimpleNamespace(inputVolume=volume, slabSlices=3, tissueMethod="rules", device="cpu",
                                 muscleGroups=True, modelCard="", levelNames="", cutoffSet="Prado 2008")
    logic.shownSliceIndex = lambda node: None  # the views are not on the volume: Find L3's slice is used
    options = task_options(get_task("sarcopenia"), logic.workerOptions(parameters))
    assert (options["level_index"], options["slab"], options["method"], options["device"],
            options["muscle_groups"]) == (17, 3, "rules", "cpu", True)
    logic.shownSliceIndex = lambda node: 21  # the slice the user moved the views to wins
    assert task_options(get_task("sarcopenia"), logic.workerOptions(parameters))["level_index"] == 21
    parameters.levelNames = " T12,L3 "  # level names typed in the panel win over the slice shown
    options = task_options(get_task("sarcopenia"), logic.workerOptions(parameters))
    assert options["levels"] == ["T12", "L3"] and options["level_index"] is None
    cohort = task_options(get_task("sarcopenia"), logic.cohortOptions(parameters))  # a cohort: names, not a slice
    assert cohort["levels"] == ["T12", "L3"] and cohort["cutoff_set"] == "Prado 2008" and cohort["slab"] == 3
    parameters.levelNames = ""
    assert task_options(get_task("sarcopenia"), logic.cohortOptions(parameters))["level_index"] is None

    card = tmp_path / "bone.card.json"
    card.write_text("{}")
    bone = _load_module("BoneSeg", monkeypatch).BoneSegLogic()
    parameters = SimpleNamespace(inputVolume=volume, modelCard=str(card), device="cuda")
    options = task_options(get_task("bone"), bone.workerOptions(parameters))
    assert (options["model_card"], options["device"], options["method"]) == (str(card), "cuda", "auto")
    # BoneSeg runs its rules without a card: no card is no error, the rules run
    options = task_options(get_task("bone"), bone.workerOptions(SimpleNamespace(inputVolume=volume, modelCard="",
                                                                                  device="cpu")))
    assert options["model_card"] is None and options["device"] == "cpu"
    with pytest.raises(MSKSegError, match="No input volume"):
        bone.workerOptions(SimpleNamespace(inputVolume=None, modelCard="", device="cpu"))
    spine = _load_module("SpineSeg", monkeypatch).SpineSegLogic()  # a card task still needs its card
    with pytest.raises(MSKSegError, match="No model"):
        spine.workerOptions(SimpleNamespace(inputVolume=volume, modelCard="", device="cpu"))


@pytest.mark.parametrize("pipeline_ready", [False, True])
def test_find_l3_and_measure_wait_for_the_body_composition_pipeline(pipeline_ready, slicer_stubs, monkeypatch):
    widget = _panel("SarcopeniaSeg", monkeypatch, output="segmentation", pipeline_ready=pipeline_ready)
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is True  # never gated on the package
    for button in (widget.ui.findL3Button, widget.ui.measureButton):
        assert button.enabled is pipeline_ready
        unavailable = button.toolTip == MSKSegLib.pipeline_unavailable_tooltip("sarcopenia")
        assert unavailable is not pipeline_ready
    widget._parameterNode.outputSegmentation = None
    widget.updateButtonStates()
    assert widget.ui.measureButton.enabled is False
    assert widget.ui.findL3Button.enabled is pipeline_ready


def test_sarcopenia_apply_needs_no_model_card_once_the_pipeline_is_installed(slicer_stubs, monkeypatch):
    widget = _panel("SarcopeniaSeg", monkeypatch, pipeline_ready=True)
    widget._parameterNode.modelCard = ""  # the HU rules need no card
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is True and widget.ui.applyButton.toolTip == widget.APPLY_TOOLTIP
    widget._parameterNode.inputVolume = None
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is False


def test_bone_apply_needs_no_model_card_once_the_pipeline_is_installed(slicer_stubs, monkeypatch):
    widget = _panel("BoneSeg", monkeypatch, pipeline_ready=True)
    widget.logic.MODEL_CARD_OPTIONAL = sys.modules["BoneSeg"].BoneSegLogic.MODEL_CARD_OPTIONAL
    widget._parameterNode.modelCard = ""  # the rules need no card
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is True and widget.ui.applyButton.toolTip == widget.APPLY_TOOLTIP
    widget = _panel("SpineSeg", monkeypatch, pipeline_ready=True)
    widget.logic.MODEL_CARD_OPTIONAL = sys.modules["SpineSeg"].SpineSegLogic.MODEL_CARD_OPTIONAL
    widget._parameterNode.modelCard = ""  # a card task waits for its card
    widget.updateButtonStates()
    assert widget.ui.applyButton.enabled is False


def test_the_model_box_lists_segmentation_cards_only():
    from mskseg import app

    names = [c.name for c in app.list_model_cards("sarcopenia")]
    assert "sarcopenia-l3-detector" not in names  # runs inside Find L3, cannot segment a volume itself
    assert all(c.architecture["name"].startswith("monai.") for c in app.list_model_cards("sarcopenia"))


# ------------------------------------------------------------------------------ the modules' Slicer self-tests
@pytest.mark.parametrize("module", MODULES)
def test_module_self_test_passes_on_slicer_core(module, slicer_stubs, monkeypatch, tmp_path):
    """Reload and Test, headless: real export through mskseg.app on the synthetic case; no model is run."""
    monkeypatch.setattr(selftest.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(dependencies, "ensure_dependencies", lambda ask=True: [])
    from mskseg import app

    monkeypatch.setattr(app, "list_model_cards", lambda task, dirs=None: [])
    test = getattr(_load_module(module, monkeypatch), f"{module}Test")()
    slicer_stubs.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "left over from a previous test")
    test.runTest()
    assert test.displayed == [f"No bundled {TASKS[module]} model: run test skipped"]
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert any(name.endswith(".seg.nrrd") for name in written) and any(name.endswith(".csv") for name in written)
    # setUp cleared the scene before each test: only the last test's (empty) scene is left
    assert slicer_stubs.scene.GetFirstNodeByName("left over from a previous test") is None


def test_self_test_fails_when_a_logic_runs_without_a_volume(slicer_stubs, monkeypatch):
    """The self-test can fail: a logic that does not refuse a missing input is caught."""
    loaded = _load_module("BoneSeg", monkeypatch)

    class CarelessLogic(loaded.BoneSegLogic):
        def process(self, *args, **kwargs):
            return None

    test = loaded.BoneSegTest("test_process_refuses_missing_input")
    test.LOGIC = CarelessLogic
    with pytest.raises(AssertionError):
        test.test_process_refuses_missing_input()
