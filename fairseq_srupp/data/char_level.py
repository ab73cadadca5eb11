"""Byte-level text for fairseq: one token per byte, written as its decimal value.

A newline byte becomes a line break, which fairseq turns into ``</s>``; so ``</s>`` *is* the
newline symbol of every char-level model here (as in the paper's enwik8 vocabulary, where the
newline byte is an ordinary symbol). Example: ``b"Hi\\nyo"`` → lines ``"72 105"`` and ``"121 111"``.
"""
from pathlib import Path
from typing import Iterable, Iterator, Union

NEWLINE = 10


def byte_token_lines(data: bytes) -> Iterator[str]:
    """Yield one line of space-separated decimal byte values per text line (no trailing newline)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start a new one
    for line in lines:
        yield " ".join(str(b) for b in line)


def write_byte_tokens(data: bytes, path: Union[str, Path]) -> int:
    """Write ``data`` as byte tokens to ``path``; return the number of lines written."""
    n = 0
    with open(path, "w", encoding="ascii") as out:
        for line in byte_token_lines(data):
            out.write(line + "\n")
            n += 1
    return n


def tokens_to_bytes(tokens: Iterable[str]) -> bytes:
    """Inverse of the encoding for a stream of symbols: decimal strings and ``</s>`` (newline).

    Other special symbols (``<unk>``, ``<pad>``, ``<s>``) are dropped.
    """
    out = bytearray()
    for tok in tokens:
        if tok == "</s>":
            out.append(NEWLINE)
        elif tok.isdigit() and int(tok) < 256:
            out.append(int(tok))
    return bytes(out)
