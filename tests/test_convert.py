"""Converting the paper's enwik8 Model state dict gives a fairseq model with the same log-probs."""
import math
import random
import re

import pytest
import sru
import torch
from conftest import assert_close
from fairseq import checkpoint_utils
from torch import nn

from fairseq_srupp.convert import convert_enwik8, corpus_vocabulary
from fairseq_srupp.convert.__main__ import main as convert_main
from fairseq_srupp.models.srupp_lm import causal_mask
from test_srupp_parity import randomize_


class PaperEnwik8Model(nn.Module):
    """The paper's char-level model as spec §3/§5 describe it (reference for the converter)."""

    def __init__(self, vocab_size, d, proj, layers, every):
        super().__init__()
        self.embedding_layer = nn.Embedding(vocab_size, d)
        self.rnn = sru.SRUpp(d, d, proj, num_layers=layers, layer_norm=True, attn_layer_norm=True,
                             attention_every_n_layers=every, highway_bias=-2)
        self.output_layer = nn.Linear(d, vocab_size)

    def log_probs(self, ids):  # ids (L, B) → (L, B, V)
        h, _, _ = self.rnn(self.embedding_layer(ids), attn_mask=causal_mask(ids.shape[0]))
        return torch.log_softmax(self.output_layer(h), dim=-1)


@pytest.fixture
def corpus_and_dict(tmp_path):
    rng = random.Random(0)
    alphabet = b"abcdefgh ij.\n\xc3\xa9"
    corpus = bytes(rng.choice(alphabet) for _ in range(3000))
    (tmp_path / "corpus.raw").write_bytes(corpus)
    symbols = ["{}".format(b) for b in sorted(set(corpus)) if b != 10]
    rng.shuffle(symbols)  # a fairseq dict is ordered by frequency, not by byte value
    symbols.append("200")  # a byte the paper model never saw
    (tmp_path / "dict.txt").write_text("".join("{} {}\n".format(s, 100 - i) for i, s in enumerate(symbols)))
    return tmp_path, corpus


@pytest.mark.parametrize("every", [1, 2])
def test_converted_model_matches_paper_log_probs(corpus_and_dict, every):
    tmp_path, corpus = corpus_and_dict
    vocab = corpus_vocabulary(tmp_path / "corpus.raw")
    assert vocab == sorted(set(corpus))
    paper = PaperEnwik8Model(len(vocab), 16, 8, 3, every)
    randomize_(paper.rnn)
    torch.save(paper.state_dict(), str(tmp_path / "paper.pt"))
    out = convert_enwik8(tmp_path / "paper.pt", tmp_path / "dict.txt", tmp_path / "converted.pt",
                         corpus=tmp_path / "corpus.raw")

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(out)], arg_overrides={"data": str(tmp_path)})
    model = models[0].eval()
    dictionary = task.target_dictionary
    text = corpus[100:160]
    paper_ids = torch.tensor([vocab.index(b) for b in text]).view(-1, 1)
    fairseq_ids = torch.tensor([dictionary.eos() if b == 10 else dictionary.index(str(b)) for b in text]).view(1, -1)
    assert dictionary.unk() not in fairseq_ids
    with torch.no_grad():
        ref = paper.eval().log_probs(paper_ids)[:, 0]  # (L, V_paper)
        mine = model.get_normalized_probs(model(fairseq_ids), log_probs=True)[0]  # (L, V_fairseq)
    columns = torch.tensor([dictionary.eos() if b == 10 else dictionary.index(str(b)) for b in vocab])
    assert_close("log-probs of every paper byte", mine[:, columns], ref, 1e-5)
    others = [i for i in range(len(dictionary)) if i not in set(columns.tolist())]
    assert mine[:, others].exp().max() < 1e-30  # specials and unseen bytes take no probability


def test_missing_bytes_are_reported(corpus_and_dict):
    tmp_path, corpus = corpus_and_dict
    vocab = sorted(set(corpus))
    paper = PaperEnwik8Model(len(vocab), 16, 8, 2, 1)
    torch.save(paper.state_dict(), str(tmp_path / "paper.pt"))
    lines = (tmp_path / "dict.txt").read_text().splitlines()
    (tmp_path / "dict.txt").write_text("\n".join(l for l in lines if not l.startswith("97 ")) + "\n")
    rc = convert_main(["enwik8", "--paper-checkpoint", str(tmp_path / "paper.pt"), "--dict", str(tmp_path / "dict.txt"),
                       "--out", str(tmp_path / "c.pt"), "--corpus", str(tmp_path / "corpus.raw")])
    assert rc == 2 and not (tmp_path / "c.pt").exists()
    with pytest.raises(ValueError, match=r"lacks 1 byte\(s\).*\[97\]"):
        convert_enwik8(tmp_path / "paper.pt", tmp_path / "dict.txt", tmp_path / "c.pt", vocabulary=vocab)


def test_wrong_vocabulary_size_is_reported(corpus_and_dict):
    tmp_path, corpus = corpus_and_dict
    vocab = sorted(set(corpus))
    paper = PaperEnwik8Model(len(vocab), 16, 8, 2, 1)
    torch.save(paper.state_dict(), str(tmp_path / "paper.pt"))
    with pytest.raises(ValueError, match="vocabulary rows"):
        convert_enwik8(tmp_path / "paper.pt", tmp_path / "dict.txt", tmp_path / "c.pt", vocabulary=vocab[:-1])


def paper_stateful_bits(paper, ids, window):
    """The paper's evaluation of one contiguous stream: segments of ``window`` positions, c and the
    layer inputs carried, each query seeing itself and the ``window`` positions before it.
    ``ids`` (N + 1,) paper indices, the first being the newline before the text; returns the mean
    negative log2-probability of ids[1:]."""
    from test_stateful_task import paper_same_length_mask

    full_mask = paper_same_length_mask(window)
    hidden, memory = torch.zeros(len(paper.rnn.rnn_lst), 1, paper.embedding_layer.embedding_dim), None
    nll, inputs, targets = 0.0, ids[:-1], ids[1:]
    with torch.no_grad():
        for start in range(0, len(targets), window):
            x = inputs[start:start + window].view(-1, 1)  # (T, 1)
            mem_len = 0 if memory is None else memory[0].shape[0]
            mask = full_mask[mem_len:mem_len + x.shape[0], :mem_len + x.shape[0]]
            h, hidden, saved = paper.rnn(paper.embedding_layer(x), hidden, memory=memory, attn_mask=mask)
            memory = saved["saved_inputs"]
            lprobs = torch.log_softmax(paper.output_layer(h[:, 0]), dim=-1)
            nll -= lprobs.gather(1, targets[start:start + window].view(-1, 1)).sum().item()
    return nll / len(targets) / math.log(2)


def test_converted_checkpoint_evaluates_as_the_paper(corpus_and_dict):
    """The checkpoint stores the stateful task with the paper's window and one stream: README's
    fairseq-eval-lm command, and the checkpoint's own task with no flags at all, both give the
    paper's carried-state loss, not the zero-state blocks of language_modeling."""
    from fairseq_cli.eval_lm import eval_lm

    from cli_utils import EVAL_LOSS, USER_DIR, run_tool
    from fairseq_srupp.data.char_level import write_byte_tokens
    from fairseq_srupp.data.preprocess import fairseq_preprocess

    tmp_path, corpus = corpus_and_dict
    vocab = corpus_vocabulary(tmp_path / "corpus.raw")
    paper = PaperEnwik8Model(len(vocab), 16, 8, 2, 1)
    randomize_(paper.rnn)
    paper.eval()
    torch.save(paper.state_dict(), str(tmp_path / "paper.pt"))
    default = convert_enwik8(tmp_path / "paper.pt", tmp_path / "dict.txt", tmp_path / "default.pt", vocabulary=vocab)
    cfg = torch.load(str(default), weights_only=True)["cfg"]
    assert cfg["task"]["_name"] == "srupp_language_modeling"
    assert cfg["model"]["eval_window"] == 3072 and not cfg["task"]["eval_unroll_size"]  # one window, the model's
    assert cfg["dataset"]["batch_size"] == 1

    window = 24  # the paper's 3072 would need a 3072-byte test split for one segment
    text = corpus[1000:1130]
    text = text[:text.rindex(b"\n") + 1]  # whole lines: the stream is exactly these bytes
    files = {}
    for split in ("train", "valid", "test"):
        files[split] = tmp_path / "{}.tokens".format(split)
        write_byte_tokens(text, files[split])
    data_bin = fairseq_preprocess(tmp_path / "bin", files, srcdict=tmp_path / "dict.txt")
    out = convert_enwik8(tmp_path / "paper.pt", tmp_path / "dict.txt", tmp_path / "converted.pt", vocabulary=vocab,
                         eval_window=window)
    ids = torch.tensor([vocab.index(b) for b in b"\n" + text])
    reference = paper_stateful_bits(paper, ids, window)
    blocks = paper_stateful_bits(paper, ids, len(ids))  # sanity: the window matters on this text
    assert abs(blocks - reference) > 1e-3

    log = run_tool("fairseq-eval-lm", data_bin, "--user-dir", USER_DIR, "--task", "srupp_language_modeling",
                   "--path", out, "--gen-subset", "test", "--batch-size", 1,
                   "--cpu", "--num-workers", 0)
    assert float(EVAL_LOSS.findall(log)[-1]) == pytest.approx(reference, abs=2e-4)

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(out)], arg_overrides={"data": str(data_bin)})
    task.load_dataset("test")
    batches = task.eval_lm_dataloader(task.dataset("test"), batch_size=cfg.dataset.batch_size, num_workers=0)
    with torch.no_grad():
        result = eval_lm([models[0].eval()], task.source_dictionary, batches)
    assert result["loss"] == pytest.approx(reference, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one `error:` line each, and nothing lost
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def paper_case(corpus_and_dict):
    """(tmp_path, CLI arguments of a conversion that works, minus --out)."""
    tmp_path, corpus = corpus_and_dict
    torch.manual_seed(0)
    torch.save(PaperEnwik8Model(len(set(corpus)), 16, 8, 2, 1).state_dict(), str(tmp_path / "paper.pt"))
    args = ["enwik8", "--paper-checkpoint", str(tmp_path / "paper.pt"), "--dict", str(tmp_path / "dict.txt"),
            "--corpus", str(tmp_path / "corpus.raw"), "--eval-window", "32"]
    return tmp_path, args


def error_line(capsys, argv):
    """The one stderr line of a refused conversion."""
    assert convert_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_out_never_replaces_an_input_or_a_different_file(paper_case, capsys):
    tmp_path, args = paper_case
    paper_bytes = (tmp_path / "paper.pt").read_bytes()
    for flags in ([], ["--force"]):  # the input is lost either way: --force does not allow it
        line = error_line(capsys, args + ["--out", str(tmp_path / "." / "paper.pt")] + flags)
        assert "is the --paper-checkpoint file" in line and "give another --out" in line, line
    assert (tmp_path / "paper.pt").read_bytes() == paper_bytes

    trained = tmp_path / "checkpoint_best.pt"  # e.g. a trained checkpoint
    trained.write_bytes(b"weights and optimizer state")
    line = error_line(capsys, args + ["--out", str(trained)])
    assert "{} already exists and differs".format(trained) in line and "--force" in line, line
    assert trained.read_bytes() == b"weights and optimizer state"

    assert convert_main(args + ["--out", str(tmp_path / "c.pt")]) == 0
    converted = (tmp_path / "c.pt").read_bytes()
    assert convert_main(args + ["--out", str(tmp_path / "c.pt")]) == 0  # a re-run writes the same bytes
    assert (tmp_path / "c.pt").read_bytes() == converted
    assert convert_main(args + ["--out", str(trained), "--force"]) == 0
    assert trained.read_bytes() == converted
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_interrupted_conversion_keeps_the_old_file(paper_case, monkeypatch):
    tmp_path, _ = paper_case
    out = tmp_path / "c.pt"
    out.write_bytes(b"the previous checkpoint")

    def interrupted_save(state, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr("fairseq_srupp.convert.checkpoint.torch.save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        convert_enwik8(tmp_path / "paper.pt", tmp_path / "dict.txt", out, corpus=tmp_path / "corpus.raw",
                       overwrite=True)
    assert out.read_bytes() == b"the previous checkpoint"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_output_rows_differing_from_the_embedding_rows_are_named(paper_case, capsys):
    tmp_path, args = paper_case
    state = torch.load(str(tmp_path / "paper.pt"), weights_only=True)
    rows = state["embedding_layer.weight"].shape[0]
    state["output_layer.weight"] = torch.zeros(rows + 3, 16)
    torch.save(state, str(tmp_path / "paper.pt"))
    line = error_line(capsys, args + ["--out", str(tmp_path / "c.pt")])
    assert "embedding_layer.weight has {} rows, output_layer.weight has {} rows".format(rows, rows + 3) in line, line


def test_empty_corpus_is_named(paper_case, capsys):
    tmp_path, args = paper_case
    (tmp_path / "corpus.raw").write_bytes(b"")
    line = error_line(capsys, args + ["--out", str(tmp_path / "c.pt")])
    assert "the corpus {} is empty".format(tmp_path / "corpus.raw") in line, line


@pytest.mark.parametrize("content, where", [
    (b"97 5\nfoo bar baz\n", r"line 2 \('foo bar baz'\): .*'baz' is not a count"),
    (b"97 5\n98\n", r"line 2 \('98'\): expected '<symbol> <count>'"),
    (b"97 5\n\n98 4\n", r"line 2 \(''\): an empty line"),
    (b"97 5\n98 4\n97 3\n", r"line 3 \('97 3'\): '97' is already on line 1"),
    (b"</s> 5\n", r"line 1 \('</s> 5'\): '</s>' is a fairseq special symbol"),
    (b"97 5\n\xff 4\n", r"is not UTF-8 text \(byte 0xff on line 2\)"),
], ids=["not-a-count", "no-count", "empty-line", "duplicate", "special-symbol", "not-utf8"])
def test_malformed_dict_names_the_file_and_line(paper_case, capsys, content, where):
    tmp_path, args = paper_case
    (tmp_path / "bad.txt").write_bytes(content)
    args[args.index("--dict") + 1] = str(tmp_path / "bad.txt")
    line = error_line(capsys, args + ["--out", str(tmp_path / "c.pt")])
    assert re.search(r"--dict {} {}".format(re.escape(str(tmp_path / "bad.txt")), where), line), line


def test_num_heads_not_dividing_the_checkpoint_width_names_the_converter_flag(paper_case, capsys):
    tmp_path, args = paper_case
    line = error_line(capsys, args + ["--out", str(tmp_path / "c.pt"), "--num-heads", "3"])
    assert "--num-heads 3 does not divide the checkpoint's attention width 8" in line and "1, 2, 4, 8" in line, line
    assert "--proj-size" not in line
