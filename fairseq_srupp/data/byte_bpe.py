"""``--bpe srupp_bytes``: plain text in and out of the byte-level (char-level) models.

The char-level models of this project see one token per byte, written as its decimal value
(``"104 105"`` for ``"hi"``), and the newline byte is the end-of-sentence symbol ``</s>``
(:mod:`fairseq_srupp.data.char_level`). With this BPE, ``fairseq-interactive`` and the hub
interface take and return ordinary text::

    fairseq-interactive DATA --user-dir fairseq_srupp --task language_modeling \\
        --path CKPT --bpe srupp_bytes

* ``encode("hé")`` → ``"104 195 169"`` (UTF-8 bytes; a space is ``"32"``, a newline ``"</s>"``); bytes
  that are not UTF-8 on ``fairseq-interactive``'s stdin reach the model as the bytes they are
  (read with ``surrogateescape``, so ``encode("a\\udcff")`` → ``"97 255"``);
* ``decode("104 195 169 </s>")`` → ``"hé\\n"``; ``<s>``, ``<pad>``, ``<unk>`` and any other symbol that
  is not a byte value are dropped, and invalid UTF-8 becomes U+FFFD.
"""
import io
import sys
from dataclasses import dataclass

from fairseq.data.encoders import register_bpe
from fairseq.dataclass import FairseqDataclass

from .char_level import EOS, NEWLINE, byte_value

# Bytes that separate words; a word starts at one of them (as a GPT-2 token starts with its space).
WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")


def _pass_undecodable_stdin_bytes() -> None:
    # fairseq-interactive reads prompts from sys.stdin, which is strict UTF-8: one invalid byte
    # would end the session with a UnicodeDecodeError. With surrogateescape each such byte comes
    # through as a lone surrogate, which encode() turns back into that very byte.
    stdin = sys.stdin
    if isinstance(stdin, io.TextIOWrapper) and stdin.errors == "strict":
        stdin.reconfigure(errors="surrogateescape")


@dataclass
class SRUppBytesConfig(FairseqDataclass):
    """No options: the mapping between text and byte tokens is fixed."""


@register_bpe("srupp_bytes", dataclass=SRUppBytesConfig)
class SRUppBytesBPE(object):
    def __init__(self, cfg=None, *unused):
        self.cfg = cfg
        _pass_undecodable_stdin_bytes()

    @staticmethod
    def encode(x: str) -> str:
        """Text → space-separated decimal UTF-8 byte values; each newline byte becomes ``</s>``.

        Agrees with :func:`fairseq_srupp.data.char_level.byte_token_lines`: the lines it yields,
        each followed by the ``</s>`` fairseq appends to a line, are the tokens of ``encode(x)``
        followed by the ``</s>`` fairseq's ``Dictionary.encode_line`` appends.
        """
        return " ".join(EOS if b == NEWLINE else str(b) for b in x.encode("utf-8", errors="surrogateescape"))

    @staticmethod
    def decode(x: str) -> str:
        """Byte tokens → text: ``</s>`` is a newline, tokens that are not bytes are ignored."""
        data = bytearray()
        for token in x.split():
            value = byte_value(token)
            if value is not None:
                data.append(value)
        return data.decode("utf-8", errors="replace")

    @staticmethod
    def is_beginning_of_word(x: str) -> bool:
        """Whether token ``x`` begins a word (fairseq's whole-word masking asks this per symbol).

        As for GPT-2's byte BPE, where a word's token carries its leading space, a word here is a
        whitespace byte (space, tab, newline/``</s>``, ...) followed by the bytes up to the next
        one; so whitespace bytes begin words, and so do special symbols, as in fairseq's other BPEs.
        """
        value = byte_value(x)
        return value is None or value in WHITESPACE
