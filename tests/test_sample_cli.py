"""``srupp-sample`` and its hub equivalent ``fairseq_srupp.sampling.stream_text``.

* :func:`restrict` keeps exactly the top-k / top-p support computed directly (sorting in Python);
* greedy streaming (temperature 0) equals the argmax of one full forward pass over the sampled text,
  char level and word level (adaptive softmax), across ``</s>``;
* sampled tokens always lie in the top-k / top-p support of the full forward pass at their position;
* a seed reproduces a sample; the CLI prints the prompt then exactly ``-n`` bytes, the same text as
  ``stream_text`` on the hub with the same seed; bad input gives one ``error:`` line; prompt bytes
  outside the dictionary give one warning with their count.
"""
import math
import os
import sys
from argparse import Namespace

import pytest
import torch
import fork_server
from cli_utils import STATEFUL_TRAIN_ARGS, make_char_data, run_tool
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

import fairseq_srupp  # noqa: F401
from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLanguageModel, SRUppLMConfig
from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.sample_cli import main as sample_cli_main
from fairseq_srupp.sampling import TextCodec, never_sampled, restrict, stream_text, stream_tokens

WINDOW = 64  # longer than every sequence here: the full forward pass is then plain causal


def direct_support(lprobs, top_k, top_p):
    """The ids top-k then top-p keep, computed one token at a time in Python."""
    order = sorted(range(len(lprobs)), key=lambda i: -float(lprobs[i]))
    if top_k:
        kth = float(lprobs[order[top_k - 1]])
        order = [i for i in order if float(lprobs[i]) >= kth]
    total = sum(math.exp(float(lprobs[i])) for i in order)
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += math.exp(float(lprobs[i])) / total
    return set(kept)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (1, 1.0), (5, 1.0), (0, 0.5), (0, 0.9), (7, 0.8), (3, 0.3)])
def test_restrict_keeps_the_direct_support(top_k, top_p):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        lprobs = torch.randn(50, generator=g).mul(2).log_softmax(-1).double()
        kept = set(torch.nonzero(restrict(lprobs, top_k, top_p).isfinite()).view(-1).tolist())
        assert kept == direct_support(lprobs, top_k, top_p)


def byte_dictionary(text=b"abcdefgh ,.:"):
    d = Dictionary()
    for b in sorted(set(text)):
        d.add_symbol(str(b))
    return d


def make_model(adaptive):
    if adaptive:
        dictionary = Dictionary()
        for i in range(40):
            dictionary.add_symbol("w{}".format(i))
    else:
        dictionary = byte_dictionary()
    args = Namespace(hidden_size=32, proj_size=16, num_layers=2, eval_window=WINDOW,
                     adaptive_softmax_cutoff="10,25" if adaptive else None, adaptive_embed_dim=16,
                     adaptive_div_value=2.0)
    ARCH_CONFIG_REGISTRY["srupp_lm_tiny"](args)
    model = SRUppLanguageModel(SRUppDecoder(SRUppLMConfig.from_namespace(args), dictionary)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 1.5)  # ReZero starts at 0, which would hide the attention
        # A strong </s> preference, so greedy decoding really crosses line ends.
        if adaptive:
            model.decoder.adaptive_softmax.head.bias[dictionary.eos()] += 1.0
        else:
            model.decoder.output_projection.bias[dictionary.eos()] += 1.5
    return model


def full_forward_log_probs(model, prompt, sampled):
    """Log-probabilities (T, V) of every sampled position from one forward pass over ``</s> prompt sampled``."""
    d = model.decoder.dictionary
    tokens = torch.tensor([[d.eos()] + prompt + sampled])
    with torch.no_grad():
        lprobs = model.decoder.get_normalized_probs(model.decoder(tokens), log_probs=True)[0]
    lprobs[:, never_sampled(d)] = -math.inf
    return lprobs[len(prompt): len(prompt) + len(sampled)]


@pytest.mark.parametrize("adaptive", [False, True], ids=["char", "word"])
def test_greedy_stream_equals_full_forward_argmax(adaptive):
    model = make_model(adaptive)
    d = model.decoder.dictionary
    prompt = [d.nspecial + 1, d.nspecial + 3, d.eos(), d.nspecial + 2]  # a prompt spanning a line end
    sampled = list(stream_tokens(model, prompt, 40, temperature=0))
    print(d.string(torch.tensor(sampled), include_eos=True))
    assert sampled.count(d.eos()) >= 2  # goes on after </s>
    lprobs = full_forward_log_probs(model, prompt, sampled)
    assert sampled == lprobs.argmax(-1).tolist()


@pytest.mark.parametrize("adaptive", [False, True], ids=["char", "word"])
@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (5, 0.7)])
def test_samples_stay_in_the_top_k_top_p_support(adaptive, top_k, top_p):
    model = make_model(adaptive)
    prompt = [model.decoder.dictionary.nspecial + 1]
    g = torch.Generator().manual_seed(3)
    sampled = list(stream_tokens(model, prompt, 40, top_k=top_k, top_p=top_p, temperature=1.5, generator=g))
    lprobs = full_forward_log_probs(model, prompt, sampled) / 1.5
    for t, token in enumerate(sampled):
        assert token in direct_support(lprobs[t].double(), top_k, top_p), t
    unrestricted = list(stream_tokens(model, prompt, 40, temperature=1.5, generator=torch.Generator().manual_seed(3)))
    lprobs = full_forward_log_probs(model, prompt, unrestricted) / 1.5
    outside = [t for t, token in enumerate(unrestricted) if token not in direct_support(lprobs[t].double(), top_k, top_p)]
    assert outside  # the restriction is not vacuous for this model


def test_seed_reproduces_and_changes_the_sample():
    model = make_model(adaptive=False)

    def draw(seed):
        return list(stream_tokens(model, [5], 60, top_k=5, generator=torch.Generator().manual_seed(seed)))

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_text_codec_bytes_and_words():
    codec = TextCodec(byte_dictionary("héllo\n".encode()))
    ids = codec.encode("hé\nl")
    assert codec.dictionary.string(torch.tensor(ids), include_eos=True).split() == ["104", "195", "169", "</s>", "108"]
    to_text = codec.decoder()
    assert "".join(to_text(i) for i in ids) == "hé\nl"  # the two bytes of é give one character
    words = Dictionary()
    for w in ("a", "b"):
        words.add_symbol(w)
    codec = TextCodec(words)
    ids = codec.encode("a b\nb")
    assert ids == [words.index("a"), words.index("b"), words.eos(), words.index("b")]
    to_text = codec.decoder()
    assert "".join(to_text(i) for i in ids + [words.index("a")]) == "a b\nb a"
    # continuing a prompt: spaced from it unless it ends a line or in a space (a sample read "thecat sat")
    for prompt, text in (("a b", " b a"), ("a\n", "b a"), ("a ", "b a"), ("", "b a")):
        to_text = codec.decoder(after=prompt)
        assert "".join(to_text(i) for i in (words.index("b"), words.index("a"))) == text, prompt


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_cli")
    data_bin = make_char_data(root, n_train=6000, n_valid=600)
    run_tool("fairseq-train", data_bin, *STATEFUL_TRAIN_ARGS, "--batch-size", 2, "--max-update", 3,
             "--disable-validation", "--save-dir", root / "ckpt", "--bpe", "srupp_bytes")
    return data_bin, root / "ckpt" / "checkpoint_last.pt"


def sample_cli(*args):
    return fork_server.run([sys.executable, "-m", "fairseq_srupp.sample_cli", *args], stderr_apart=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_cli_streams_n_bytes_equal_to_the_hub_stream(checkpoint):
    data_bin, ckpt = checkpoint
    prompt = "the cañ"  # ñ: two bytes the tiny corpus never had
    proc = sample_cli("--path", ckpt, "--data", data_bin, "--prompt", prompt, "-n", 300, "--top-k", 5,
                      "--seed", 11, "--window", 32, "--cpu")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "dictionary" in line]
    assert warnings == ["WARNING: 2 byte(s) of the prompt are not in the model's dictionary and are read as <unk>"]
    assert proc.stdout.startswith(prompt) and proc.stdout.endswith("\n")
    continuation = proc.stdout[len(prompt):-1]
    assert len(continuation.encode()) == 300 and "\n" in continuation  # n bytes, across lines

    lm = SRUppLanguageModel.from_pretrained(str(ckpt.parent), checkpoint_file=ckpt.name,
                                            data_name_or_path=str(data_bin)).eval()
    hub_text = "".join(stream_text(lm, prompt, 300, top_k=5, seed=11, window=32))
    assert hub_text == continuation
    assert lm.models[0].decoder.cfg.eval_window != 32  # the window changed for that call only
    # The checkpoint's stored data directory is used when --data is left out.
    again = sample_cli("--path", ckpt, "--prompt", prompt, "-n", 300, "--top-k", 5, "--seed", 11,
                       "--window", 32, "--cpu")
    assert again.stdout == proc.stdout


def test_cli_bad_input_gives_one_error_line(checkpoint, tmp_path):
    proc = sample_cli("--path", tmp_path / "nowhere.pt", "--prompt", "x", "-n", 3)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: --path {} is not a checkpoint file".format(tmp_path / "nowhere.pt")]


@pytest.mark.parametrize("args,message", [
    (["--prompt-file", "{tmp}", "-n", 3], "--prompt-file {tmp} is a directory: give the path of a file"),
    (["--prompt-file", "{tmp}/none.txt", "-n", 3], "--prompt-file {tmp}/none.txt not found: give the path of an existing file"),
    (["--prompt", "x", "-n", 3, "--top-p", 0], "--top-p must be in (0, 1] (1 keeps every token), got 0.0"),
    (["--prompt", "x", "-n", 3, "--top-k", -1], "--top-k must be >= 0 (0 keeps every token), got -1"),
    (["--prompt", "x", "-n", 3, "--temperature", -1], "--temperature must be >= 0 (0 = greedy), got -1.0"),
    (["--prompt", "x", "-n", -1], "-n must be >= 0, got -1"),
    (["--prompt", "x", "-n", 3, "--window", 0], "--window must be >= 1 (tokens each new token attends to), got 0"),
    (["--prompt", "x", "-n", 3, "--data", "{tmp}"],
     "--data {tmp} has no dict.txt: give the data-bin directory the model was trained on"),
])
def test_cli_bad_input_messages(checkpoint, tmp_path, args, message):
    _, ckpt = checkpoint
    args = ["--path", str(ckpt), "--cpu"] + [str(a).format(tmp=tmp_path) for a in args]
    with pytest.raises(SRUppUserError) as err:
        sample_cli_main(args)
    assert str(err.value) == message.format(tmp=tmp_path)


def test_cli_decoding_switch_same_text_through_the_ring_and_a_bad_value_in_one_line(checkpoint):
    # The ring (what a GPU replays as a CUDA graph) gives the text of the incremental state (the CPU's default).
    data_bin, ckpt = checkpoint
    args = ["--path", ckpt, "--data", data_bin, "--prompt", "the c", "-n", 120, "--top-k", 5, "--seed", 3,
            "--window", 16, "--cpu"]

    def run(mode):
        return fork_server.run([sys.executable, "-m", "fairseq_srupp.sample_cli", *args], stderr_apart=True,
                               timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", FAIRSEQ_SRUPP_DECODING=mode))

    cache, ring, bad, graph = run("cache"), run("ring"), run("fast"), run("graph")
    assert cache.returncode == 0 and ring.returncode == 0, (cache.stderr, ring.stderr)
    assert ring.stdout == cache.stdout and len(cache.stdout) > len("the c")
    # A mode that cannot run is reported before the prompt is echoed: nothing on stdout, the error on a line
    # of its own.
    assert bad.returncode == graph.returncode == 1 and bad.stdout == graph.stdout == ""
    assert bad.stderr.splitlines() == [
        "error: FAIRSEQ_SRUPP_DECODING='fast' is not one of auto, cache, ring, graph: unset it or set it to one of them"]
    assert graph.stderr.splitlines() == [
        "error: FAIRSEQ_SRUPP_DECODING=graph replays CUDA graphs and needs the model on a GPU; use ring or cache on "
        "the CPU"]
