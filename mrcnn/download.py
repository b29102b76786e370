"""Downloads (pretrained weights, COCO images and annotations) through ``keras.utils.get_file``.

One function for every file mrcnn fetches, so they all get Keras' progress bar, an
optional hash check, and the same guarantees:

- the file is downloaded under a temporary ``.part`` name and renamed when complete (and
  verified, with a hash), so an interrupted or corrupted download never looks finished;
- a file that already exists is used as it is (checked against the hash when one is
  known) and never overwritten: a mismatch is an error naming the file;
- any failure (no network, HTTP error, wrong hash) is one ``DownloadError`` naming the URL,
  the target path and what to do instead;
- only ``https`` URLs are fetched (plain ``http`` only from this machine: 127.0.0.1,
  localhost), so a file cannot be swapped on the way;
- archives are unpacked by ``extract_zip`` only after every member's path has been checked
  to stay inside the target folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import urllib.parse
import zipfile

from mrcnn.errors import UnsafePathError
from mrcnn.paths import inside

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


# Hosts a plain-http URL may name: this machine (a local mirror, tests).
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_url(url: str) -> None:
    """Refuse a URL that could be tampered with on the way: anything but https (or http
    from this machine).

    Raises:
        DownloadError: naming the URL.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return
    raise DownloadError(f"refusing to download {url}: only https URLs are fetched (a plain "
                        "http or other download can be altered on the way)")


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
        DownloadError: the URL is not https, the download failed, or the file there (or
            downloaded) does not match ``file_hash``.
    """
    check_url(url)
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


def extract_zip(zip_path: str, target_dir: str) -> list[str]:
    """Unpack a zip archive into ``target_dir`` after checking every member's path.

    Nothing is written unless every member stays inside ``target_dir``: no absolute path,
    no ``..`` leaving it, no path through a symlink already there that points outside, and
    no symlink member pointing outside (Python writes symlink members as small files, but
    another unzip tool would make them links).

    Args:
        zip_path: the archive.
        target_dir: where its members go (created).

    Returns:
        The member names, in the archive's order.

    Raises:
        UnsafePathError: naming the archive and the first member that leaves the folder.
        zipfile.BadZipFile, OSError: the archive cannot be read.
    """
    os.makedirs(target_dir, exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive:
        members = archive.infolist()
        for member in members:
            what = f"member {member.filename!r}"
            inside(target_dir, member.filename, what=what, source=zip_path)
            if stat.S_ISLNK(member.external_attr >> 16):
                link = archive.read(member).decode("utf-8", "replace")
                folder = os.path.dirname(member.filename)
                if os.path.isabs(link) or os.path.splitdrive(link)[0]:
                    raise UnsafePathError(f"{zip_path}: {what} is a symlink to the absolute "
                                          f"path {link!r}")
                inside(target_dir, os.path.join(folder, link), what=f"{what} (a symlink)",
                       source=zip_path)
        archive.extractall(target_dir, members)
    return [member.filename for member in members]
