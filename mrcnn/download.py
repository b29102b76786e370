"""Downloads (pretrained weights, COCO images and annotations) through ``keras.utils.get_file``.

One function for every file mrcnn fetches, so they all get Keras' progress bar, an
optional hash check, and the same guarantees:

- the file is downloaded under a temporary ``.part`` name and renamed when complete (and
  verified, with a hash), so an interrupted or corrupted download never looks finished;
- a file that already exists is used as it is (checked against the hash when one is
  known) and never overwritten: a mismatch is an error naming the file;
- any failure (no network, HTTP error, wrong hash) is one ``DownloadError`` naming the URL,
  the target path and what to do instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os

# Chunk size when hashing a file.
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and the target path."""


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``"sha256"`` or ``"md5"``), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _algorithm(file_hash: str) -> str:
    # Keras' convention: 64 hex digits are SHA-256, 32 are MD5.
    return "sha256" if len(file_hash) == 64 else "md5"


def download(url: str, path: str, file_hash: str | None = None, verbose: int = 1) -> str:
    """Make ``path`` hold the file at ``url``, downloading it if it is not there yet.

    Args:
        url: where the file is.
        path: where it goes (folders are created).
        file_hash: its SHA-256 (64 hex digits) or MD5 (32) if known; checked after the
            download and on a file that is already there.
        verbose: Keras' progress bar and a line when done; 0 for silence.

    Returns:
        ``path``, absolute.

    Raises:
        DownloadError: the download failed, or the file there (or downloaded) does not
            match ``file_hash``.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if file_hash and file_digest(path, _algorithm(file_hash)) != file_hash.lower():
            raise DownloadError(
                f"{path} exists but its {_algorithm(file_hash)} is not {file_hash} (the file "
                f"of {url}); it was left as it is: move it away to download it again")
        return path

    import keras  # here, not at import time: only downloads need it

    directory, name = os.path.split(path)
    part = os.path.join(directory, name + ".part")
    try:
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(part):  # left by an interrupted download: never trust it
            os.remove(part)
        # Keras prints its progress bar on stdout.
        quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            keras.utils.get_file(name + ".part", url, file_hash=file_hash,
                                 cache_dir=directory, cache_subdir="")
        os.replace(part, path)
    except (Exception, KeyboardInterrupt) as err:
        if os.path.exists(part):
            os.remove(part)
        if isinstance(err, KeyboardInterrupt):
            raise
        reason = " ".join(str(err).split())
        raise DownloadError(f"download of {url} to {path} failed ({reason}); without network, "
                            f"download it by hand and place it at {path}") from err
    if verbose:
        print(f"Downloaded {url} to {path}")
    return path
