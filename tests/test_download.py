"""mrcnn.download against a real HTTP server on 127.0.0.1 (no outside network)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

from mrcnn import download as dl
from mrcnn import utils

PAYLOAD = b"HDF5 payload " * 1000
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves a folder holding weights.h5 on an ephemeral 127.0.0.1 port."""
    root = tmp_path_factory.mktemp("www")
    (root / "weights.h5").write_bytes(PAYLOAD)

    def handler(*args, **kwargs):
        return _Quiet(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    """A proxy from the environment must not intercept the loopback server."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.h5"  # nothing listens there any more


@pytest.mark.parametrize("file_hash", [None, SHA256, MD5])
def test_download_writes_the_file_and_nothing_else(server, tmp_path, capsys, file_hash):
    target = tmp_path / "sub" / "w.h5"
    assert dl.download(f"{server}/weights.h5", str(target), file_hash=file_hash,
                       verbose=0) == str(target)
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in target.parent.iterdir()] == ["w.h5"]  # no .part left
    assert capsys.readouterr().out == ""


def test_wrong_hash_fails_and_leaves_nothing(server, tmp_path):
    target = tmp_path / "w.h5"
    with pytest.raises(dl.DownloadError) as info:
        dl.download(f"{server}/weights.h5", str(target), file_hash="0" * 64, verbose=0)
    assert f"{server}/weights.h5" in str(info.value) and str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_http_error_names_url_and_path(server, tmp_path):
    target = tmp_path / "w.h5"
    with pytest.raises(dl.DownloadError, match="404") as info:
        dl.download(f"{server}/missing.h5", str(target), verbose=0)
    assert str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_what_to_do(tmp_path):
    url, target = closed_port_url(), tmp_path / "w.h5"
    with pytest.raises(dl.DownloadError) as info:
        dl.download(url, str(target), verbose=0)
    message = str(info.value)
    assert url in message and "download it by hand" in message and str(target) in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_stale_part_file_is_never_trusted(server, tmp_path):
    target = tmp_path / "w.h5"
    (tmp_path / "w.h5.part").write_bytes(b"half a fi")
    dl.download(f"{server}/weights.h5", str(target), verbose=0)
    assert target.read_bytes() == PAYLOAD and not (tmp_path / "w.h5.part").exists()


def test_an_existing_file_is_used_and_never_overwritten(tmp_path):
    target = tmp_path / "w.h5"
    target.write_bytes(PAYLOAD)
    # Nothing listens at the URL: an existing file must not need the network.
    assert dl.download(closed_port_url(), str(target), file_hash=SHA256) == str(target)
    target.write_bytes(b"the user's own file")
    with pytest.raises(dl.DownloadError, match="left as it is"):
        dl.download(closed_port_url(), str(target), file_hash=SHA256)
    assert target.read_bytes() == b"the user's own file"


def test_download_trained_weights_goes_through_it(server, tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "COCO_MODEL_URL", f"{server}/weights.h5")
    target = tmp_path / "mask_rcnn_coco.h5"
    utils.download_trained_weights(str(target), verbose=0)
    assert target.read_bytes() == PAYLOAD
    monkeypatch.setattr(utils, "COCO_MODEL_URL", closed_port_url())
    with pytest.raises(RuntimeError, match="by hand") as info:
        utils.download_trained_weights(str(tmp_path / "other.h5"), verbose=0)
    assert str(tmp_path / "other.h5") in str(info.value)


def test_coco_sample_download_failure_is_one_input_error(tmp_path):
    from samples.coco import coco
    from mrcnn.cli import InputError

    with pytest.raises(InputError) as info:
        coco._download(closed_port_url(), str(tmp_path / "val2017.zip"))
    assert str(tmp_path / "val2017.zip") in str(info.value)


# ------------------------------------------------------------------------------ integrity

@pytest.mark.parametrize("url", ["http://example.com/weights.h5", "ftp://example.com/w.h5",
                                 "file:///etc/passwd", "example.com/weights.h5"])
def test_only_https_is_fetched(tmp_path, url):
    target = tmp_path / "w.h5"
    with pytest.raises(dl.DownloadError, match="only https") as info:
        dl.download(url, str(target), verbose=0)
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_trained_weights_checks_the_hash_it_is_given(server, tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "COCO_MODEL_URL", f"{server}/weights.h5")
    target = tmp_path / "mask_rcnn_coco.h5"
    with pytest.raises(RuntimeError, match="by hand"):
        utils.download_trained_weights(str(target), verbose=0, file_hash="1" * 64)
    assert not target.exists()
    utils.download_trained_weights(str(target), verbose=0, file_hash=SHA256)
    assert target.read_bytes() == PAYLOAD


def write_zip(path, members) -> str:
    """members: (name, data, symlink?) triples."""
    import stat
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data, link in members:
            info = zipfile.ZipInfo(name)
            if link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return str(path)


@pytest.mark.parametrize("bad, fragment", [
    (("/tmp/evil.txt", b"x", False), "absolute path"),
    (("../evil.txt", b"x", False), "leaves the folder"),
    (("a/../../evil.txt", b"x", False), "leaves the folder"),
    (("link", b"../../outside", True), "symlink"),
    (("link", b"/etc", True), "symlink to the absolute path"),
])
def test_archive_with_a_member_leaving_the_folder_writes_nothing(tmp_path, bad, fragment):
    archive = write_zip(tmp_path / "a.zip", [("good/first.txt", b"ok", False), bad])
    target = tmp_path / "out"
    with pytest.raises(dl.UnsafePathError, match=fragment) as info:
        dl.extract_zip(archive, str(target))
    assert "a.zip" in str(info.value) and repr(bad[0]) in str(info.value)
    assert not (target / "good").exists()  # checked before anything is unpacked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]


def test_archive_through_a_symlink_already_there_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "coco"
    target.mkdir()
    (target / "val2017").symlink_to(outside)
    archive = write_zip(tmp_path / "a.zip", [("val2017/1.jpg", b"x", False)])
    with pytest.raises(dl.UnsafePathError, match="val2017/1.jpg"):
        dl.extract_zip(archive, str(target))
    assert list(outside.iterdir()) == []


def test_sound_archive_unpacks(tmp_path):
    archive = write_zip(tmp_path / "a.zip", [("val2017/1.jpg", b"one", False),
                                             ("val2017/sub/link", b"../1.jpg", True)])
    names = dl.extract_zip(archive, str(tmp_path / "coco"))
    assert names == ["val2017/1.jpg", "val2017/sub/link"]
    assert (tmp_path / "coco" / "val2017" / "1.jpg").read_bytes() == b"one"


def test_coco_unzip_refuses_a_hostile_archive_as_one_input_error(tmp_path):
    from mrcnn.cli import InputError
    from samples.coco import coco

    archive = write_zip(tmp_path / "annotations.zip", [("../../x.json", b"{}", False)])
    with pytest.raises(InputError, match="annotations.zip.*x.json"):
        coco._unzip(archive, str(tmp_path / "coco"))
    assert not (tmp_path / "x.json").exists()
