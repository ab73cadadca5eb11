"""Shared machinery of the dataset scripts in ``data_scripts/``.

Each script is a short list of *steps* (download, verify, extract, tokenize, binarize). A step
records what it consumed in a stamp, ``OUT/.stamps/<step>.json``: its parameters and a fingerprint
(path, size, modification time) of every input file, plus the fingerprints of what it wrote. A rerun
skips a step whose inputs and outputs still match its stamp, and redoes it (and, through the
changed fingerprints of its outputs, every later step) when anything changed. Every output is
written under a temporary name and renamed into place once complete, so an interrupted run leaves
finished steps intact and no half-written file under a final name.

User errors (missing or damaged archive, missing member, empty split, wrong size, no network)
raise :class:`PrepError`; :func:`cli` prints them as one ``error: ...`` line and exits with 2.
"""
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]
SPLITS = ("train", "valid", "test")
# Bump when a step's output for the same inputs changes, so old stamps stop matching.
STAMP_VERSION = 1
TMP_MARK = ".tmp-srupp"
CHUNK = 1 << 22


class PrepError(Exception):
    """A problem the user can fix; its message is one line saying what is wrong and what to do."""


def log(message: str) -> None:
    print(message, flush=True)


def cli(main: Callable[[], None]) -> int:
    """Run ``main``; turn user errors into one ``error:`` line on stderr and exit code 2."""
    try:
        main()
    except PrepError as err:
        print("error: {}".format(err), file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished steps are kept; rerun the same command to continue", file=sys.stderr)
        return 130
    except OSError as err:  # disk full, permission denied, ...: not a bug, but nothing to retry either
        where = " ({})".format(err.filename) if getattr(err, "filename", None) else ""
        print("error: {}{}".format(err.strerror or err, where), file=sys.stderr, flush=True)
        return 2
    return 0


def count(n: int) -> str:
    return "{:,}".format(n)


# ---------------------------------------------------------------------------------------------
# Files: fingerprints and atomic writes
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Steps and their stamps
# ---------------------------------------------------------------------------------------------


class Steps:
    """Run named steps in ``out_dir``, skipping those whose stamp matches inputs and outputs."""

    def __init__(self, out_dir: PathLike, force: bool = False):
        self.out_dir = Path(out_dir)
        self.stamp_dir = self.out_dir / ".stamps"
        self.ran: List[str] = []
        self.skipped: List[str] = []
        clean_stale_temps(self.out_dir)
        if force and self.stamp_dir.is_dir():
            log("--force: forgetting the finished steps recorded in {}".format(self.stamp_dir))
            remove(self.stamp_dir)

    def stamp_path(self, name: str) -> Path:
        return self.stamp_dir / "{}.json".format(name)

    def _outputs(self, outputs: Sequence[Path]) -> Dict[str, object]:
        return {str(Path(p)): fingerprint(p) for p in outputs}

    def is_done(self, name: str, inputs: Dict[str, object], outputs: Sequence[Path]) -> bool:
        stamp = self.stamp_path(name)
        if not stamp.is_file():
            return False
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            return False
        if recorded.get("version") != STAMP_VERSION or recorded.get("inputs") != _normalize(inputs):
            return False
        if not all(Path(p).exists() for p in outputs):
            return False
        return recorded.get("outputs") == _normalize(self._outputs(outputs))

    def run(self, name: str, inputs: Dict[str, object], outputs: Sequence[PathLike],
            action: Callable[[], None]) -> bool:
        """Run ``action`` unless step ``name`` already ran with these inputs; return whether it ran.

        ``outputs`` are the files or directories the action writes (each atomically); the step
        counts as done only while all of them exist unchanged.
        """
        outputs = [Path(p) for p in outputs]
        if self.is_done(name, inputs, outputs):
            log("skipping {}: already done with the same inputs (stamp {})".format(name, self.stamp_path(name)))
            self.skipped.append(name)
            return False
        stamp = self.stamp_path(name)
        if stamp.exists():
            stamp.unlink()  # the old outputs no longer count as done, whatever happens next
        log("running {}".format(name))
        started = time.time()
        action()
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise RuntimeError("step {} did not write {}".format(name, ", ".join(missing)))
        record = {"version": STAMP_VERSION, "step": name, "inputs": _normalize(inputs),
                  "outputs": _normalize(self._outputs(outputs)), "seconds": round(time.time() - started, 3)}
        with atomic_file(stamp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        self.ran.append(name)
        return True


def _normalize(value):
    return json.loads(json.dumps(value, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Download and checks
# ---------------------------------------------------------------------------------------------


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
        path = Path(archive)
        if not path.is_file():
            raise PrepError("archive {} not found: download {} and pass its path with --archive".format(path, url))
        return path, False
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


def count_lines(path: PathLike) -> int:
    lines = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            lines += chunk.count(b"\n")
    return lines


def require_nonempty(split: str, path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise PrepError("the {} split ({}) is empty: every split needs text; check the input".format(split, path))


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


# ---------------------------------------------------------------------------------------------
# fairseq-preprocess
# ---------------------------------------------------------------------------------------------


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def fairseq_preprocess(data_bin: PathLike, files: Dict[str, Path], srcdict: Optional[PathLike] = None,
                       threshold: int = 0, workers: int = 1,
                       finish: Optional[Callable[[Path], None]] = None) -> Path:
    """``fairseq-preprocess --only-source`` of ``files`` (split name → text file) into ``data_bin``.

    Runs in this process (it imports fairseq once, not twice) into a temporary directory that
    replaces ``data_bin`` when complete; ``finish(tmp_dir)`` may edit the result before that.
    The dictionary is ``srcdict`` verbatim if given, else built from the train split keeping
    words seen at least ``threshold`` times (fairseq's ``--thresholdsrc``; 0 keeps every word).
    """
    import logging

    from fairseq import options
    from fairseq_cli import preprocess

    for split in SPLITS:
        require_nonempty(split, files[split])
    with atomic_dir(data_bin) as tmp:
        args = ["--only-source", "--trainpref", files["train"], "--validpref", files["valid"],
                "--testpref", files["test"], "--destdir", tmp, "--workers", workers]
        if srcdict is not None:
            args += ["--srcdict", srcdict]
        elif threshold > 0:
            args += ["--thresholdsrc", threshold]
        args = [str(a) for a in args]
        shown = [str(data_bin) if a == str(tmp) else a for a in args]
        log("$ fairseq-preprocess " + " ".join(shlex.quote(a) for a in shown))
        parsed = options.get_preprocessing_parser().parse_args(args)
        fairseq_logger = logging.getLogger("fairseq_cli.preprocess")
        handlers = list(fairseq_logger.handlers)
        try:
            preprocess.main(parsed)
        except (AssertionError, ValueError, RuntimeError, FileExistsError) as err:  # e.g. a malformed --srcdict
            raise PrepError("fairseq-preprocess failed: {}".format(err or type(err).__name__)) from None
        finally:
            for handler in fairseq_logger.handlers[len(handlers):]:  # its log file handler, per call
                fairseq_logger.removeHandler(handler)
                handler.close()
        if finish is not None:
            finish(tmp)
    return Path(data_bin)


def drop_final_eos(prefix: PathLike) -> None:
    """Remove the ``</s>`` that fairseq appends to the last line of a split whose text does not
    end with a newline (byte-level data: there it stands for a newline byte that is not there).

    Rewrites the ``.idx`` with the last item one token shorter and truncates the ``.bin``.
    """
    import numpy as np
    from fairseq.data.indexed_dataset import MMapIndexedDataset, data_file_path, index_file_path

    prefix = str(prefix)
    index = MMapIndexedDataset.Index(index_file_path(prefix))
    sizes = np.array(index.sizes, dtype=np.int64)
    dtype = index.dtype
    del index
    if len(sizes) == 0 or sizes[-1] < 1:
        return
    sizes[-1] -= 1
    if sizes[-1] == 0:
        sizes = sizes[:-1]
    tmp = temp_path(index_file_path(prefix))
    with MMapIndexedDataset.Index.writer(str(tmp), dtype) as writer:
        writer.write(sizes.tolist())
    os.replace(tmp, index_file_path(prefix))
    bin_path = data_file_path(prefix)
    os.truncate(bin_path, int(sizes.sum()) * np.dtype(dtype).itemsize)


def describe_data_bin(data_bin: PathLike) -> List[str]:
    """One line for the dictionary and one per split: what ``fairseq-train`` will see."""
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDataset, index_file_path

    data_bin = Path(data_bin)
    d = Dictionary.load(str(data_bin / "dict.txt"))
    padding = sum(1 for s in d.symbols if s.startswith("madeupword"))
    lines = ["dictionary: {} symbols ({} special + {} from the data{})".format(
        count(len(d)), d.nspecial, count(len(d) - d.nspecial - padding),
        " + {} padding to a multiple of 8".format(padding) if padding else "")]
    for split in SPLITS:
        index = MMapIndexedDataset.Index(index_file_path(str(data_bin / split)))
        lines.append("{}: {} lines, {} tokens".format(split, count(len(index)), count(int(index.sizes.sum()))))
        del index
    return lines


def report(data_bin: PathLike, steps: Steps) -> None:
    for line in describe_data_bin(data_bin):
        log(line)
    if steps.ran:
        log("done: {} ready for fairseq-train (ran: {})".format(data_bin, ", ".join(steps.ran)))
    else:
        log("done: nothing to do, {} is up to date".format(data_bin))


def dict_inputs(srcdict: Optional[PathLike]) -> Optional[Dict[str, object]]:
    return fingerprint(srcdict) if srcdict is not None else None


def require_file(path: Optional[PathLike], option: str) -> Optional[Path]:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise PrepError("{} {} not found: give the path of an existing file".format(option, path))
    return path


# ---------------------------------------------------------------------------------------------
# Dictionaries from vocabulary files
# ---------------------------------------------------------------------------------------------

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def vocab_file_to_dict(vocab: Path, dest: PathLike, aliases: Dict[str, str]) -> int:
    """Write a fairseq ``dict.txt`` from a vocabulary file with one word per line (first field;
    a second field, if an integer, is kept as the count, e.g. ``1b_word_vocab.txt``'s ``word count``).

    Words named in ``aliases`` (e.g. ``<S>`` → ``</s>``, ``<UNK>`` → ``<unk>``) and fairseq's own
    special symbols are left out: fairseq's dictionary already holds them at indices 0-3. The other
    words keep the file's order; a word listed again is skipped, as Transformer-XL's vocabulary
    does. Returns the number of words written.
    """
    words, seen, repeated = [], set(), 0
    with open(vocab, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            word = fields[0]
            if word in aliases or word in FAIRSEQ_SPECIALS:
                continue
            if word in seen:
                repeated += 1
                continue
            seen.add(word)
            freq = fields[1] if len(fields) > 1 and fields[1].isdigit() else "1"
            words.append("{} {}\n".format(word, freq))
    if repeated:
        log("{}: skipped {} repeated word(s), keeping each word's first line".format(vocab, count(repeated)))
    if not words:
        raise PrepError("{} holds no words: pass a vocabulary with one word per line".format(vocab))
    with atomic_file(dest, "w", encoding="utf-8") as out:
        out.writelines(words)
    return len(words)


# ---------------------------------------------------------------------------------------------
# Byte-level and word-level binarization steps shared by the scripts
# ---------------------------------------------------------------------------------------------


def byte_level_steps(steps: Steps, out_dir: PathLike, read_parts: Callable[[], Sequence[bytes]],
                     source: Dict[str, object], vocab: str = "train", srcdict: Optional[Path] = None,
                     workers: int = 1) -> Path:
    """Tokenize three byte strings (train, valid, test; from ``read_parts()``) one token per byte
    into ``OUT/{split}.tokens`` and binarize them into ``OUT/data-bin``.

    ``vocab``: ``"corpus"`` builds the dictionary from every byte of all three splits (the paper's
    vocabulary), ``"train"`` from the train split (fairseq's default; other bytes become
    ``<unk>``); ``srcdict`` overrides both. The binarized splits hold exactly one token per byte:
    a split that does not end with a newline loses the ``</s>`` that fairseq adds to its last line.
    ``source`` describes the input for the stamp.
    """
    from fairseq_srupp.data.char_level import byte_counts, byte_dictionary_lines, write_byte_tokens

    out_dir = Path(out_dir)
    tokens = {split: out_dir / "{}.tokens".format(split) for split in SPLITS}
    layout = out_dir / "splits.json"
    corpus_dict = out_dir / "dict.corpus.txt"

    def tokenize():
        parts = dict(zip(SPLITS, read_parts()))
        for split in SPLITS:
            if not parts[split]:
                raise PrepError("the {} split is empty: every split needs at least one byte".format(split))
        out_dir.mkdir(parents=True, exist_ok=True)
        info = {}
        for split in SPLITS:
            part = parts[split]
            tmp = temp_path(tokens[split])
            try:
                lines = write_byte_tokens(part, tmp)
                os.replace(tmp, tokens[split])
            finally:
                if tmp.exists():
                    tmp.unlink()
            info[split] = {"bytes": len(part), "lines": lines, "ends_with_newline": part.endswith(b"\n")}
            log("{}: {} bytes, {} lines -> {}".format(split, count(len(part)), count(lines), tokens[split]))
        counts = [sum(c) for c in zip(*(byte_counts(parts[s]) for s in SPLITS))]
        with atomic_file(corpus_dict, "w", encoding="ascii") as f:
            f.write("".join(line + "\n" for line in byte_dictionary_lines(counts)))
        log("corpus vocabulary: {} distinct bytes".format(sum(1 for c in counts if c)))
        with atomic_file(layout, "w") as f:
            json.dump(info, f, indent=1)

    steps.run("tokenize", dict(source=source), list(tokens.values()) + [layout, corpus_dict], tokenize)

    data_bin = out_dir / "data-bin"
    dictionary = srcdict if srcdict is not None else (corpus_dict if vocab == "corpus" else None)

    def binarize():
        info = json.loads(layout.read_text())

        def finish(tmp: Path):
            import numpy as np
            from fairseq.data.indexed_dataset import MMapIndexedDataset, index_file_path

            for split in SPLITS:
                if not info[split]["ends_with_newline"]:
                    drop_final_eos(tmp / split)
                index = MMapIndexedDataset.Index(index_file_path(str(tmp / split)))
                n = int(np.asarray(index.sizes).sum())
                del index
                if n != info[split]["bytes"]:
                    raise RuntimeError("{}: {} tokens for {} bytes".format(split, n, info[split]["bytes"]))

        fairseq_preprocess(data_bin, tokens, srcdict=dictionary, workers=workers, finish=finish)

    inputs = {split: fingerprint(path) for split, path in tokens.items()}
    inputs.update(layout=fingerprint(layout), dictionary=dict_inputs(dictionary), vocab=vocab)
    steps.run("binarize", inputs, [data_bin], binarize)
    return data_bin


def word_level_binarize(steps: Steps, out_dir: PathLike, files: Dict[str, Path], srcdict: Optional[Path] = None,
                        threshold: int = 0, workers: int = 1) -> Path:
    """Binarize whitespace-tokenized text files (one sentence or paragraph per line) into
    ``OUT/data-bin`` with a dictionary from ``srcdict`` or from the train split (``threshold``)."""
    data_bin = Path(out_dir) / "data-bin"
    inputs = {split: fingerprint(path) for split, path in files.items()}
    inputs.update(dictionary=dict_inputs(srcdict), threshold=threshold if srcdict is None else None)
    steps.run("binarize", inputs, [data_bin],
              lambda: fairseq_preprocess(data_bin, files, srcdict=srcdict, threshold=threshold, workers=workers))
    return data_bin
