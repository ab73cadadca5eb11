"""Byte-level text for fairseq: one token per byte, written as its decimal value.

A newline byte becomes a line break, which fairseq turns into ``</s>``; so ``</s>`` *is* the
newline symbol of every char-level model here (as in the paper's enwik8 vocabulary, where the
newline byte is an ordinary symbol). Example: ``b"Hi\\nyo"`` → lines ``"72 105"`` and ``"121 111"``.
"""
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from .prep import SPLITS
from .vocab import EOS_ID, FAIRSEQ_SPECIALS

NEWLINE = 10
EOS = FAIRSEQ_SPECIALS[EOS_ID]  # "</s>": the symbol of the newline byte


# The token of every byte value, looked up instead of formatted: tokenizing enwik8's 100M bytes
# this way takes seconds rather than minutes.
BYTE_TOKENS = tuple(str(b) for b in range(256))


def byte_value(symbol: str) -> Optional[int]:
    """The byte a dictionary symbol stands for (``"104"`` → 104, ``"</s>"`` → 10), or None for
    symbols that are no byte value (``<s>``, ``<pad>``, ``<unk>``, fairseq's padding words, ...)."""
    if symbol == EOS:
        return NEWLINE
    if symbol.isascii() and symbol.isdigit():  # isdigit alone accepts "²", which int() refuses
        value = int(symbol)
        if value < 256:
            return value
    return None


def byte_token_lines(data: bytes) -> Iterator[str]:
    """Yield one line of space-separated decimal byte values per text line (no trailing newline)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start a new one
    for line in lines:
        yield " ".join(map(BYTE_TOKENS.__getitem__, line))


def write_byte_tokens(data: bytes, path: Union[str, Path]) -> int:
    """Write ``data`` as byte tokens to ``path``; return the number of lines written."""
    n = 0
    with open(path, "w", encoding="ascii") as out:
        for line in byte_token_lines(data):
            out.write(line + "\n")
            n += 1
    return n


def byte_counts(data: bytes) -> List[int]:
    """How often each byte value 0..255 occurs in ``data``."""
    import numpy as np

    return np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256).tolist()


def byte_dictionary_lines(counts: List[int]) -> List[str]:
    """fairseq ``dict.txt`` lines (``"token count"``) for every byte that occurs, most frequent first.

    The newline byte is left out: it is fairseq's ``</s>``, which every dictionary already holds.
    Passed as ``--srcdict``, this gives a dictionary of exactly the corpus' bytes, as the paper's
    vocabulary (all distinct bytes of the whole enwik8 file, 205 with the newline).
    """
    present = [b for b in range(256) if counts[b] > 0 and b != NEWLINE]
    present.sort(key=lambda b: (-counts[b], b))
    return ["{} {}".format(BYTE_TOKENS[b], counts[b]) for b in present]


def split_bytes(data: bytes, valid_fraction: float = 0.05, test_fraction: float = 0.05) -> Tuple[bytes, bytes, bytes]:
    """Contiguous train/valid/test split of a corpus, cut at a line boundary near each cut point."""
    n = len(data)
    if n < 2000:
        raise ValueError("the corpus has {} bytes; at least 2000 are needed to split it".format(n))
    if not (0 < valid_fraction < 0.5 and 0 < test_fraction < 0.5):
        raise ValueError("valid and test fractions must be in (0, 0.5)")

    def cut(pos):
        nl = data.rfind(b"\n", 0, pos)
        return nl + 1 if nl > pos - 2000 else pos

    a = cut(int(n * (1 - valid_fraction - test_fraction)))
    b = cut(int(n * (1 - test_fraction)))
    return data[:a], data[a:b], data[b:]


def module_command(module: str, args: List[object]) -> List[str]:
    """``python -m module args`` with this interpreter, printed as a copy-pasteable shell line."""
    cmd = [sys.executable, "-m", module] + [str(a) for a in args]
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    return cmd


def run_streaming(module: str, args: List[object]) -> str:
    """Run ``python -m module args``, echoing its output live; return the output, raise on failure."""
    cmd = module_command(module, args)
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    if proc.returncode != 0:
        raise RuntimeError("{} failed with exit code {}".format(module, proc.returncode))
    return "".join(lines)


def binarize_char_corpus(data: bytes, out_dir: Union[str, Path], valid_fraction=0.05, test_fraction=0.05,
                         workers: int = 2) -> Path:
    """Split ``data``, write byte tokens to ``out_dir/{train,valid,test}.tokens`` and run
    ``fairseq-preprocess --only-source`` into ``out_dir/data-bin`` (replaced if it exists); return it."""
    from .preprocess import fairseq_preprocess

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = split_bytes(data, valid_fraction, test_fraction)
    print("{:,} bytes: train {:,} / valid {:,} / test {:,}".format(len(data), *(len(p) for p in parts)))
    files = {}
    for name, part in zip(SPLITS, parts):
        files[name] = out_dir / "{}.tokens".format(name)
        write_byte_tokens(part, files[name])
    return fairseq_preprocess(out_dir / "data-bin", files, workers=workers)
