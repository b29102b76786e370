"""The documentation works as written: README.md and docs/*.md.

- The site builds with ``mkdocs build --strict`` (broken links, missing pages or API
  references fail).
- Every ```python block runs: one subprocess and one namespace per page, blocks in order,
  in a temporary working folder, with ``KERAS_BACKEND=tensorflow``. A block directly after
  the line ``<!-- docs-test: skip (reason) -->`` is skipped, with its reason shown.
- Every command quoted in ```bash / ```console blocks exists: ``python samples/<x>/<x>.py
  <command>`` and ``mrcnn <command>`` answer ``--help``, and each ``--option`` the quote
  uses is in that help.
- The Config reference lists every Config attribute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SKIP_RE = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>.+)\)\s*-->$")
FENCE_RE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
PYTHON = ("python", "py", "python3")
SHELL = ("bash", "console", "sh", "shell")
PAGE_TIMEOUT = 600


@dataclass
class Block:
    page: Path
    line: int          # 1-based line of the first code line
    lang: str
    code: str
    skip: str | None   # the reason of a preceding skip marker

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, indentation of the fence removed.

    Args:
        page: a Markdown file.

    Returns:
        The blocks in page order.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE_RE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1)
                         if lines[j].strip()), "")
        skip = SKIP_RE.match(previous)
        body: list[str] = []
        i += 1
        first = i + 1  # 1-based line of the first code line
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            i += 1
        blocks.append(Block(page, first, match["lang"].lower(), "\n".join(body),
                            skip["reason"] if skip else None))
        i += 1
    return blocks


# --------------------------------------------------------------------------------------
# mkdocs build --strict
# --------------------------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
    """The site builds without a warning (links, anchors, nav, API references)."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]' installs it")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "config" / "index.html").is_file()


# --------------------------------------------------------------------------------------
# Python blocks
# --------------------------------------------------------------------------------------

# Runs a page's blocks in one namespace. Line numbers in tracebacks are the page's.
RUNNER = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    code = compile("\n" * (block["line"] - 1) + block["code"], block["page"], "exec")
    print(f"--- running {block['page']}:{block['line']}", flush=True)
    exec(code, namespace)
"""


def _python_params() -> list:
    params = []
    for page in PAGES:
        blocks = [b for b in code_blocks(page) if b.lang in PYTHON]
        name = str(page.relative_to(ROOT))
        if any(b.skip is None for b in blocks):
            params.append(pytest.param(page, None, id=name))
        params += [pytest.param(page, b, id=f"{name}:{b.line} (skipped)")
                   for b in blocks if b.skip is not None]
    return params


@pytest.mark.parametrize("page, skipped", _python_params())
def test_python_blocks_run(page, skipped, tmp_path):
    """A page's python blocks run in order, in one namespace (a skipped block: its reason)."""
    if skipped is not None:
        pytest.skip(f"{skipped.where}: {skipped.skip}")
    blocks = [{"page": str(page.relative_to(ROOT)), "line": b.line, "code": b.code}
              for b in code_blocks(page) if b.lang in PYTHON and b.skip is None]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks),
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=PAGE_TIMEOUT)
    assert result.returncode == 0, (
        f"a python block of {page.name} failed:\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-6000:]}")


# --------------------------------------------------------------------------------------
# Quoted commands
# --------------------------------------------------------------------------------------

def _logical_lines(text: str) -> list[str]:
    """Shell text -> its logical lines: continuations joined, comments dropped, newlines
    inside quotes kept inside their line."""
    lines, current, quote, i = [], [], None, 0
    while i < len(text):
        char = text[i]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "\\" and text[i + 1:i + 2] == "\n":
            i += 2
            continue
        elif char == "#" and (not current or current[-1].isspace()):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif char == "\n":
            lines.append("".join(current))
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    lines.append("".join(current))
    return [line.strip() for line in lines if line.strip()]


def shell_commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block, as argument lists.

    Continuation lines are joined, ``$ `` prompts (console blocks: other lines are output)
    and comments dropped, and lines split at ``&&``, ``||``, ``;`` and ``|``; leading
    ``VAR=value`` assignments are removed.
    """
    commands = []
    for line in _logical_lines(block.code):
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:
            tokens = line.split()
        current: list[str] = []
        for token in tokens + [";"]:
            if token and set(token) <= set(";&|"):
                while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


@dataclass(frozen=True)
class Quoted:
    """One documented command: how to ask for its help, and the options quoted with it."""
    help_args: tuple[str, ...]
    options: frozenset[str]
    where: str


def quoted_commands() -> dict[str, Quoted]:
    """Every ``mrcnn <sub>`` / ``python samples/...py <cmd>`` quoted in the docs.

    Returns:
        {display name: Quoted}, the options of every quote of the same command merged.
    """
    found: dict[str, Quoted] = {}
    for page in PAGES:
        for block in code_blocks(page):
            if block.lang not in SHELL:
                continue
            for argv in shell_commands(block):
                key_args = _help_args(argv)
                if key_args is None:
                    continue
                name = " ".join(key_args)
                options = frozenset(a.split("=", 1)[0] for a in argv
                                    if a.startswith("--") and len(a) > 2)
                old = found.get(name)
                found[name] = Quoted(key_args, options | (old.options if old else frozenset()),
                                     old.where if old else block.where)
    return found


def _help_args(argv: list[str]) -> tuple[str, ...] | None:
    """The command line that asks ``argv``'s command for its help, or None if not ours."""
    if argv[0] == "mrcnn" and len(argv) > 1:
        return ("-m", "mrcnn", argv[1])
    if argv[0] in ("python", "python3") and len(argv) > 1:
        if argv[1:3] == ["-m", "mrcnn"] and len(argv) > 3:
            return ("-m", "mrcnn", argv[3])
        script = argv[1]
        if script.startswith("samples/") and script.endswith(".py"):
            path = Path(script)
            # samples/<x>/<x>.py takes a command first (Matterport's layout).
            if path.stem == path.parent.name and len(argv) > 2 \
                    and not argv[2].startswith("-"):
                return (script, argv[2])
            return (script,)
    return None


@cache
def _help(args: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


QUOTED = quoted_commands()


@pytest.mark.parametrize("name", sorted(QUOTED))
def test_quoted_commands_exist(name):
    """A quoted command answers --help, and its help lists every option the quote uses."""
    quoted = QUOTED[name]
    if quoted.help_args[:2] == ("-m", "mrcnn") and not (ROOT / "mrcnn" / "__main__.py").exists():
        pytest.fail(f"{quoted.where}: `mrcnn {quoted.help_args[2]}` is quoted but the "
                    "`mrcnn` command (mrcnn/__main__.py) does not exist")
    result = _help(quoted.help_args)
    assert result.returncode == 0, (f"{quoted.where}: `{name} --help` failed:\n"
                                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    missing = sorted(o for o in quoted.options - {"--help"}
                     if not re.search(re.escape(o) + r"(?![\w-])", result.stdout))
    assert not missing, f"{quoted.where}: `{name}` has no option {missing}"


def test_shell_parser_finds_commands():
    """The command parser on a known block (so that the test above cannot pass empty)."""
    block = Block(ROOT / "README.md", 1, "bash",
                  "KERAS_BACKEND=jax python samples/shapes/shapes.py train --tiny \\\n"
                  "    --set A=1 && mrcnn info  # comment\n"
                  "python -m pytest tests -q | tail\n"
                  "TF_CONFIG='{\"a\": 1,\n  \"b\": 2}' python samples/coco/coco.py evaluate ...",
                  None)
    argvs = [_help_args(a) for a in shell_commands(block)]
    assert argvs == [("samples/shapes/shapes.py", "train"), ("-m", "mrcnn", "info"), None,
                     None, ("samples/coco/coco.py", "evaluate")]
    console = Block(ROOT / "README.md", 1, "console", "$ mrcnn predict --help\nusage: x", None)
    assert [_help_args(a) for a in shell_commands(console)] == [("-m", "mrcnn", "predict")]
    assert any(q.help_args == ("samples/shapes/shapes.py", "train") for q in QUOTED.values())


# --------------------------------------------------------------------------------------
# README's test command, and the Config reference
# --------------------------------------------------------------------------------------

def test_readme_test_command_is_the_ci_command():
    """.ci/run runs exactly the test command README gives."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [b.code.strip() for b in code_blocks(ROOT / "README.md")
                if b.lang in SHELL and "pytest tests" in b.code]
    assert commands, "README.md has no test command"
    assert commands[0] in ci.splitlines(), f"{commands[0]!r} is not a line of .ci/run"
    assert "python samples/shapes/shapes.py train" in readme


def _gen_config():
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "docs" / "gen_config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_config_reference_lists_every_attribute():
    """Every Config attribute (set or derived) has an entry with its default."""
    from mrcnn.config import Config

    gen = _gen_config()
    page = gen.render()
    expected = {n for n in dir(Config) if n.isupper() and not n.startswith("_")}
    # A bare Config is refused (NUM_CLASSES = 1 is background only); one class suffices.
    expected |= set(type("One", (Config,), {"NUM_CLASSES": 2})().to_dict())
    headings = set()
    for line in page.splitlines():
        if line.startswith("### "):
            headings |= {n.strip() for n in line[4:].split(",")}
    assert expected <= headings, f"missing from the Config reference: {expected - headings}"
    assert set(gen.attribute_names()) <= expected  # nothing documented that is not there


def test_config_reference_entries(tmp_path):
    """Defaults and comments come from the source: checked on a small config module."""
    gen = _gen_config()
    source = '''
class Config:
    # Name it.
    NAME = None

    # Proposals kept, in training and in inference.
    # More is slower.
    POST_TRAIN = 2000
    POST_INFER = 1000

    SHAPE = (56, 56)  # (height, width)

    def helper(self):
        return 1

    # -- Training --

    # Choices.
    # sgd:   SGD with
    #        momentum.
    # adamw: AdamW.
    OPTIMIZER = "sgd"

    def other(self):
        return 2

    RATE = 0.1

    def __init__(self):
        # Global batch.
        self.BATCH = 2 * self.POST_TRAIN
'''
    path = tmp_path / "config.py"
    path.write_text(source)
    groups = gen.parse(path)
    page = gen.render(path)
    assert [g.title for g in groups][:2] == ["Matterport's settings", "Training"]
    assert len(groups) == 3 and groups[2].title.startswith("Derived")
    entries = [(e.names, e.defaults) for g in groups for e in g.entries]
    assert entries == [(["NAME"], ["None"]), (["POST_TRAIN", "POST_INFER"], ["2000", "1000"]),
                       (["SHAPE"], ["(56, 56)"]), (["OPTIMIZER"], ['"sgd"']),
                       (["RATE"], ["0.1"]), (["BATCH"], ["2 * self.POST_TRAIN"])]
    assert "Proposals kept, in training and in inference. More is slower." in page
    assert "- `sgd`: SGD with momentum.\n- `adamw`: AdamW." in page
    assert "Default: `(56, 56)` — (height, width)" in page
    assert "Computed: `2 * self.POST_TRAIN`" in page and "Global batch." in page
