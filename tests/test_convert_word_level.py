"""Converting the paper's WikiText-103 / Billion Word Model state dicts (spec §3, §5).

The reference below is a tiny model in the paper's layout and with its state-dict names:
``rnn`` (sru.SRUpp), ``output_layer.out_layers.{i}`` (the head scores the shortlist plus one logit
per tail cluster, tail cluster j in head column -j), ``output_layer.out_projs.{i}`` (n_d, e_i),
``embedding_layer.emb_projs.{i}`` (the very same ParameterList when tied) and input tables that are
the output tables, held in a plain list. The converted fairseq model must give every paper word
the paper's log-probability.
"""
import math
import subprocess
import sys

import pytest
import sru
import torch
import torch.nn.functional as F
from cli_utils import EVAL_LOSS, USER_DIR, run_tool
from conftest import assert_close
from fairseq import checkpoint_utils
from torch import nn

from fairseq_srupp.convert import convert_word_level, read_vocab_file, wt103_vocabulary
from fairseq_srupp.convert.__main__ import main as convert_main
from fairseq_srupp.convert.word_level import infer_div_value
from fairseq_srupp.models.srupp_lm import SRUppLanguageModel
from test_srupp_parity import randomize_

D, PROJ, N_E, DIV = 32, 16, 16, 2
CUTOFFS = [10, 30]
V = 60


class PaperAdaptiveLogSoftmax(nn.Module):
    def __init__(self, vocab_size, d, n_e, cutoffs, div):
        super().__init__()
        self.bounds = [0] + list(cutoffs) + [vocab_size]
        n_tails = len(cutoffs)
        widths = [int(n_e // div ** i) for i in range(n_tails + 1)]
        self.out_layers = nn.ModuleList(
            nn.Linear(widths[i], self.bounds[i + 1] - self.bounds[i] + (n_tails if i == 0 else 0))
            for i in range(n_tails + 1)
        )
        self.out_projs = nn.ParameterList(nn.Parameter(torch.randn(d, w) / w ** 0.5) for w in widths)

    def scores(self, i, hidden):
        return self.out_layers[i](hidden @ self.out_projs[i])

    def log_probs(self, hidden):  # (N, d) → (N, V)
        head = F.log_softmax(self.scores(0, hidden), dim=-1)
        parts = [head[:, : self.bounds[1]]]
        for i in range(1, len(self.bounds) - 1):
            cluster = head[:, head.shape[1] - i : head.shape[1] - i + 1]  # the paper's head_logprob[:, -i]
            parts.append(cluster + F.log_softmax(self.scores(i, hidden), dim=-1))
        return torch.cat(parts, dim=-1)


class PaperAdaptiveInput(nn.Module):
    def __init__(self, tables, projections, bounds, scale):
        super().__init__()
        self.tables = tables  # a plain list: not registered, as in the paper (no emb_weights keys)
        self.emb_projs = projections
        self.bounds = bounds
        self.scale = scale

    def forward(self, ids):
        flat = ids.reshape(-1)
        out = self.emb_projs[0].new_zeros(flat.shape[0], self.emb_projs[0].shape[0])
        for i in range(len(self.bounds) - 1):
            inside = (flat >= self.bounds[i]) & (flat < self.bounds[i + 1])
            rows = self.tables[i][flat[inside] - self.bounds[i]]
            out[inside] = rows @ self.emb_projs[i].t()
        return (out * self.scale).view(*ids.shape, -1)


class PaperWordLM(nn.Module):
    def __init__(self, depth, every, tied, layer_norm):
        super().__init__()
        self.rnn = sru.SRUpp(D, D, PROJ, num_layers=depth, layer_norm=layer_norm, attention_every_n_layers=every,
                             highway_bias=-2)
        self.output_layer = PaperAdaptiveLogSoftmax(V, D, N_E, CUTOFFS, DIV)
        if tied:
            projections = self.output_layer.out_projs
        else:
            projections = nn.ParameterList(nn.Parameter(torch.randn_like(p)) for p in self.output_layer.out_projs)
        self.embedding_layer = PaperAdaptiveInput(
            [layer.weight for layer in self.output_layer.out_layers], projections, self.output_layer.bounds,
            1.0 if layer_norm else D ** 0.5,
        )
        randomize_(self.rnn)
        std = 0.5 if layer_norm else 0.05  # without layer norm h grows with depth: keep log-probs moderate for fp32
        with torch.no_grad():
            for layer in self.output_layer.out_layers:
                layer.weight.normal_(0.0, std)
                layer.bias.normal_(0.0, 0.5)

    def log_probs(self, ids):  # (L, B) → (L, B, V)
        length, batch = ids.shape
        mask = torch.triu(torch.full((length, length), -10000.0), diagonal=1)
        h, _, _ = self.rnn(self.embedding_layer(ids), attn_mask=mask)
        return self.output_layer.log_probs(h.reshape(-1, D)).view(length, batch, V)


def write_corpus(path):
    """59 distinct words (the corpus's own '<unk>' among the frequent ones), so V = 60 with '<eos>'."""
    gen = torch.Generator().manual_seed(0)
    words = ["w{}".format(i) for i in range(58)]
    words.insert(3, "<unk>")
    tokens = []
    for rank, word in enumerate(words):
        tokens += [word] * max(1, 40 - rank)  # ties at the bottom: first-appearance order decides
    tokens = [tokens[i] for i in torch.randperm(len(tokens), generator=gen).tolist()]
    lines = [" ".join(tokens[i:i + 13]) for i in range(0, len(tokens), 13)]
    path.write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n", encoding="utf-8")
    return path


def lm1b_words(unk="<UNK>"):
    # 1b_word_vocab.txt style: its specials ('</S>' unused, '<S>' wraps every sentence, '<UNK>') in the head.
    return ["the", "</S>", ",", "<S>", "."] + [unk] + ["x{}".format(i) for i in range(V - 6)]


CASES = {
    # wt103: tied projections, state dict with both emb_projs and out_projs names; vocabulary from the corpus
    "wt103_tied_every1_ln": dict(dataset="wt103", depth=2, every=1, tied=True, layer_norm=True, vocab="corpus"),
    # wt103 without layer norm (embeddings scaled by sqrt(d)) and only out_projs kept; vocabulary as a list
    "wt103_tied_every2_noln": dict(dataset="wt103", depth=3, every=2, tied=True, layer_norm=False, vocab="list",
                                   drop_emb_projs=True),
    # lm1b: untied projections; vocabulary file with counts
    "lm1b_untied_every2_ln": dict(dataset="lm1b", depth=2, every=2, tied=False, layer_norm=True, vocab="file"),
    # a vocabulary without the unknown-word symbol: fairseq's <unk> gets no probability
    "lm1b_untied_no_unk": dict(dataset="lm1b", depth=2, every=1, tied=False, layer_norm=True, vocab="file",
                               unk_absent=True),
}


def make_case(tmp_path, case):
    paper = PaperWordLM(case["depth"], case["every"], case["tied"], case["layer_norm"]).eval()
    state = paper.state_dict()
    assert not any("emb_weights" in k for k in state)
    assert ("embedding_layer.emb_projs.0" in state) and ("output_layer.out_projs.0" in state)
    if case["tied"]:
        assert torch.equal(state["embedding_layer.emb_projs.2"], state["output_layer.out_projs.2"])
    if case.get("drop_emb_projs"):
        state = {k: v for k, v in state.items() if not k.startswith("embedding_layer.emb_projs.")}
    torch.save(state, str(tmp_path / "paper.pt"))
    if case["dataset"] == "wt103":
        words = wt103_vocabulary(write_corpus(tmp_path / "wiki.train.tokens"))
        assert len(words) == V and words[0] == "<eos>" and words.index("<unk>") < CUTOFFS[0]
        source = dict(corpus=tmp_path / "wiki.train.tokens") if case["vocab"] == "corpus" else dict(vocabulary=words)
    else:
        words = lm1b_words("y" if case.get("unk_absent") else "<UNK>")
        (tmp_path / "1b_word_vocab.txt").write_text("".join("{} {}\n".format(w, 1000 - i) for i, w in enumerate(words)))
        source = dict(vocab_file=tmp_path / "1b_word_vocab.txt")
    return paper, words, source


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_model_matches_paper_log_probs(tmp_path, name):
    case = CASES[name]
    paper, words, source = make_case(tmp_path, case)
    result = convert_word_level(tmp_path / "paper.pt", tmp_path / "out", dataset=case["dataset"], **source)
    assert result.tied_projections == case["tied"]
    extra = 3 if case.get("unk_absent") else 2  # + <s>, <pad> (+ <unk>); the paper's eos (and unk) became </s> (<unk>)
    assert result.num_symbols == V + extra
    assert result.cutoffs == [c + extra for c in CUTOFFS]

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(result.model)])
    model = models[0].eval()
    assert cfg.model.untie_adaptive_proj == (not case["tied"])
    assert cfg.model.eval_window == (2560 if case["dataset"] == "wt103" else 96)
    dictionary = task.target_dictionary
    eos, unk = ("<eos>", "<unk>") if case["dataset"] == "wt103" else ("<S>", "<UNK>")
    to_fairseq = []
    for word in words:
        if word == eos:
            to_fairseq.append(dictionary.eos())
        elif word == unk:
            to_fairseq.append(dictionary.unk())
        else:
            assert dictionary.index(word) != dictionary.unk(), word
            to_fairseq.append(dictionary.index(word))
    to_fairseq = torch.tensor(to_fairseq)
    no_mass = [dictionary.bos(), dictionary.pad()] + ([dictionary.unk()] if unk not in words else [])
    assert sorted(to_fairseq.tolist() + no_mass) == list(range(len(dictionary)))

    gen = torch.Generator().manual_seed(1)
    paper_ids = torch.randint(0, V, (24, 2), generator=gen)
    paper_ids[3, 0], paper_ids[7, 1] = words.index(eos), words.index(unk) if unk in words else 5
    paper_ids[10, 0], paper_ids[11, 1] = CUTOFFS[0], V - 1  # first and last tail words
    fairseq_ids = to_fairseq[paper_ids].t()  # (B, L)
    with torch.no_grad():
        ref = paper.log_probs(paper_ids).transpose(0, 1)  # (B, L, V_paper)
        net_output = model(fairseq_ids)
        mine = model.get_normalized_probs(net_output, log_probs=True)  # (B, L, V_fairseq)
        target = model.decoder.target_log_probs(net_output, fairseq_ids.roll(-1, 1))
    assert_close("log-probs of every paper word", mine[:, :, to_fairseq], ref, 1e-5)
    assert_close("target path", target, ref.gather(-1, paper_ids.t().roll(-1, 1).unsqueeze(-1)).squeeze(-1), 1e-5)
    assert mine[:, :, no_mass].exp().max() < 1e-30  # fairseq-only symbols: no probability

    # The dictionary binarizes text as the paper encodes it: its eos/unk symbols are fairseq's.
    line = " ".join([words[12], unk, words[CUTOFFS[1] + 1], "never-seen-word"])
    encoded = dictionary.encode_line(line, add_if_not_exist=False)
    assert encoded.tolist() == [to_fairseq[12], dictionary.unk(), to_fairseq[CUTOFFS[1] + 1], dictionary.unk(),
                                dictionary.eos()]


def test_wt103_vocabulary_order(tmp_path):
    text = "b a\tc  A\n\n   a b d d <eos>\nc e\n"
    (tmp_path / "train.txt").write_text(text, encoding="utf-8")
    # counts: b 2, a 2, c 2, A 1, d 2, <eos> 1, e 1 -- ties in order of first appearance, case kept,
    # '<eos>' first (the special) and not repeated when the text contains it.
    assert wt103_vocabulary(tmp_path / "train.txt") == ["<eos>", "b", "a", "c", "d", "A", "e"]


def test_read_vocab_file(tmp_path):
    (tmp_path / "v.txt").write_text("the 10\n<S> 9\nthe 3\n<UNK>\n", encoding="utf-8")
    assert read_vocab_file(tmp_path / "v.txt") == ["the", "<S>", "<UNK>"]  # a repeat is skipped, as the paper does
    (tmp_path / "v.txt").write_text("the 10\n\n<S> 9\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: empty line"):
        read_vocab_file(tmp_path / "v.txt")


def test_div_value_is_recovered_from_widths():
    assert infer_div_value([1024, 256, 64, 16]) == 4.0
    assert infer_div_value([16, 8, 4]) == 2.0
    div = infer_div_value([10, 3, 1])  # int(10 // 3**i); 10/3 itself would give width 0 for cluster 2
    assert [int(10 // div ** i) for i in range(3)] == [10, 3, 1]


@pytest.fixture
def wt103_case(tmp_path):
    paper, words, _ = make_case(tmp_path, CASES["wt103_tied_every1_ln"])
    return tmp_path, paper.state_dict(), words


def test_fairseq_tools_use_the_converted_model(tmp_path):
    """fairseq-preprocess --srcdict OUT/dict.txt, then fairseq-eval-lm: the paper model's loss; the hub scores."""
    paper, words, source = make_case(tmp_path, CASES["wt103_tied_every1_ln"])
    out = convert_word_level(tmp_path / "paper.pt", tmp_path / "out", **source)
    lines = (tmp_path / "wiki.train.tokens").read_text(encoding="utf-8").splitlines(keepends=True)[:40]
    (tmp_path / "test.txt").write_text("".join(lines), encoding="utf-8")
    run_tool("fairseq-preprocess", "--only-source", "--srcdict", out.dictionary, "--testpref", tmp_path / "test.txt",
             "--destdir", tmp_path / "bin", "--workers", 1)
    log = run_tool("fairseq-eval-lm", tmp_path / "bin", "--user-dir", USER_DIR, "--task", "language_modeling",
                   "--path", out.model, "--cpu", "--gen-subset", "test", "--tokens-per-sample", 64,
                   "--sample-break-mode", "none", "--batch-size", 4, "--num-workers", 0)
    # The same blocks through the paper model: each block of 64 tokens from zero state, its first
    # input the token before it (</s> = the paper's <eos> at the start).
    index = {w: i for i, w in enumerate(words)}
    stream = torch.tensor([index[w] for line in lines for w in line.split() + ["<eos>"]])
    nll = 0.0
    with torch.no_grad():
        for start in range(0, len(stream), 64):
            target = stream[start:start + 64]
            before = stream[start - 1:start] if start else torch.tensor([index["<eos>"]])
            lprobs = paper.log_probs(torch.cat([before, target[:-1]]).view(-1, 1))[:, 0]
            nll -= lprobs.gather(1, target.view(-1, 1)).sum().item()
    assert float(EVAL_LOSS.findall(log)[-1]) == pytest.approx(nll / len(stream) / math.log(2), abs=2e-4)

    hub = SRUppLanguageModel.from_pretrained(str(tmp_path / "out"))  # model.pt + dict.txt
    sentence = [words[5], "<unk>", words[40], words[59]]
    scores = hub.score(" ".join(sentence))["positional_scores"]
    ids = torch.tensor([index["<eos>"]] + [index[w] for w in sentence])
    with torch.no_grad():
        ref = paper.log_probs(ids[:-1].view(-1, 1))[:, 0].gather(1, ids[1:].view(-1, 1)).squeeze(1)
    assert_close("hub scores", scores[: len(sentence)], ref, 1e-5)


def test_wrong_vocabulary_length_is_reported(wt103_case):
    tmp_path, _, words = wt103_case
    with pytest.raises(ValueError, match="has 59 words but the checkpoint's clusters hold 60"):
        convert_word_level(tmp_path / "paper.pt", tmp_path / "out", vocabulary=words[:-1])


def test_eos_outside_the_head_is_reported(wt103_case):
    tmp_path, _, words = wt103_case
    words = list(words)
    words[0], words[40] = words[40], words[0]
    with pytest.raises(ValueError, match=r"'<eos>' \(row 40\) is not in the head cluster"):
        convert_word_level(tmp_path / "paper.pt", tmp_path / "out", vocabulary=words)
    with pytest.raises(ValueError, match="'<S>' is not in the paper vocabulary"):
        convert_word_level(tmp_path / "paper.pt", tmp_path / "out", dataset="lm1b", vocabulary=words)


@pytest.mark.parametrize("key", ["rnn.rnn_lst.1.weight_c", "output_layer.out_layers.2.bias"])
def test_missing_key_is_reported(wt103_case, key):
    tmp_path, state, words = wt103_case
    del state[key]
    torch.save(state, str(tmp_path / "broken.pt"))
    with pytest.raises(ValueError, match="missing key.*" + key.replace(".", r"\.")):
        convert_word_level(tmp_path / "broken.pt", tmp_path / "out", vocabulary=words)
    assert not (tmp_path / "out" / "model.pt").exists()


def test_unknown_key_and_untied_values_are_reported(wt103_case):
    tmp_path, state, words = wt103_case
    torch.save(dict(state, **{"output_layer.extra": torch.zeros(1)}), str(tmp_path / "extra.pt"))
    with pytest.raises(ValueError, match=r"unexpected key.*output_layer\.extra"):
        convert_word_level(tmp_path / "extra.pt", tmp_path / "out", vocabulary=words)
    state["embedding_layer.emb_projs.1"] = state["embedding_layer.emb_projs.1"] + 1.0
    torch.save(state, str(tmp_path / "differ.pt"))
    with pytest.raises(ValueError, match=r"emb_projs\.1 differ"):
        convert_word_level(tmp_path / "differ.pt", tmp_path / "out", vocabulary=words, tied_projections=True)
    assert not convert_word_level(tmp_path / "differ.pt", tmp_path / "out", vocabulary=words).tied_projections


def test_cli(wt103_case, capsys):
    tmp_path, _, _ = wt103_case
    help_text = subprocess.run([sys.executable, "-m", "fairseq_srupp.convert", "wt103", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--corpus" in help_text and "--vocab" in help_text and "--out-dir" in help_text
    rc = convert_main(["wt103", "--paper-checkpoint", str(tmp_path / "paper.pt"), "--corpus",
                       str(tmp_path / "wiki.train.tokens"), "--out-dir", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "cli" / "model.pt").exists() and (tmp_path / "cli" / "dict.txt").exists()
    assert "--srcdict {}".format(tmp_path / "cli" / "dict.txt") in out
    words = wt103_vocabulary(tmp_path / "wiki.train.tokens")
    dict_words = [line.split()[0] for line in (tmp_path / "cli" / "dict.txt").read_text(encoding="utf-8").splitlines()]
    assert dict_words == [w for w in words if w not in ("<eos>", "<unk>")]  # paper order, specials implicit
    rc = convert_main(["lm1b", "--paper-checkpoint", str(tmp_path / "paper.pt"), "--vocab",
                       str(tmp_path / "wiki.train.tokens"), "--out-dir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and not (tmp_path / "bad" / "model.pt").exists()


def test_out_dir_never_replaces_a_different_file(wt103_case, capsys):
    """--out-dir pointed at a data-bin must not replace its dict.txt (its .bin files were binarized
    with it); a re-run into the same folder is fine, --force replaces."""
    tmp_path, _, _ = wt103_case
    args = ["wt103", "--paper-checkpoint", str(tmp_path / "paper.pt"), "--corpus", str(tmp_path / "wiki.train.tokens")]
    data_bin = tmp_path / "data-bin"
    data_bin.mkdir()
    (data_bin / "dict.txt").write_text("w1 40\nw2 39\n")
    assert convert_main(args + ["--out-dir", str(data_bin)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "{} already exists and differs".format(data_bin / "dict.txt") in err[0], err
    assert "give a new --out-dir" in err[0]
    assert (data_bin / "dict.txt").read_text() == "w1 40\nw2 39\n" and sorted(p.name for p in data_bin.iterdir()) == [
        "dict.txt"]  # nothing written, no temporary file left

    assert convert_main(args + ["--out-dir", str(tmp_path / "out")]) == 0
    written = {name: (tmp_path / "out" / name).read_bytes() for name in ("model.pt", "dict.txt")}
    assert convert_main(args + ["--out-dir", str(tmp_path / "out")]) == 0  # a re-run: the same bytes
    assert convert_main(args + ["--out-dir", str(tmp_path / "out"), "--eval-window", "8"]) == 2  # another model.pt
    assert "model.pt already exists and differs" in capsys.readouterr().err
    assert {name: (tmp_path / "out" / name).read_bytes() for name in written} == written
    assert convert_main(args + ["--out-dir", str(data_bin), "--force"]) == 0
    assert (data_bin / "dict.txt").read_bytes() == written["dict.txt"]

    capsys.readouterr()
    rc = convert_main(["wt103", "--paper-checkpoint", str(tmp_path / "paper.pt"), "--vocab", str(data_bin / "dict.txt"),
                       "--out-dir", str(data_bin), "--force"])
    assert rc == 2 and "(its dict.txt) is the --vocab file" in capsys.readouterr().err


def test_failed_write_changes_neither_output(wt103_case, monkeypatch):
    tmp_path, _, words = wt103_case
    out = tmp_path / "out"
    out.mkdir()
    (out / "dict.txt").write_text("old 1\n")

    def failing_save(state, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fairseq_srupp.convert.checkpoint.torch.save", failing_save)
    with pytest.raises(OSError):
        convert_word_level(tmp_path / "paper.pt", out, vocabulary=words, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["dict.txt"] and (out / "dict.txt").read_text() == "old 1\n"


def test_empty_corpus_and_num_heads_are_named(wt103_case, capsys):
    tmp_path, _, _ = wt103_case
    (tmp_path / "empty.txt").write_text("")
    args = ["wt103", "--paper-checkpoint", str(tmp_path / "paper.pt"), "--out-dir", str(tmp_path / "out")]
    assert convert_main(args + ["--corpus", str(tmp_path / "empty.txt")]) == 2
    assert "the corpus {} holds no words".format(tmp_path / "empty.txt") in capsys.readouterr().err
    assert convert_main(args + ["--corpus", str(tmp_path / "wiki.train.tokens"), "--num-heads", "3"]) == 2
    err = capsys.readouterr().err
    assert "--num-heads 3 does not divide the checkpoint's attention width {}".format(PROJ) in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
