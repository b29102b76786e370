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
