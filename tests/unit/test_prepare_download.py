"""Download helper without network: a local file URL and a loopback HTTP server."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sdpo_lightning.data.prepare import PrepareError, default_cache_dir, download_dataset
from sdpo_lightning.data.prepare.cli import main
from sdpo_lightning.data.prepare.download import REMOTE, fetch
from sdpo_lightning.data.prepare.samples import write_goodreads, write_movielens_100k


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def serve(directory: Path, lifetime: float = 30.0):
    """Serve ``directory`` on 127.0.0.1 (random port); stops itself after ``lifetime`` s."""
    _QuietHandler.requests = []
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    stopper = threading.Timer(lifetime, server.shutdown)
    stopper.daemon = True
    stopper.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture()
def ml_archive(tmp_path) -> tuple[Path, str]:
    """A small ``ml-100k.zip`` in the official layout and its SHA-256."""
    source = write_movielens_100k(tmp_path / "src" / "ml-100k")
    archive = tmp_path / "site" / "ml-100k.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("u.data", "u.item"):
            zf.write(source / name, f"ml-100k/{name}")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_fetch_local_file_url_verifies_and_reuses_cache(tmp_path, ml_archive):
    archive, sha = ml_archive
    logs: list[str] = []
    cache = tmp_path / "cache"
    path = fetch(REMOTE["movielens-100k"], cache, url=archive.as_uri(), sha256=sha, log=logs.append)
    assert path == cache / "ml-100k.zip" and path.read_bytes() == archive.read_bytes()
    archive.unlink()  # cached copy is verified and reused without any source
    assert (
        fetch(REMOTE["movielens-100k"], cache, url=archive.as_uri(), sha256=sha, log=logs.append)
        == path
    )
    assert logs[-1].startswith("using cached")


def test_cli_download_over_loopback_http_then_cached(tmp_path, ml_archive, capsys):
    archive, sha = ml_archive
    cache = tmp_path / "cache"
    with serve(archive.parent) as base:
        args = [
            "ml-100k",
            "--download",
            "--url",
            f"{base}/ml-100k.zip",
            "--sha256",
            sha,
            "--cache-dir",
            str(cache),
            "--timeout",
            "10",
        ]
        assert main(args + ["--out", str(tmp_path / "o1")]) == 0
        assert main(args + ["--out", str(tmp_path / "o2")]) == 0
        assert _QuietHandler.requests == ["/ml-100k.zip"]  # the second run used the cache
    assert (cache / "movielens-100k" / "ml-100k" / "u.data").is_file()
    assert (tmp_path / "o1" / "train.json").read_bytes() == (
        tmp_path / "o2" / "train.json"
    ).read_bytes()
    assert "users          12" in capsys.readouterr().out


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, ml_archive):
    archive, _ = ml_archive
    cache = tmp_path / "cache"
    with serve(archive.parent) as base:
        with pytest.raises(PrepareError, match="checksum mismatch"):  # pinned official hash
            download_dataset("movielens-100k", cache, url=f"{base}/ml-100k.zip", log=print)
        with pytest.raises(PrepareError, match="HTTP 404"):
            download_dataset("movielens-100k", cache, url=f"{base}/missing.zip", log=print)
    assert not any(cache.iterdir())


def test_offline_gives_a_clear_error(tmp_path, capsys):
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-1m.zip"
    with pytest.raises(PrepareError, match="Are you offline.*files.grouplens.org"):
        download_dataset("movielens-1m", tmp_path, url=url, timeout=5, log=print)
    rc = main(
        [
            "ml-1m",
            "--download",
            "--url",
            url,
            "--cache-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--timeout",
            "5",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "offline" in err and "Traceback" not in err


def test_goodreads_download_from_folder_url_prints_unpinned_hash(tmp_path):
    site = write_goodreads(tmp_path / "site", genre="poetry")
    logs: list[str] = []
    with serve(site) as base:
        folder = download_dataset(
            "goodreads", tmp_path / "cache", genre="poetry", url=base, log=logs.append
        )
    assert sorted(p.name for p in folder.iterdir()) == [
        "goodreads_books_poetry.json.gz",
        "goodreads_interactions_poetry.json.gz",
    ]
    assert sum("no pinned checksum" in line and "sha256=" in line for line in logs) == 2
    with pytest.raises(PrepareError, match="needs --genre"):
        download_dataset("goodreads", tmp_path / "cache", log=logs.append)


def test_bad_archives_and_cache_dir_default(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "evil.zip", "w") as zf:
        zf.writestr("../escape.txt", "x")
    (site / "junk.zip").write_bytes(b"not a zip")
    for name, message in (("evil.zip", "unsafe path"), ("junk.zip", "not a valid zip")):
        sha = hashlib.sha256((site / name).read_bytes()).hexdigest()
        with pytest.raises(PrepareError, match=message):
            download_dataset(
                "lastfm",
                tmp_path / name,
                url=(site / name).as_uri(),
                sha256=sha,
                log=lambda _m: None,
            )
    assert not (tmp_path / "escape.txt").exists()
    monkeypatch.setenv("SDPO_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SDPO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "sdpo_lightning"
