"""``--bpe srupp_bytes``: text ↔ byte tokens, as char_level tokenizes corpora."""
import random
from argparse import Namespace

import pytest
import torch
from fairseq.data import Dictionary, encoders

import fairseq_srupp.data  # noqa: F401  (registers srupp_bytes)
from fairseq_srupp.data.byte_bpe import SRUppBytesBPE, SRUppBytesConfig
from fairseq_srupp.data.char_level import byte_token_lines

SAMPLES = ["hello world", "Hi", "é", "café au lait", "日本語", "emoji 😀👍🏽 end", "  two  spaces  ",
           "tab\there", "a\nb", "line\n", "\n\nx\n", "", " "]


@pytest.fixture(scope="module")
def bpe():
    return encoders.build_bpe(Namespace(bpe="srupp_bytes"))


def char_level_tokens(text):
    """The symbols fairseq reads for ``text`` written by char_level: each line, then ``</s>``."""
    tokens = []
    for line in byte_token_lines(text.encode("utf-8")):
        tokens += line.split() + ["</s>"]
    return tokens


def test_encode_examples(bpe):
    assert bpe.encode("hi") == "104 105"
    assert bpe.encode("a b") == "97 32 98"
    assert bpe.encode("é") == "195 169"
    assert bpe.encode("日本") == "230 151 165 230 156 172"
    assert bpe.encode("😀") == "240 159 152 128"
    assert bpe.encode("a\nb") == "97 </s> 98"
    assert bpe.encode("") == ""


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(bpe, text):
    encoded = bpe.encode(text)
    assert all(t == "</s>" or (t.isdigit() and 0 <= int(t) < 256) for t in encoded.split())
    assert len(encoded.split()) == len(text.encode("utf-8"))
    assert bpe.decode(encoded) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_agrees_with_char_level(bpe, text):
    # A corpus file holds whole lines: char_level ends the last line with a newline, which fairseq
    # reads as </s>, the symbol encode() gives every newline byte.
    as_file = text if text == "" or text.endswith("\n") else text + "\n"
    assert bpe.encode(as_file).split() == char_level_tokens(text)
    # A prompt without its newline: encode() plus the </s> Dictionary.encode_line appends.
    if not text.endswith("\n"):
        assert bpe.encode(text).split() + ["</s>"] == char_level_tokens(text + "\n")


def test_dictionary_indices_match_corpus_indices(bpe):
    text = "déjà vu\n日本 😀\n"
    d = Dictionary()
    for line in byte_token_lines(text.encode("utf-8")):
        d.encode_line(line, add_if_not_exist=True)
    from_corpus = torch.cat([d.encode_line(line, add_if_not_exist=False)
                             for line in byte_token_lines(text.encode("utf-8"))])
    from_bpe = d.encode_line(bpe.encode(text.rstrip("\n")), add_if_not_exist=False)
    assert from_bpe.tolist() == from_corpus.tolist()
    assert d.unk() not in from_bpe.tolist()
    # and back: Dictionary.string keeps inner </s> (newlines) only with include_eos
    assert bpe.decode(d.string(from_bpe, include_eos=True)) == text


def test_decode_eos_and_specials(bpe):
    assert bpe.decode("</s>") == "\n"
    assert bpe.decode("104 </s> 105 </s>") == "h\ni\n"
    assert bpe.decode("<s> 104 <pad> 105 <unk> madeupword0000 256 -1 <mask> 33") == "hi!"
    assert bpe.decode("") == ""


def test_decode_invalid_utf8_is_replaced(bpe):
    assert bpe.decode("104 195") == "h\ufffd"  # truncated multi-byte sequence
    assert bpe.decode("255 104") == "\ufffdh"


def test_bytes_read_with_surrogateescape_encode_to_themselves(bpe):
    # fairseq-interactive's stdin is read with surrogateescape under this BPE: any bytes, valid
    # UTF-8 or not, must reach the model as exactly their byte tokens (as char_level writes them).
    rng = random.Random(0)
    for _ in range(50):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))).replace(b"\n", b" ")
        assert bpe.encode(data.decode("utf-8", errors="surrogateescape")).split() == next(byte_token_lines(data)).split()
    assert bpe.encode("a\udcff\u00e9") == "97 255 195 169"


def test_is_beginning_of_word(bpe):
    assert bpe.is_beginning_of_word("32")  # space: starts " word", as in GPT-2
    assert bpe.is_beginning_of_word("</s>") and bpe.is_beginning_of_word("9")
    for special in ("<s>", "<pad>", "<unk>", "madeupword0001"):
        assert bpe.is_beginning_of_word(special)
    assert not bpe.is_beginning_of_word("104")
    assert not bpe.is_beginning_of_word("169")  # UTF-8 continuation byte


def test_registration_with_namespace_and_config():
    assert encoders.BPE_REGISTRY["srupp_bytes"] is SRUppBytesBPE
    from_namespace = encoders.build_bpe(Namespace(bpe="srupp_bytes"))
    from_name = encoders.build_bpe("srupp_bytes")
    from omegaconf import OmegaConf
    cfg = OmegaConf.structured(SRUppBytesConfig())
    cfg._name = "srupp_bytes"
    from_config = encoders.build_bpe(cfg)
    for bpe in (from_namespace, from_name, from_config):
        assert isinstance(bpe, SRUppBytesBPE)
        assert bpe.decode(bpe.encode("ok ✓")) == "ok ✓"
    assert encoders.build_bpe(Namespace(bpe=None)) is None


def test_command_line_config_builds_it():
    """``fairseq-interactive ... --bpe srupp_bytes``: parsed, turned into the hydra config, built."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_interactive_generation_parser()
    args = options.parse_args_and_arch(
        parser, ["data-bin", "--task", "language_modeling", "--bpe", "srupp_bytes", "--path", "model.pt"])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.bpe._name == "srupp_bytes"
    bpe = encoders.build_bpe(cfg.bpe)
    assert isinstance(bpe, SRUppBytesBPE) and bpe.encode("hé\nx") == "104 195 169 </s> 120"
