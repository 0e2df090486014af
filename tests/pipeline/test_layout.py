"""The architecture as the tree shows it: stages import one way, nothing imports
in a cycle, every command loads each module once, and files stay readable."""

import ast
import pathlib
import subprocess
import sys

import pytest

import testlib

PACKAGE = pathlib.Path(testlib.REPO) / "pipeline"
# Each stage may import itself and the stages before it.
STAGES = ("data", "training", "tuning", "evaluation", "serving")
# What every stage may use.
SHARED = {"config", "settings", "errors", "json_values", "environment", "plots", "storage"}
COMMANDS = ("run", "ingest", "evaluate", "export", "predict")


def _modules():
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
            ".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }


def _imports(path):
    """The pipeline modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "pipeline"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names
                         if alias.name.startswith("pipeline"))
    return found


def _graph():
    modules = _modules()
    return {name: {imported for imported in _imports(path) if imported in modules
                   and imported != name and not name.startswith(imported + ".")}
            for name, path in modules.items()}


def _part(module):
    """pipeline.data.ingest -> "data"; pipeline.config -> "config"."""
    return module.split(".")[1] if "." in module else "pipeline"


def test_stages_import_one_way():
    wrong = []
    for module, imported in _graph().items():
        part = _part(module)
        for target in imported:
            other = _part(target)
            if other == part or other == "pipeline":
                continue
            if part in SHARED:
                allowed = other in SHARED
            elif part in STAGES:
                allowed = other in SHARED or (
                    other in STAGES and STAGES.index(other) < STAGES.index(part))
            elif part == "runner":
                allowed = other != "cli"
            elif part == "cli":
                allowed = True
            else:  # the `python -m` shims launch the command line and nothing else
                allowed = other == "cli"
            if not allowed:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_nothing_imports_in_a_cycle():
    graph = _graph()
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_only_the_command_line_imports_the_wiring():
    importers = {module for module, imported in _graph().items() if "pipeline.runner" in imported}
    assert {_part(module) for module in importers} == {"cli"}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_loads_every_module_once(command):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"pipeline.{command}", "--help"],
        capture_output=True, text=True, cwd=testlib.REPO, check=True,
    )
    loaded = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
              if line.startswith("import time:") and "|" in line]
    ours = [name for name in loaded if name == "pipeline" or name.startswith("pipeline.")]
    assert "pipeline.cli.main" in ours
    # Run as __main__, the command's module is never imported a second time
    # under its own name.
    assert f"pipeline.{command}" not in ours
    assert len(ours) == len(set(ours))


def test_no_module_is_longer_than_a_sitting():
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: length for name, length in lengths.items() if length > 420} == {}
