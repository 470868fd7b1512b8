"""The layering of the house, checked by a machine (the equivalent of import-linter contracts).

import-linter cannot see our layout: the three source folders install as one package from
three directories, which its file-system walk does not follow. So every module's imports
(module level and inside functions) are parsed with ``ast`` and checked against prefix rules:

* each sub-package of the core may import only the layers below it (:data:`ALLOWED`):
  errors/messages/version -> core -> analysis -> config -> pipeline; sources and sinks on top
  of those; runtime on top of everything but the CLI; the CLI on top of all;
* pure computation (core, analysis, pipeline) does no I/O: no h5py, zmq, matplotlib, Qt,
  sockets or threads;
* ZeroMQ only in sources, sinks and the runtime; Qt only in the viewer plugin;
* the core never imports plugins or simulators (only the CLI, the top layer, may start the
  simulator); simulators never import plugins or the CLI;
* no import cycle between modules, counting imports inside functions.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"stream": "sxdm_stream", "plugins": "sxdm_stream.plugins",
           "simulators": "sxdm_stream.simulators"}
BASE = {"errors", "messages", "version"}
#: sub-package (or top-level module) of sxdm_stream -> what of sxdm_stream it may import
ALLOWED = {
    "errors": set(), "version": set(), "messages": {"errors"},
    "protocols": BASE,
    "core": BASE,
    "analysis": BASE | {"core"},
    "config": BASE | {"core", "analysis", "sources"},   # sources: to read mask files
    "pipeline": BASE | {"core", "analysis", "config"},
    "sources": BASE | {"core", "config"},
    "sinks": BASE | {"core", "analysis", "config", "pipeline"},
    "runtime": BASE | {"core", "analysis", "config", "pipeline", "sources", "sinks", "protocols"},
    "cli": BASE | {"core", "analysis", "config", "pipeline", "sources", "sinks", "runtime",
                   "protocols", "plugins", "simulators"},
}
PURE = {"core", "analysis", "pipeline"}
IO_PACKAGES = {"h5py", "zmq", "matplotlib", "PySide6", "PyQt5", "PyQt6", "pyqtgraph", "socket",
               "threading", "hdf5plugin"}
QT = {"PySide6", "PyQt5", "PyQt6", "pyqtgraph", "qtpy"}
ZMQ_PLACES = ("sxdm_stream.sources", "sxdm_stream.sinks", "sxdm_stream.runtime",
              "sxdm_stream.plugins", "sxdm_stream.simulators")


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


def layer(name: str) -> str | None:
    """The sub-package of ``sxdm_stream`` a module belongs to (None for the package itself)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


ALL = list(modules())
NAMES = {n for n, _ in ALL}


def test_every_source_folder_is_seen():
    assert {"sxdm_stream.core.geometry", "sxdm_stream.runtime.processor",
            "sxdm_stream.simulators.frames", "sxdm_stream.plugins"} <= NAMES
    assert {layer(n) for n in NAMES} - {None, "plugins", "simulators"} == set(ALLOWED)


@pytest.mark.parametrize("name, path", ALL, ids=[n for n, _ in ALL])
def test_module_respects_the_layers(name, path):
    found = imports_of(name, path)
    ours = {i for i in found if i.startswith("sxdm_stream.")}
    tops = {i.split(".")[0] for i in found}
    own = layer(name)
    if own in ALLOWED:
        bad = {i for i in ours if layer(i) not in ALLOWED[own] | {own}}
        assert not bad, f"{name} ({own}) may import only {sorted(ALLOWED[own])}, imports {bad}"
    if own in PURE:
        assert not tops & IO_PACKAGES, f"pure module {name} imports {tops & IO_PACKAGES}"
    if "zmq" in tops:
        assert name.startswith(ZMQ_PLACES), f"{name} imports zmq; sockets belong in sources, " \
                                            "sinks and the runtime"
    if tops & QT:
        assert name.startswith("sxdm_stream.plugins.viewer"), f"{name} imports Qt"
    if own == "simulators":
        bad = {i for i in ours if layer(i) in ("plugins", "cli")}
        assert not bad, f"simulator {name} imports {bad}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (a parent package's import excluded)."""
    graph = defaultdict(set)
    for name, path in ALL:
        for target in imports_of(name, path):
            while target and target not in NAMES:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checkers_catch_violations(tmp_path):
    bad = tmp_path / "geometry.py"
    bad.write_text("import h5py\nfrom ..simulators import frames\n")
    found = imports_of("sxdm_stream.core.geometry", bad)
    assert "h5py" in found and "sxdm_stream.simulators.frames" in found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def private_imports(name: str, path: Path, public: set[str]) -> set[str]:
    """What a plugin module imports of sxdm_stream beyond the package's public names and its
    own plugin's modules (``sxdm_stream.plugins.<plugin>``)."""
    own = ".".join(name.split(".")[:3])
    allowed = {"sxdm_stream"} | {f"sxdm_stream.{n}" for n in public}
    return {i for i in imports_of(name, path) if i.startswith("sxdm_stream") and i not in allowed
            and i != own and not i.startswith(own + ".")}


PLUGINS = [(n, p) for n, p in ALL if layer(n) == "plugins"]


@pytest.mark.parametrize("name, path", PLUGINS, ids=[n for n, _ in PLUGINS])
def test_plugins_import_only_the_public_api(name, path):
    import sxdm_stream

    bad = private_imports(name, path, set(sxdm_stream.__all__))
    assert not bad, (f"{name} imports {sorted(bad)}: a plugin imports `from sxdm_stream import "
                     "...` (names in sxdm_stream.__all__) and its own modules only")


def test_the_plugin_check_catches_private_imports(tmp_path):
    bad = tmp_path / "model.py"
    bad.write_text("from sxdm_stream import Snapshot, LiveStatus\nfrom .panels import x\n"
                   "from sxdm_stream.core.maps import hsv_to_rgb\nfrom ..bluesky import plans\n"
                   "from sxdm_stream import analysis\n")
    found = private_imports("sxdm_stream.plugins.viewer.model", bad, {"Snapshot", "LiveStatus"})
    assert found == {"sxdm_stream.core.maps", "sxdm_stream.core.maps.hsv_to_rgb",
                     "sxdm_stream.plugins.bluesky", "sxdm_stream.plugins.bluesky.plans",
                     "sxdm_stream.analysis"}


def test_every_public_name_resolves_and_is_listed():
    import sxdm_stream

    names = sxdm_stream.__all__
    assert len(set(names)) == len(names), "a public name listed twice"
    unresolved = [n for n in names if getattr(sxdm_stream, n, None) is None]
    assert not unresolved, f"sxdm_stream.__all__ names what it cannot give: {unresolved}"
    assert set(names) <= set(dir(sxdm_stream))
    with pytest.raises(AttributeError):
        sxdm_stream.no_such_name  # noqa: B018
