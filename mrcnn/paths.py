"""Paths read from data files stay inside their folder.

A dataset file (a COCO or VIA json, a folder layout) names images and masks; a hostile or
careless one names ``../../etc/passwd`` or an absolute path, or a symlink inside the folder
points outside it. ``inside`` resolves such a name against its root, following symlinks, and
refuses anything that lands outside, naming the entry and the file. A user who really keeps
images elsewhere says so explicitly (``allow_outside=True``). NumPy-free, standard library only.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator

from mrcnn.errors import UnsafePathError


def is_within(path: str, root: str) -> bool:
    """Return whether ``path`` (after resolving symlinks) lies inside ``root`` (resolved).

    Args:
        path: a path to test.
        root: the folder it must stay in.

    Returns:
        True when the real path of ``path`` is ``root``'s real path or below it.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root


def inside(root: str, name: str, *, what: str = "file", source: str = "",
           allow_outside: bool = False) -> str:
    """Join ``name`` (read from a data file) to ``root`` and check it stays inside.

    Args:
        root: the folder the data file's paths are relative to (e.g. the image root).
        name: the path as written in the data file.
        what: how to call the entry in an error (e.g. "image 17 'file_name'").
        source: the data file the name comes from, named in the error.
        allow_outside: accept absolute paths and paths leaving ``root`` (the user's explicit
            choice); the joined path is returned as is.

    Returns:
        The joined path (``os.path.join(root, name)``; not resolved, so messages and
        ``image_info`` keep the user's spelling).

    Raises:
        UnsafePathError: ``name`` is empty, absolute, or resolves outside ``root`` (symlinks
            followed), and ``allow_outside`` is False.
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{_where(what, source)}: expected a relative file name, "
                              f"got {name!r}")
    path = os.path.join(root, name)
    if allow_outside:
        return path
    if os.path.isabs(name) or os.path.splitdrive(name)[0]:
        raise UnsafePathError(
            f"{_where(what, source)}: absolute path {name!r} is not allowed; paths in a data "
            f"file are relative to {root!r} (pass allow_outside=True to accept it)")
    if not is_within(path, root):
        raise UnsafePathError(
            f"{_where(what, source)}: path {name!r} leaves the folder {root!r} (it resolves "
            f"to {os.path.realpath(path)!r}; pass allow_outside=True to accept it)")
    return path


def _where(what: str, source: str) -> str:
    return f"{source}: {what}" if source else what


# ------------------------------------------------------------------ outputs are claimed

def claim(path: str, *, folder: bool = False) -> str:
    """Create ``path`` exclusively, or the first free ``<stem>_<n><ext>`` (n = 2, 3, ...).

    Creation is the claim (``O_EXCL`` for a file, ``mkdir`` for a folder), so two processes,
    or two calls in the same second, never get the same output; nothing that exists is
    touched. The parent folders are created.

    Args:
        path: the wanted file or folder.
        folder: claim a folder (the suffix goes at the end) instead of a file (the suffix
            goes before the extension: ``submit_2.csv``).

    Returns:
        The path created: an empty file or folder, now the caller's to fill.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    stem, ext = (path, "") if folder else os.path.splitext(path)
    candidate, n = path, 1
    while True:
        try:
            if folder:
                os.mkdir(candidate)
            else:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{stem}_{n}{ext}"


def publish(src: str, dst: str) -> None:
    """Rename the finished file ``src`` to ``dst``, refusing to replace an existing ``dst``.

    A hard link makes the check and the rename one atomic step where the file system has
    them; elsewhere the check comes just before the rename.

    Args:
        src: the complete file (a temporary name in ``dst``'s folder).
        dst: its final name.

    Raises:
        FileExistsError: ``dst`` exists (``src`` is removed).
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        os.remove(src)
        raise FileExistsError(f"{dst} exists already; it was left as it is") from None
    except OSError:  # no hard links here (some network and FAT file systems)
        if os.path.exists(dst):
            os.remove(src)
            raise FileExistsError(f"{dst} exists already; it was left as it is") from None
        os.replace(src, dst)
        return
    os.remove(src)


@contextlib.contextmanager
def replacing(path: str, newline: str | None = None) -> Iterator[IO[str]]:
    """Write the text file ``path`` whole or not at all: into ``path + ".tmp"``, renamed over
    ``path`` when the ``with`` block ends without an error (a reader never sees half a file).

    Args:
        path: the file to (re)write.
        newline: ``open``'s newline argument ("" for the csv module).

    Yields:
        The open temporary file.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        # The old file stays as it was; the half-written one is not left beside it.
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
