"""Getting the official archives and checking that they are the official ones."""
import contextlib
import hashlib
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, Optional, Tuple

from .files import CHUNK, PathLike, atomic_file, existing_file
from .prep import PrepError, count, log


def no_network(url: str, reason: object, option: str = "--archive") -> PrepError:
    return PrepError("no network: download {} yourself and pass {} PATH ({})".format(url, option, reason))


def download(url: str, dest: PathLike, option: str = "--archive") -> Path:
    """Fetch ``url`` into ``dest`` (via a temporary file), printing progress; ``option`` is the
    command-line option that takes a copy downloaded by hand (named when there is no network)."""
    dest = Path(dest)
    log("downloading {} -> {}".format(url, dest))
    request = urllib.request.Request(url, headers={"User-Agent": "fairseq-srupp-data-scripts"})
    with atomic_file(dest) as out:
        try:
            response = urllib.request.urlopen(request, timeout=60)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise no_network(url, getattr(err, "reason", err), option) from None
        with response:
            total = int(response.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            while True:
                try:
                    chunk = response.read(CHUNK)
                except OSError as err:
                    raise no_network(url, err, option) from None
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if time.time() - last > 5:
                    last = time.time()
                    log("  {} / {} bytes".format(count(done), count(total) if total else "?"))
            if total and done != total:
                raise no_network(url, "connection closed after {} of {} bytes".format(count(done), count(total)),
                                 option)
    return dest


def obtain_archive(archive: Optional[PathLike], url: str, out_dir: PathLike) -> Tuple[Path, bool]:
    """The archive to read: ``--archive`` if given (it must exist), else a download into
    ``OUT/downloads/`` (kept, and not fetched again while it is there). Returns (path, downloaded)."""
    if archive is not None:
        missing = "archive {} not found: download {} and pass its path with --archive".format(archive, url)
        return existing_file(archive, "--archive", missing), False
    name = url.rstrip("/").rsplit("/", 1)[-1] or "archive"
    dest = Path(out_dir) / "downloads" / name
    if dest.is_file():
        log("using the earlier download {}".format(dest))
    else:
        download(url, dest)
    return dest, True


def redo_hint(url: str, downloaded: bool, path: Path) -> str:
    if downloaded:
        return "delete {} and rerun to download it again, or download {} yourself and pass --archive PATH".format(
            path, url)
    return "download {} again and pass it with --archive".format(url)


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, what: str, size: Optional[int], sha256: Optional[str], hint: str,
               skip_hint: str = "pass --skip-checksum for a custom file") -> None:
    """Compare ``path`` with the known size and SHA-256 of the official file."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise PrepError("{} has {} bytes but the official {} has {} (truncated or a different file): {}; or {}".format(
            path, count(actual), what, count(size), hint, skip_hint))
    if sha256 is not None:
        log("checking the SHA-256 of {} ({} bytes)".format(path, count(actual)))
        digest = file_digest(path)
        if digest != sha256:
            raise PrepError("{} has SHA-256 {} but the official {} has {} (corrupt or a different file): {}; or {}"
                            .format(path, digest, what, sha256, hint, skip_hint))


@contextlib.contextmanager
def archive_errors(path: Path, hint: str) -> Iterator[None]:
    """Turn the errors of a truncated or corrupt zip/tar(.gz) into one actionable message."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError) as err:
        raise PrepError("{} is truncated or corrupt ({}): {}".format(path, err or type(err).__name__, hint)) from None
    except OSError as err:  # gzip.BadGzipFile and friends
        if isinstance(err, (FileNotFoundError, PermissionError)) or err.errno is not None:
            raise
        raise PrepError("{} is truncated or corrupt ({}): {}".format(path, err, hint)) from None


def open_zip(path: Path, hint: str) -> zipfile.ZipFile:
    with archive_errors(path, hint):
        return zipfile.ZipFile(path)


def zip_member(zf: zipfile.ZipFile, name: str, path: Path, hint: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(name)
    except KeyError:
        names = zf.namelist()
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise PrepError("{} has no member {} (it holds: {}): {}".format(path, name, shown or "nothing", hint)) from None


def copy_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: PathLike, path: Path, hint: str) -> int:
    """Extract one member to ``dest`` atomically (zipfile checks its CRC); return its line count."""
    lines = 0
    with archive_errors(path, hint), zf.open(info) as src, atomic_file(dest) as out:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            lines += chunk.count(b"\n")
            out.write(chunk)
    return lines
