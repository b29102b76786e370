"""Generate the Config reference (``config.md``) from ``mrcnn/config.py``'s own comments.

The page is built from the source text, never by hand, so it cannot drift from the code:
every class attribute of ``Config`` with its default as written in the source and the
comment block above it (Matterport's habit: each knob says what it trades off), grouped by
the section comments of the class body (``# -- RPN --``), then the attributes ``__init__``
derives (``BATCH_SIZE``, ``IMAGE_SHAPE``, ...).

The module reads the file with ``ast`` and ``tokenize`` only: nothing in it is imported or
run. It serves two callers:

- MkDocs, as a hook (``hooks:`` in ``mkdocs.yml``): ``on_files`` adds the page to the site;
- people: ``python docs/gen_config.py`` prints the page.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PY = ROOT / "mrcnn" / "config.py"
PAGE = "config.md"

# "# -- Backbone and pyramid --": a group heading inside the class body.
GROUP_RE = re.compile(r"^--\s*(.+?)\s*--$")
# "# -----": a banner rule; the comment lines between two rules title a part.
RULE_RE = re.compile(r"^-{5,}$")
# "none:   no resizing...": an item of a list of choices inside a comment.
ITEM_RE = re.compile(r"^([A-Za-z0-9_]+):\s+(\S.*)$")

INTRO = """\
# Config reference

Every setting of `mrcnn.config.Config`, with its default and what it trades off. This page
is generated from the comments in `mrcnn/config.py` when the site is built, so it always
matches the code.

Subclass `Config` and override what your data needs, as a class attribute:

```python
from mrcnn.config import Config


class MyConfig(Config):
    NAME = "mine"
    NUM_CLASSES = 1 + 2          # background + your classes
    IMAGES_PER_GPU = 1
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512


config = MyConfig()              # computes the derived settings and validates everything
config.display()                 # prints every value, as Matterport's did
```

`Config()` checks every value and raises a `ValueError` naming the attribute, its value and
what is allowed (for example an `IMAGE_MAX_DIM` that is not a multiple of 64). The sample
command lines override settings with `--set KEY=VALUE` (values are Python literals).

The first group holds Matterport's settings, with Matterport's names and defaults; the
groups after it are settings mrcnn adds.
"""


@dataclass
class Entry:
    """Attributes that share one comment block (e.g. POST_NMS_ROIS_TRAINING / _INFERENCE)."""
    names: list[str] = field(default_factory=list)
    defaults: list[str] = field(default_factory=list)
    comment: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # trailing "# ..." of each line


@dataclass
class Group:
    title: str
    entries: list[Entry] = field(default_factory=list)


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text without "#", whether it is alone on its line)."""
    out: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            alone = not lines[row - 1][:col].strip()
            text = tok.string[1:]
            out[row] = (text[1:] if text.startswith(" ") else text, alone)
    return out


def _comment_block(comments: dict[int, tuple[str, bool]], line: int) -> list[str]:
    """The own-line comments directly above ``line`` (no blank line between)."""
    block: list[str] = []
    row = line - 1
    while row in comments and comments[row][1]:
        text = comments[row][0]
        if RULE_RE.match(text.strip()) or GROUP_RE.match(text.strip()):
            break
        block.insert(0, text)
        row -= 1
    return block


def _find_config(tree: ast.Module) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            return node
    raise ValueError(f"{CONFIG_PY}: no class Config")


def _target(node: ast.stmt) -> str | None:
    """The upper-case name a class-body statement assigns, if any."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
            isinstance(node.targets[0], ast.Name):
        name = node.targets[0].id
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
        name = node.target.id
    else:
        return None
    return name if name.isupper() else None


def parse(path: Path = CONFIG_PY) -> list[Group]:
    """Read ``Config``'s attributes, defaults and comments from ``path``.

    Args:
        path: the config module (``mrcnn/config.py``).

    Returns:
        The groups in source order; the last one holds the attributes ``__init__`` derives.
    """
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    comments = _comments(source)
    cls = _find_config(tree)
    groups = [Group("Matterport's settings")]
    previous_end = None  # last line of the attribute right before, if any
    scanned = cls.lineno  # group headings are looked for after this line
    for node in cls.body:
        name = _target(node)
        start, scanned = scanned, node.end_lineno
        if name is None:
            previous_end = None
            continue
        # A group heading ("# -- RPN --") between the previous statement and this one.
        for row in range(start + 1, node.lineno):
            text = comments.get(row, ("", False))[0].strip()
            match = GROUP_RE.match(text)
            if match:
                groups.append(Group(match.group(1)))
        block = _comment_block(comments, node.lineno)
        default = ast.get_source_segment(source, node.value) or ""
        if "\n" in default:  # the whole statement, dedented, as a code block
            default = textwrap.dedent("\n".join(
                source.splitlines()[node.lineno - 1:node.end_lineno]))
        note = comments.get(node.end_lineno, ("", True))
        entries = groups[-1].entries
        if not block and entries and previous_end == node.lineno - 1:
            entry = entries[-1]  # shares the comment of the attribute right above it
        else:
            entry = Entry(comment=block)
            entries.append(entry)
        entry.names.append(name)
        entry.defaults.append(default)
        entry.notes.append("" if note[1] else note[0])
        previous_end = node.end_lineno
    groups.append(_derived(cls, source, comments))
    return [g for g in groups if g.entries]


def _derived(cls: ast.ClassDef, source: str, comments: dict[int, tuple[str, bool]]) -> Group:
    """``self.NAME = ...`` assignments of ``Config.__init__``: computed, not set."""
    group = Group("Derived settings (computed by `Config()`; do not set them)")
    init = next((n for n in cls.body
                 if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return group
    nodes = sorted((n for n in ast.walk(init) if isinstance(n, ast.Assign)),
                   key=lambda n: n.lineno)
    ifs = [n for n in ast.walk(init) if isinstance(n, ast.If)]
    entries: dict[str, Entry] = {}
    for node in nodes:
        target = node.targets[0]
        if not (len(node.targets) == 1 and isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name) and target.value.id == "self"
                and target.attr.isupper()) or _is_class_attribute(cls, target.attr):
            continue
        # The comment above the assignment, or above the `if` that holds it.
        block = _comment_block(comments, node.lineno)
        for parent in ifs:
            if not block and node in parent.body + parent.orelse:
                block = _comment_block(comments, parent.lineno)
        value = " ".join(ast.get_source_segment(source, node.value).split())
        entry = entries.get(target.attr)
        if entry is None:
            entry = entries[target.attr] = Entry(names=[target.attr], comment=block)
            group.entries.append(entry)
        entry.defaults.append(value.replace("( ", "(").replace("[ ", "["))
        entry.notes.append("")
    return group


def _is_class_attribute(cls: ast.ClassDef, name: str) -> bool:
    return any(_target(n) == name for n in cls.body)


def _prose(lines: list[str]) -> str:
    """Comment lines -> Markdown: paragraphs, and "key: text" choices as a list.

    A line "key: text" starts a choice when its next line is an indented continuation or
    when a list of choices is already open (Matterport's layout of NORM and
    IMAGE_RESIZE_MODE).
    """
    out: list[str] = []
    para: list[str] = []
    items: list[list[str]] = []

    def flush() -> None:
        if para:
            out.append(" ".join(para))
            para.clear()
        if items:
            out.append("\n".join(f"- `{k}`: {' '.join(v)}" for k, *v in items))
            items.clear()

    for i, raw in enumerate(lines):
        text = raw.strip()
        match = ITEM_RE.match(text) if not raw.startswith(" ") else None
        continued = i + 1 < len(lines) and lines[i + 1].startswith("  ")
        if not text:
            flush()
        elif match and (items or continued):
            if para:
                flush()
            items.append([match.group(1), match.group(2)])
        elif items and raw.startswith(" "):
            items[-1].append(text)  # continuation of a choice
        else:
            if items:
                flush()
            para.append(text)
    flush()
    return "\n\n".join(out)


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def render(path: Path = CONFIG_PY) -> str:
    """The Markdown page for ``path``.

    Args:
        path: the config module.

    Returns:
        The page text.
    """
    parts = [INTRO]
    for group in parse(path):
        derived = group.title.startswith("Derived")
        parts.append(f"## {group.title}\n")
        for entry in group.entries:
            parts.append(f"### {', '.join(entry.names)}\n")
            # One anchor per name (config.md#image_min_dim); a one-name heading has its own.
            anchors = "".join(f'<a id="{n.lower()}"></a>' for n in entry.names
                              if len(entry.names) > 1)
            if anchors:
                parts.append(anchors + "\n")
            lines = []
            for name, default, note in zip(entry.names, entry.defaults, entry.notes):
                note = f" — {note}" if note else ""
                if derived:
                    lines.append("Computed: " + " or ".join(_code(d) for d in entry.defaults))
                    break
                if "\n" in default:
                    lines.append(f"Default:\n\n```python\n{default}\n```")
                elif len(entry.names) > 1:
                    lines.append(f"- `{name}`: default {_code(default)}{note}")
                else:
                    lines.append(f"Default: {_code(default)}{note}")
            parts.append("\n".join(lines) + "\n")
            if entry.comment:
                parts.append(_prose(entry.comment) + "\n")
    return "\n".join(parts)


def attribute_names(path: Path = CONFIG_PY) -> list[str]:
    """Every attribute the page documents.

    Args:
        path: the config module.

    Returns:
        The names, in page order.
    """
    return [n for g in parse(path) for e in g.entries for n in e.names]


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated ``config.md`` to the site's files.

    Args:
        files: MkDocs' ``Files`` of the build.
        config: MkDocs' configuration.

    Returns:
        ``files`` with the page added.
    """
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    sys.stdout.write(render())
