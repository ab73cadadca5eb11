"""Generation and scoring through the tools people use, on tiny models trained here.

* ``fairseq-interactive`` / ``fairseq-generate`` with ``--task language_modeling``: plain-text prompts
  (``--bpe srupp_bytes`` at char level, ``--tokenizer moses`` at word level) and continuations;
* the hub interface (``SRUppLanguageModel.from_pretrained``): ``sample``, ``score``, ``generate``;
* scoring agrees with ``fairseq-eval-lm`` on the same text, and beam-search scores (incremental
  decoding with reordering) agree with scoring the finished hypotheses in one forward pass.
"""
import os
import re
import sys

import pytest
import torch
import fork_server
from cli_utils import (ADAPTIVE_ARGS, BIN, STATEFUL_TRAIN_ARGS, USER_DIR, make_char_data, make_word_data,
                       run_tool)

import fairseq_srupp  # noqa: F401
from fairseq_srupp.data.char_level import write_byte_tokens
from fairseq_srupp.models.srupp_lm import SRUppLanguageModel

WORD_PROB = re.compile(r"(\S+) \[(-?[0-9.]+)\]")


def train(data_bin, save_dir, *extra):
    run_tool("fairseq-train", data_bin, *STATEFUL_TRAIN_ARGS, "--batch-size", 4, "--max-update", 40,
             "--disable-validation", "--save-dir", save_dir, *extra)
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("char_generation")
    data_bin = make_char_data(root, n_train=20000, n_valid=2000)
    return data_bin, train(data_bin, root / "ckpt", "--lr", 0.01)


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("word_generation")
    data_bin = make_word_data(root)
    return data_bin, train(data_bin, root / "ckpt", *ADAPTIVE_ARGS, "--lr", 0.01)


def run_with_input(tool, stdin, *args):
    proc = fork_server.run([BIN / tool, *args], input=stdin, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def hypotheses(output, prefix="D"):
    """{sentence id: [(score, text), ...]} from fairseq-interactive / fairseq-generate output."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"^{}-(\d+)\t(\S+)\t?(.*)$".format(prefix), line)
        if m:
            found.setdefault(int(m.group(1)), []).append((float(m.group(2)), m.group(3)))
    return found


def test_interactive_continues_plain_text_prompts_char_level(char_model):
    data_bin, ckpt = char_model
    prompts = ["the cat", "a dog sees"]
    out = run_with_input("fairseq-interactive", "\n".join(prompts) + "\n", data_bin, "--user-dir", USER_DIR,
                         "--task", "language_modeling", "--path", ckpt, "--bpe", "srupp_bytes", "--beam", 3,
                         "--nbest", 2, "--max-len-b", 24, "--cpu")
    found = hypotheses(out)
    print(found)
    assert sorted(found) == [0, 1]
    for i, prompt in enumerate(prompts):
        assert len(found[i]) == 2
        for score, text in found[i]:
            assert text.startswith(prompt) and len(text.encode()) > len(prompt)  # a real continuation
            assert score < 0
    scores = [s for s, _ in found[0]]
    assert scores == sorted(scores, reverse=True)  # nbest ordered by score


def test_interactive_word_level_with_moses_tokenizer(word_model):
    data_bin, ckpt = word_model
    out = run_with_input("fairseq-interactive", "w3 w24 w7\n", data_bin, "--user-dir", USER_DIR,
                         "--task", "language_modeling", "--path", ckpt, "--tokenizer", "moses", "--beam", 2,
                         "--max-len-b", 10, "--cpu")
    found = hypotheses(out)
    print(found)
    (score, text), = found[0]
    words = text.split()
    assert words[:3] == ["w3", "w24", "w7"] and len(words) > 3
    assert all(re.fullmatch(r"w\d+|<unk>", w) for w in words)


def test_generate_continues_the_test_split(char_model):
    data_bin, ckpt = char_model
    out = run_tool("fairseq-generate", data_bin, "--user-dir", USER_DIR, "--task", "language_modeling",
                   "--path", ckpt, "--gen-subset", "test", "--sample-break-mode", "eos", "--tokens-per-sample", 256,
                   "--prefix-size", 5, "--beam", 2, "--max-len-b", 40, "--batch-size", 8, "--max-tokens", 4000,
                   "--bpe", "srupp_bytes", "--cpu", "--num-workers", 0)
    refs = {int(i): text for i, text in re.findall(r"^T-(\d+)\t(.*)$", out, flags=re.M)}
    hyps = hypotheses(out, "D")
    print(len(hyps), list(hyps.items())[:3])
    assert len(hyps) == len(refs) > 5
    for i, [(_, text)] in hyps.items():
        assert text[:5] == refs[i][:5]  # the first 5 bytes of the reference are the forced prefix


def hub(data_bin, ckpt, **kwargs):
    lm = SRUppLanguageModel.from_pretrained(str(ckpt.parent), checkpoint_file=ckpt.name,
                                            data_name_or_path=str(data_bin), **kwargs)
    return lm.eval()


def eval_lm_word_log_probs(data_bin, ckpt, text_file, tmp_path):
    """Per-token natural-log probabilities fairseq-eval-lm prints for one line of text."""
    out_dir = tmp_path / "scored"
    run_tool("fairseq-preprocess", "--only-source", "--srcdict", data_bin / "dict.txt", "--testpref", text_file,
             "--destdir", out_dir, "--workers", 1)
    out = run_tool("fairseq-eval-lm", out_dir, "--user-dir", USER_DIR, "--task", "language_modeling", "--path", ckpt,
                   "--gen-subset", "test", "--sample-break-mode", "eos", "--tokens-per-sample", 512,
                   "--output-word-probs", "--cpu", "--num-workers", 0, "--batch-size", 1)
    line = [ln for ln in out.splitlines() if WORD_PROB.search(ln)][-1]
    return torch.tensor([float(v) for _, v in WORD_PROB.findall(line)])


def test_hub_char_level_sample_score_generate(char_model, tmp_path):
    data_bin, ckpt = char_model
    assert hub(data_bin, ckpt, eval_window=7).models[0].decoder.cfg.eval_window == 7  # window at inference
    lm = hub(data_bin, ckpt, bpe="srupp_bytes")
    torch.manual_seed(0)
    sampled = lm.sample("the cat", sampling=True, sampling_topk=10, max_len_b=30)
    assert isinstance(sampled, str) and sampled.startswith("the cat") and len(sampled) > len("the cat")
    batch = lm.sample(["the cat", "a bird"], beam=2, max_len_b=20)
    assert [s[:6] for s in batch] == ["the ca", "a bird"]

    sentence = "the old man hears a ball."
    scored = lm.score(sentence)
    assert scored["positional_scores"].shape == (len(sentence),)  # one per byte; the closing </s> is not scored
    write_byte_tokens(sentence.encode() + b"\n", tmp_path / "one.txt")
    reference = eval_lm_word_log_probs(data_bin, ckpt, tmp_path / "one.txt", tmp_path)
    print("hub", scored["positional_scores"][:5], "eval-lm", reference[:5])
    assert torch.allclose(scored["positional_scores"], reference[: len(sentence)], atol=1e-5)

    # Beam search with several hypotheses (incremental state reordered at every step): each
    # hypothesis' per-token scores equal scoring the finished hypothesis in one forward pass.
    hyps = lm.generate([lm.encode("a dog")], beam=4, nbest=4, max_len_b=16)[0]
    assert len(hyps) == 4
    for hyp in hyps:
        tokens = hyp["tokens"][:-1] if hyp["tokens"][-1] == lm.task.dictionary.eos() else hyp["tokens"]
        rescored = lm.generate([tokens], score_reference=True)[0][0]["positional_scores"]
        assert torch.allclose(hyp["positional_scores"][: len(tokens)], rescored, atol=1e-4)


def test_hub_word_level_score_matches_eval_lm(word_model, tmp_path):
    data_bin, ckpt = word_model
    lm = hub(data_bin, ckpt, tokenizer="moses")
    sentence = "w3 w24 w7 w1 w10 w100 w5"
    scored = lm.score(sentence)
    (tmp_path / "one.txt").write_text(sentence + "\n")
    reference = eval_lm_word_log_probs(data_bin, ckpt, tmp_path / "one.txt", tmp_path)
    print("hub", scored["positional_scores"], "eval-lm", reference)
    assert torch.allclose(scored["positional_scores"], reference[:7], atol=1e-5)
    continuation = lm.sample(sentence, beam=3, max_len_b=12)
    assert continuation.startswith(sentence) and len(continuation.split()) > 7


def test_hub_warns_once_about_prompt_symbols_outside_the_dictionary(char_model, caplog):
    from fairseq_srupp import fairseq_fixes

    data_bin, ckpt = char_model
    lm = hub(data_bin, ckpt, bpe="srupp_bytes")
    fairseq_fixes._warned.clear()
    with caplog.at_level("WARNING"):
        lm.sample("the cañ", beam=2, max_len_b=20)  # ñ: two bytes the corpus never had
        lm.sample("the cañ", beam=2, max_len_b=20)
    warnings = [r.getMessage() for r in caplog.records if "dictionary" in r.getMessage()]
    assert warnings == ["2 symbol(s) of the prompt are not in the model's dictionary and are read as <unk>"]


def test_srupp_sample_word_level_equals_the_hub_stream(word_model):
    from fairseq_srupp.sampling import stream_text

    data_bin, ckpt = word_model
    proc = fork_server.run([sys.executable, "-m", "fairseq_srupp.sample_cli", "--path", ckpt, "--data", data_bin,
                            "--prompt", "w3 w24\nw7", "-n", 30, "--top-p", 0.9, "--seed", 5, "--cpu", "--no-echo"],
                           stderr_apart=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert len(words) == 30 - proc.stdout.count("\n") + 1  # 30 tokens: words and line ends
    assert all(re.fullmatch(r"w\d+", w) for w in words)
    expected = "".join(stream_text(hub(data_bin, ckpt), "w3 w24\nw7", 30, top_p=0.9, seed=5))
    assert proc.stdout == expected + "\n"
