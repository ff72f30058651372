"""Download helper: official archive URLs, checksum verification, a cache folder.

``download_dataset("movielens-100k")`` fetches the official archive into the cache
(``$SDPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/sdpo_lightning``, else
``~/.cache/sdpo_lightning``), verifies it, unpacks it and returns the folder to pass to
the reader. A file already in the cache is verified and reused, so an archive copied there
by hand works offline. Without a network the error says where to get the file.

Checksums: a pinned SHA-256 is checked where known (``--sha256`` overrides or supplies
one); otherwise GroupLens' published MD5 is checked; otherwise the computed SHA-256 is
printed so it can be pinned with ``--sha256`` next time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdpo_lightning.data.prepare.rawio import PrepareError

__all__ = ["RemoteFile", "REMOTE", "default_cache_dir", "fetch", "download_dataset"]

GOODREADS_BASE = "https://mcauleylab.ucsd.edu/public_datasets/gdrive/goodreads/byGenre/"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file and its known checksums."""

    url: str
    sha256: str | None = None
    md5: str | None = None

    @property
    def filename(self) -> str:
        """The file name part of the URL."""
        return self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


REMOTE: dict[str, RemoteFile] = {
    "movielens-100k": RemoteFile(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
    ),
    "movielens-1m": RemoteFile(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
    ),
    "lastfm": RemoteFile(
        "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        sha256="6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c",
    ),
}


def default_cache_dir() -> Path:
    """The cache folder for downloaded raw data."""
    if os.environ.get("SDPO_CACHE_DIR"):
        return Path(os.environ["SDPO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sdpo_lightning"


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _verify(path: Path, remote: RemoteFile, sha256: str | None, log: Callable[[str], None]) -> bool:
    """True when the file matches the expected checksum (or none is known)."""
    actual_sha, actual_md5 = _digests(path)
    expected = (sha256 or remote.sha256 or "").lower()
    if expected:
        return actual_sha == expected
    if remote.md5:
        return actual_md5 == remote.md5
    log(
        f"note: no pinned checksum for {remote.filename}; sha256={actual_sha} "
        "(pass --sha256 to pin it)"
    )
    return True


def fetch(
    remote: RemoteFile,
    cache_dir: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Return the verified file in the cache, downloading it if needed.

    Args:
        remote: The file's official URL and checksums.
        cache_dir: Cache folder.
        url: Mirror URL to use instead of ``remote.url`` (same content expected).
        sha256: Expected SHA-256, overriding the pinned one.
        timeout: Socket timeout in seconds.
        log: Progress messages.

    Raises:
        PrepareError: No network / HTTP error / checksum mismatch.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / remote.filename
    if target.is_file():
        if _verify(target, remote, sha256, log):
            log(f"using cached {target}")
            return target
        log(f"cached {target} fails the checksum; downloading again")
    source = url or remote.url
    part = target.with_name(target.name + ".part")
    log(f"downloading {source}")
    try:
        with (
            urllib.request.urlopen(source, timeout=timeout) as response,
            open(part, "wb") as handle,
        ):
            shutil.copyfileobj(response, handle, 1 << 20)
    except urllib.error.HTTPError as err:
        part.unlink(missing_ok=True)
        raise PrepareError(f"cannot download {source}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise PrepareError(
            f"cannot download {source}: {reason}. Are you offline? Download {remote.url} by "
            f"hand and either place it in {cache_dir} or unpack it and pass --raw DIR"
        ) from None
    if not _verify(part, remote, sha256, log):
        actual = _digests(part)[0]
        part.unlink(missing_ok=True)
        raise PrepareError(
            f"checksum mismatch for {source}: sha256={actual}, expected "
            f"{sha256 or remote.sha256 or 'md5 ' + str(remote.md5)}"
        )
    os.replace(part, target)
    return target


def _extract(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = Path(member).parts
                if member.startswith(("/", "\\")) or ".." in parts:
                    raise PrepareError(f"unsafe path {member!r} in {archive}")
            zf.extractall(dest)
    except zipfile.BadZipFile:
        raise PrepareError(f"{archive} is not a valid zip archive") from None


def download_dataset(
    dataset: str,
    cache_dir: Path | None = None,
    *,
    genre: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Fetch (or reuse) a dataset's official files and return the raw folder for its reader.

    Args:
        dataset: Canonical name (``movielens-100k``, ``movielens-1m``, ``lastfm``,
            ``goodreads``).
        cache_dir: Cache folder; :func:`default_cache_dir` when None.
        genre: Goodreads genre (required for Goodreads).
        url: Mirror: the archive URL, or for Goodreads the folder URL holding both files.
        sha256: Expected archive SHA-256 (archives only).
        timeout: Socket timeout in seconds.
        log: Progress messages.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if dataset == "goodreads":
        if not genre:
            raise PrepareError("goodreads --download needs --genre (e.g. poetry)")
        if sha256:
            raise PrepareError("--sha256 applies to single-archive datasets, not goodreads")
        folder = cache / "goodreads"
        base = url.rstrip("/") + "/" if url else GOODREADS_BASE
        for kind in ("interactions", "books"):
            name = f"goodreads_{kind}_{genre}.json.gz"
            fetch(
                RemoteFile(GOODREADS_BASE + name), folder, url=base + name, timeout=timeout, log=log
            )
        return folder
    if dataset not in REMOTE:
        raise PrepareError(f"no download known for {dataset!r}")
    archive = fetch(REMOTE[dataset], cache, url=url, sha256=sha256, timeout=timeout, log=log)
    folder = cache / dataset
    _extract(archive, folder)
    return folder
