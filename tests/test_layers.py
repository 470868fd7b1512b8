"""The layering, checked by a machine (the equivalent of import-linter contracts).

import-linter cannot see our layout: the three source folders install as one package from
three directories, which its file-system walk does not follow. So we parse every module's
imports with ``ast`` and check the rules of STYLE.md:

* the core (``stream/``) never imports plugins or simulators (only the CLI, the top layer,
  may start the simulator);
* pure computation does no I/O: no h5py, zmq, matplotlib, Qt, sockets or files there;
* ZeroMQ only in sources and sinks; Qt only in the viewer plugin;
* simulators never import plugins.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"stream": "sxdm_stream", "plugins": "sxdm_stream.plugins",
           "simulators": "sxdm_stream.simulators"}
PURE = {"geometry", "kernels", "accumulate", "maps", "grid", "scan", "errors", "drift",
        "registration", "particles", "qroi", "roi_suggest", "fits", "analysis", "operando",
        "join"}
IO_PACKAGES = {"h5py", "zmq", "matplotlib", "PySide6", "PyQt5", "PyQt6", "pyqtgraph", "socket"}
QT = {"PySide6", "PyQt5", "PyQt6", "pyqtgraph", "qtpy"}
ZMQ_ALLOWED = {"sxdm_stream.dectris", "sxdm_stream.live", "sxdm_stream.publish",
               "sxdm_stream.sender", "sxdm_stream.recorder",
               "sxdm_stream.simulators.sender"}


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


ALL = list(modules())


def test_every_source_folder_is_seen():
    names = {n for n, _ in ALL}
    assert {"sxdm_stream.geometry", "sxdm_stream.simulators.frames", "sxdm_stream.plugins"} <= names


@pytest.mark.parametrize("name, path", ALL, ids=[n for n, _ in ALL])
def test_module_respects_the_layers(name, path):
    found = imports_of(name, path)
    tops = {i.split(".")[0] for i in found}
    if name.startswith("sxdm_stream.") and not name.startswith(("sxdm_stream.plugins",
                                                                   "sxdm_stream.simulators")):
        if name != "sxdm_stream.cli":
            bad = {i for i in found if i.startswith(("sxdm_stream.plugins", "sxdm_stream.simulators"))}
            assert not bad, f"core module {name} imports {bad}"
    if name.rsplit(".", 1)[-1] in PURE and name.count(".") == 1:
        assert not tops & IO_PACKAGES, f"pure module {name} imports {tops & IO_PACKAGES}"
        bad = {i for i in found if i.startswith(("sxdm_stream.hdf5", "sxdm_stream.overview"))}
        assert not bad, f"pure module {name} imports the outputs {bad}"
    if "zmq" in tops:
        assert name in ZMQ_ALLOWED or name.startswith("sxdm_stream.plugins"), \
            f"{name} imports zmq; sockets belong in sources and sinks"
    if tops & QT:
        assert name.startswith("sxdm_stream.plugins.viewer"), f"{name} imports Qt"
    if name.startswith("sxdm_stream.simulators"):
        assert not any(i.startswith("sxdm_stream.plugins") for i in found)


def test_the_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "geometry.py"
    bad.write_text("import h5py\nfrom .simulators import frames\n")
    found = imports_of("sxdm_stream.geometry", bad)
    assert "h5py" in found and "sxdm_stream.simulators.frames" in found
