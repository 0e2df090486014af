"""The documents name only commands, flags and modules that exist.

Every `python -m X` in README.md and docs/*.md, for X under `pipeline`,
`alexnet_keras` or `benchmarks`, is a runnable module of this checkout, and
every `--flag` given to it, in a code block or an inline command, is one its
`--help` lists. Flags named on their own (`--no-winograd`) belong to one of
those commands; dotted module names, source paths and links exist. README
stays a short user's document, and no document speaks of how the project was
built.
"""

import functools
import json
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 260
HISTORY = re.compile(r"this session|previous session|field notes|the issue'?s", re.IGNORECASE)

_PACKAGES = r"(?:pipeline|alexnet_keras|benchmarks)"
# `python -m pipeline.run ...`: the module, and the rest of the line.
_COMMAND = re.compile(rf"python -m ({_PACKAGES}(?:\.\w+)+)(.*)")
_FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
# Where a shell command's arguments end: a comment, a pipe, `;` or `&&`.
_END_OF_COMMAND = re.compile(r"\s#|\||;|&&")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`]+)`")
# `pipeline.data.ingest`, `alexnet_keras.AlexNet`; not a file name such as
# `assets.extra/alexnet_keras.json`.
_DOTTED = re.compile(rf"(?<![\w./-]){_PACKAGES}(?:\.[A-Za-z_]\w*)+")
_SOURCE_PATH = re.compile(r"(?<![\w./-])(?:pipeline|alexnet_keras|benchmarks|tests)/[\w/]+\.py")
_IMPORT = re.compile(rf"^\s*from ({_PACKAGES}(?:\.\w+)*) import (\w+)", re.MULTILINE)
# Other programs' flags the documents mention on their own.
_OTHER_TOOLS_FLAGS = {"--enable_batching", "--model_config_file", "--batching_parameters_file"}


def _text(path):
    return path.read_text(encoding="utf-8")


def _code_blocks(text):
    """The fenced blocks' contents, with shell line continuations joined."""
    return [re.sub(r"\\\n\s*", " ", block) for block in _FENCE.findall(text)]


def _inline_spans(text):
    """Inline code outside fenced blocks, each on one line."""
    prose = _FENCE.sub("", text)
    return [" ".join(span.split()) for span in _INLINE.findall(prose)]


def _commands(text):
    """(module, flags, the command as written) for each `python -m` command."""
    lines = [line for block in _code_blocks(text) for line in block.splitlines()]
    found = []
    for line in lines + _inline_spans(text):
        for match in _COMMAND.finditer(line):
            arguments = _END_OF_COMMAND.split(match.group(2))[0]
            found.append((match.group(1), _FLAG.findall(arguments), match.group(0).strip()))
    return found


def _all_commands():
    return [(path.name, *command) for path in DOCUMENTS for command in _commands(_text(path))]


COMMANDS = _all_commands()
MODULES = sorted({module for _, module, _, _ in COMMANDS})


def _module_file(module):
    """The source file of a module or package of this checkout, or None."""
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runnable(module):
    path = REPO.joinpath(*module.split("."))
    if (path / "__main__.py").is_file():
        return True
    source = path.with_suffix(".py")
    return source.is_file() and 'if __name__ == "__main__":' in _text(source)


# Runs each module given as `python -m <module> --help` does (`runpy` with
# `alter_sys`, as `-m` itself), all in one process: each command imports
# TensorFlow, which takes seconds, once. Prints {module: [status, help]}.
_RUN_HELPS = """
import contextlib, io, json, runpy, sys
modules, helps = sys.argv[1:], {}
for module in modules:
    sys.argv = [module, "--help"]
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    helps[module] = [status, text.getvalue()]
print("HELPS " + json.dumps(helps))
"""


@pytest.fixture(scope="module")
def help_flags():
    """{module: the flags its `--help` lists}, for every documented command
    that can run."""
    runnable = [module for module in MODULES if _runnable(module)]
    result = subprocess.run(
        [sys.executable, "-c", _RUN_HELPS, *runnable], cwd=REPO, capture_output=True,
        text=True, timeout=300,
    )
    line = next((line for line in result.stdout.splitlines() if line.startswith("HELPS ")),
                None)
    assert line, f"the commands' --help did not run:\n{result.stderr[-2000:]}"
    helps = json.loads(line[len("HELPS "):])
    failed = sorted(module for module, (status, _) in helps.items() if status != 0)
    assert not failed, (f"python -m X --help failed for {', '.join(failed)}:\n"
                        f"{result.stderr[-2000:]}")
    return {module: frozenset(_FLAG.findall(text)) for module, (_, text) in helps.items()}


def test_the_documents_name_commands():
    # The parsing finds what the README certainly holds.
    assert ("README.md", "pipeline.run", ["--strategy"],
            "python -m pipeline.run --strategy mirrored") in COMMANDS
    assert {"pipeline.run", "pipeline.ingest", "pipeline.evaluate", "pipeline.predict",
            "alexnet_keras.summary", "benchmarks.train"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_command_is_a_runnable_module(module):
    where = sorted({document for document, named, _, _ in COMMANDS if named == module})
    assert _runnable(module), (
        f"python -m {module} (in {', '.join(where)}) is not a module of this checkout "
        "with a __main__ block"
    )


@pytest.mark.parametrize("module", MODULES)
def test_every_flag_given_to_a_command_is_its_own(module, help_flags):
    if module not in help_flags:
        pytest.skip(f"{module} is not runnable (see the test above)")
    unknown = [
        f"{flag} in {document}: {command}"
        for document, named, flags, command in COMMANDS if named == module
        for flag in flags if flag not in help_flags[module]
    ]
    assert not unknown, f"flags python -m {module} --help does not list:\n" + "\n".join(unknown)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_every_flag_named_alone_belongs_to_a_command(path, help_flags):
    known = set().union(*help_flags.values()) | _OTHER_TOOLS_FLAGS
    # `--no-` alone is the prefix of the switches' other form.
    named = {flag for span in _inline_spans(_text(path)) if span.startswith("--")
             for flag in re.findall(r"--[\w-]+", span) if not flag.endswith("-")}
    assert not named - known, f"{path.name} names flags no command has: {sorted(named - known)}"


@functools.cache
def _defines(source, name):
    """Whether a module's source defines or imports `name` at its top level."""
    pattern = (rf"^(?:(?:async\s+)?def|class)\s+{name}\b|^{name}\s*(?::[^=\n]*)?="
               rf"|^(?:from\s+\S+\s+)?import\s[^\n]*\b{name}\b")
    return re.search(pattern, _text(source), re.MULTILINE) is not None


def _resolves(dotted):
    """Whether `dotted` is a module of this checkout, or a name defined in one."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        source = _module_file(".".join(parts[:end]))
        if source is not None:
            return end == len(parts) or _defines(source, parts[end])
    return False


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_every_module_and_source_path_exists(path):
    text = _text(path)
    spans = _inline_spans(text) + _code_blocks(text)
    dotted = {name for span in spans for name in _DOTTED.findall(span)}
    dotted |= {f"{module}.{name}" for block in _code_blocks(text)
               for module, name in _IMPORT.findall(block)}
    missing = sorted(name for name in dotted if not _resolves(name))
    missing += sorted({source for span in spans for source in _SOURCE_PATH.findall(span)
                       if not (REPO / source).is_file()})
    assert not missing, f"{path.name} names what this checkout does not have: {missing}"


def _anchor(heading):
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_every_link_leads_somewhere(path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _FENCE.sub("", _text(path))):
        if "://" in target:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in {
            _anchor(heading) for heading in re.findall(r"^#+ (.+)$", _FENCE.sub("", _text(linked)),
                                                       re.MULTILINE)
        }:
            broken.append(target)
    assert not broken, f"{path.name} links to what is not there: {broken}"


def test_the_readme_is_short():
    lines = len(_text(REPO / "README.md").splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines; keep it a user's guide of at most "
        f"{MAX_README_LINES} and move reference material to docs/"
    )


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_no_document_speaks_of_how_it_was_built(path):
    found = [f"line {number}: {line.strip()}"
             for number, line in enumerate(_text(path).splitlines(), start=1)
             if HISTORY.search(line)]
    assert not found, f"{path.name} speaks of its own history:\n" + "\n".join(found)
