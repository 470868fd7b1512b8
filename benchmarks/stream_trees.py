"""The processors ``bench_stream.py`` compares: the current tree, and the tree of a git revision
checked out into a temporary worktree (the baseline), each run as its own
``python -m sxdm_stream.cli process``.

The baseline imports its own code, not the installed package: the run's working directory and
``PYTHONPATH`` are a temporary folder where ``sxdm_stream`` is a link to the worktree's package
folder, with the sub-packages the revision's ``pyproject.toml`` maps elsewhere
(``sxdm_stream.plugins = plugins``...) linked inside it, as setuptools maps them. That folder
comes first on ``sys.path``; the editable install's finder of the current tree comes after every
path entry, so it is never asked. :func:`imported_from` checks where each package was imported
from, before any measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sxdm_stream", "sxdm_stream.plugins", "sxdm_stream.simulators")
_WHERE = ("import importlib, json, os\n"
          f"print(json.dumps({{m: os.path.realpath(importlib.import_module(m).__file__) "
          f"for m in {PACKAGES!r}}}))")


@dataclass
class Processor:
    """One processor to measure: its name, the tree it imports, how to start it.

    name : the table's name for it ("baseline aafba82", "current", "current --workers 2").
    tree : the source tree its ``sxdm_stream`` must come from.
    cwd, env : the working directory and environment of its processes.
    extra_args : appended to ``process``'s arguments.
    snapshots : whether it takes ``--publish`` (``process --workers N`` refuses it so far):
        set by the benchmark's warm-up.
    """

    name: str
    tree: Path
    cwd: Path
    env: dict = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    snapshots: bool = True

    def command(self, *args: str) -> list[str]:
        """``python -m sxdm_stream.cli ARGS... EXTRA_ARGS...`` with this venv's interpreter."""
        return [sys.executable, "-m", "sxdm_stream.cli", *args, *self.extra_args]

    def with_args(self, extra: str) -> "Processor":
        """The same tree with more ``process`` arguments (a shell-quoted string)."""
        args = tuple(shlex.split(extra))
        return Processor(f"{self.name} {extra}", self.tree, self.cwd, self.env,
                         self.extra_args + args)


def imported_from(processor: Processor) -> dict[str, str]:
    """Where the processor's interpreter imports each package from (real paths); raises
    RuntimeError when one is outside its tree."""
    out = subprocess.run([sys.executable, "-c", _WHERE], cwd=processor.cwd, env=processor.env,
                         capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"{processor.name}: cannot import its packages:\n{out.stderr}")
    where = json.loads(out.stdout.strip().splitlines()[-1])
    tree = processor.tree.resolve()
    outside = {m: p for m, p in where.items() if not Path(p).is_relative_to(tree)}
    if outside:
        raise RuntimeError(f"{processor.name} imports from outside {tree}: {outside}")
    return where


def current_tree(workdir: Path) -> Processor:
    """The working tree this benchmark belongs to, as installed (editable) in the venv; run
    from an empty folder so that nothing is imported from the working directory."""
    cwd = workdir / "current"
    cwd.mkdir()
    return Processor("current", ROOT, cwd, dict(os.environ))


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _package_dirs(tree: Path) -> dict[str, str]:
    """``[tool.setuptools.package-dir]`` of the tree's pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:                  # Python 3.10
        import tomli as tomllib
    with open(tree / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    return project["tool"]["setuptools"]["package-dir"]


def _link_packages(tree: Path, path_dir: Path) -> None:
    """``path_dir/sxdm_stream`` -> the tree's package folder, and the sub-packages mapped
    elsewhere linked inside that folder (links in the temporary worktree only)."""
    dirs = _package_dirs(tree)
    package = tree / dirs["sxdm_stream"]
    (path_dir / "sxdm_stream").symlink_to(package, target_is_directory=True)
    for name, folder in dirs.items():
        parts = name.split(".")
        if parts[0] != "sxdm_stream" or len(parts) == 1:
            continue
        link = package.joinpath(*parts[1:])
        if not link.exists():
            link.symlink_to(tree / folder, target_is_directory=True)


@contextlib.contextmanager
def baseline_tree(rev: str, workdir: Path):
    """The processor of git revision ``rev``, from a temporary detached worktree (removed on
    leaving, whatever happens)."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree, path_dir = workdir / "baseline", workdir / "baseline-path"
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        path_dir.mkdir()
        _link_packages(tree, path_dir)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(path_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        yield Processor(f"baseline {rev}", tree, path_dir, env)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)
