"""Files of the dataset scripts: fingerprints, atomic writes, checked inputs.

Every output is written under a temporary name (marked ``TMP_MARK``) and renamed into place once
complete, so an interrupted run leaves no half-written file under a final name; the next run
removes what an interrupted one left (:func:`clean_stale_temps`).
"""
import codecs
import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Union

from fairseq_srupp.errors import special_file_kind

from .prep import PrepError, count, log

PathLike = Union[str, Path]
TMP_MARK = ".tmp-srupp"
CHUNK = 1 << 22


def fingerprint(path: PathLike) -> Dict[str, object]:
    """Identity of a file (or of every file under a directory) for the stamps."""
    path = Path(path)
    if path.is_dir():
        files = {}
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            st = sub.stat()
            files[sub.relative_to(path).as_posix()] = [st.st_size, st.st_mtime_ns]
        return {"path": str(path.resolve()), "files": files}
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def temp_path(path: PathLike) -> Path:
    path = Path(path)
    return path.with_name(".{}{}-{}".format(path.name, TMP_MARK, os.getpid()))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb", **kwargs) -> Iterator:
    """Open a temporary file next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    remove(tmp)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(".{}{}-old-{}".format(path.name, TMP_MARK, os.getpid()))
            os.replace(path, old)
            os.replace(tmp, path)
            remove(old)
        else:
            os.replace(tmp, path)
    finally:
        remove(tmp)


def clean_stale_temps(out_dir: PathLike) -> None:
    """Remove temporary files and directories that an interrupted earlier run left in ``out_dir``."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for path in sorted(out_dir.rglob("*" + TMP_MARK + "*"), key=lambda p: len(p.parts), reverse=True):
        if TMP_MARK in path.name:
            log("removing {} (left by an interrupted run)".format(path))
            remove(path)


def existing_file(path: PathLike, option: str, missing: Optional[str] = None) -> Path:
    """``path`` as given with ``option``, which must name a file.

    ``missing`` is the message when nothing is there (default: "OPTION PATH not found: give the
    path of an existing file"); a directory gets its own message, as it is the common slip.
    """
    path = Path(path)
    if path.is_dir():
        raise PrepError("{} {} is a directory: give the path of a file{}".format(
            option, path, " inside it" if any(p.is_file() for p in path.iterdir()) else ""))
    if not path.is_file():
        if path.exists():  # /dev/null, a FIFO, ...: there, but "not found" would send the user looking for it
            raise PrepError("{} {} is not a regular file ({}): give the path of a file".format(
                option, path, special_file_kind(path)))
        raise PrepError(missing or "{} {} not found: give the path of an existing file".format(option, path))
    return path


def output_dir(path: PathLike, option: str = "--out") -> Path:
    """``path`` as given with ``option``, the directory the outputs go into: it may not exist yet,
    but an existing file there is refused (``mkdir`` would only say "File exists")."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PrepError("{} {} is {}, not a directory: {} names the directory the outputs go into "
                        "(created if missing); give another path".format(
                            option, path, "a file" if path.is_file() else special_file_kind(path), option))
    return path


def existing_dir(path: PathLike, option: str, hint: str) -> Path:
    """``path`` as given with ``option``, which must name a directory (``hint``: what it holds)."""
    path = Path(path)
    if path.is_file():
        raise PrepError("{} {} is a file, not a directory: {}".format(option, path, hint))
    if not path.is_dir():
        raise PrepError("{} {} not found: {}".format(option, path, hint))
    return path


def optional_file(path: Optional[PathLike], option: str) -> Optional[Path]:
    return None if path is None else existing_file(path, option)


def require_nonempty(split: str, path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise PrepError("the {} split ({}) is empty: every split needs text; check the input".format(split, path))


def count_lines(path: PathLike) -> int:
    lines = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            lines += chunk.count(b"\n")
    return lines


def concatenate(sources: Iterable[Path], dest: Path, check: Optional[Callable[[int], None]] = None) -> int:
    """Concatenate files into ``dest`` atomically (adding a final newline where one is missing);
    return the number of lines written. ``check(lines)`` may raise to keep ``dest`` unwritten."""
    lines = 0
    with atomic_file(dest) as out:
        for src in sources:
            last = b"\n"
            with open(src, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    lines += chunk.count(b"\n")
                    out.write(chunk)
                    last = chunk[-1:]
            if last != b"\n":
                out.write(b"\n")
                lines += 1
        if check is not None:
            check(lines)
    return lines


UTF8_HINT = "word-level data must be UTF-8 text: convert it first (e.g. iconv -f latin1 -t utf-8)"


def check_utf8_text(chunks: Iterable[bytes], where: str, hint: str = UTF8_HINT) -> None:
    """Refuse bytes that are not UTF-8 text (invalid UTF-8 or a NUL byte), naming the first place.

    Word-level tokens are words of text: fairseq-preprocess would fail on invalid UTF-8 with an
    unrelated error ("negative seek position") or, once decoded with replacement, silently merge
    different words into U+FFFD.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0
    for chunk in chunks:
        nul = chunk.find(b"\0")
        held = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk's end
        try:
            decoder.decode(chunk if nul < 0 else chunk[:nul])
        except UnicodeDecodeError as err:
            # err.object is the held bytes followed by this chunk
            raise PrepError("{} is not UTF-8 text (byte 0x{:02x} at offset {}, line {}): {}".format(
                where, err.object[err.start], count(offset - held + err.start),
                count(lines + err.object[:err.start].count(b"\n") + 1), hint)) from None
        if nul >= 0:
            raise PrepError("{} holds a NUL byte (offset {}, line {}), so it is binary, not text: {}".format(
                where, count(offset + nul), count(lines + chunk[:nul].count(b"\n") + 1), hint))
        lines += chunk.count(b"\n")
        offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise PrepError("{} is not UTF-8 text (it ends inside a multi-byte character, at offset {}): {}".format(
            where, count(offset), hint)) from None


def file_chunks(path: PathLike) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")
