"""Incremental decoding: token by token (or in chunks) equals one full forward pass over the prefix.

Through the incremental state's DecodingCache (``FAIRSEQ_SRUPP_DECODING=cache``; the default, a ring
where memory allows, is tested in test_generator_decoding.py). The full pass uses the same-length
mask of the generation window W (each token sees itself and the W tokens before it), which for
prefixes no longer than W is the plain causal mask. Also: the
DecodingCache's ring, ordered view, growth and reordering, padding, calls that are rejected, and
how generation relates to fairseq-eval-lm with the stateful task.
"""
from argparse import Namespace

import pytest
import torch
from conftest import assert_close
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

import fairseq_srupp  # noqa: F401
from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLMConfig

WINDOW = 8


@pytest.fixture(autouse=True)
def cache_decoding(monkeypatch):
    """This file is about fairseq's incremental state holding a DecodingCache (what a ring would hold, and
    when it is used, is test_generator_decoding's)."""
    monkeypatch.setenv("FAIRSEQ_SRUPP_DECODING", "cache")


def make_decoder(adaptive, **overrides):
    dictionary = Dictionary()
    for i in range(40):
        dictionary.add_symbol("w{}".format(i))
    args = Namespace(**dict(
        dict(hidden_size=32, proj_size=16, num_layers=3, eval_window=WINDOW,
             adaptive_softmax_cutoff="10,25" if adaptive else None, adaptive_embed_dim=16, adaptive_div_value=2.0),
        **overrides,
    ))
    ARCH_CONFIG_REGISTRY["srupp_lm_tiny"](args)
    decoder = SRUppDecoder(SRUppLMConfig.from_namespace(args), dictionary).eval()
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 1.5)  # ReZero starts at 0, which would hide the attention
    return decoder


def full_log_probs(decoder, tokens):
    """(B, T) → (B, T, V) from one pass with the window's same-length mask."""
    out = decoder(tokens, carry={"enabled": False, "mask": "same_length", "window": WINDOW})
    return decoder.get_normalized_probs(out, log_probs=True)


def incremental_log_probs(decoder, tokens, state, chunk=1, start=0):
    """Feed tokens[:, start:] ``chunk`` at a time, passing the whole prefix as fairseq does."""
    outs = []
    for t in range(start, tokens.shape[1], chunk):
        out = decoder(tokens[:, : t + chunk], incremental_state=state)
        outs.append(decoder.get_normalized_probs(out, log_probs=True))
    return torch.cat(outs, dim=1)


CASES = [
    pytest.param(dict(adaptive=False), id="char"),
    pytest.param(dict(adaptive=True), id="adaptive"),
    pytest.param(dict(adaptive=True, untie_adaptive_proj=True, num_heads=2), id="adaptive-untied-2heads"),
    pytest.param(dict(adaptive=False, attention_every_n_layers=2), id="char-attention-every-2"),
    pytest.param(dict(adaptive=False, normalize_after=True), id="char-post-norm"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("length", [5, WINDOW + 1, 3 * WINDOW + 2])
def test_token_by_token_equals_full_forward(case, length):
    decoder = make_decoder(**case)
    tokens = torch.randint(4, 40, (3, length))
    with torch.no_grad():
        full = full_log_probs(decoder, tokens)
        step = incremental_log_probs(decoder, tokens, {})
    assert_close("incremental vs full (T={})".format(length), step, full, 1e-5)


@pytest.mark.parametrize("adaptive", [False, True])
def test_chunks_and_last_token_feeding_equal_full_forward(adaptive):
    decoder = make_decoder(adaptive)
    tokens = torch.randint(4, 40, (2, 21))
    with torch.no_grad():
        full = full_log_probs(decoder, tokens)
        chunked = incremental_log_probs(decoder, tokens, {}, chunk=7)  # a 7-token prompt, then more
        state, outs = {}, []
        for t in range(tokens.shape[1]):  # callers that pass only the newest token
            out = decoder(tokens[:, t : t + 1], incremental_state=state)
            outs.append(decoder.get_normalized_probs(out, log_probs=True))
    assert_close("7-token chunks", chunked, full, 1e-5)
    assert_close("newest token only", torch.cat(outs, 1), full, 1e-5)


@pytest.mark.parametrize("adaptive", [False, True])
def test_reorder_for_beam_search(adaptive):
    decoder = make_decoder(adaptive)
    prefix = torch.randint(4, 40, (2, 11))
    new_order = torch.tensor([1, 1, 0, 1])  # beams: two hypotheses grow from each sequence
    suffix = torch.randint(4, 40, (4, 9))
    reordered = torch.cat([prefix.index_select(0, new_order), suffix], dim=1)
    with torch.no_grad():
        state = {}
        incremental_log_probs(decoder, prefix, state)
        decoder.reorder_incremental_state_scripting(state, new_order)
        continued = incremental_log_probs(decoder, reordered, state, start=prefix.shape[1])
        full = full_log_probs(decoder, reordered)[:, prefix.shape[1] :]
    assert_close("after reorder", continued, full, 1e-5)


def test_state_size_is_bounded_by_the_window():
    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (2, 6 * WINDOW))
    sizes = []
    with torch.no_grad():
        state = {}
        for t in range(tokens.shape[1]):
            decoder(tokens[:, : t + 1], incremental_state=state)
            held = decoder.get_incremental_state(state, "srupp_state")
            sizes.append(sum(v.numel() for v in held.values()))
    assert sizes[WINDOW] == sizes[-1] == max(sizes)  # grows until W tokens are cached, then flat
    assert sizes[0] < sizes[WINDOW]


def test_window_can_be_changed_at_inference():
    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (1, 30))
    with torch.no_grad():
        decoder.cfg.eval_window = 3
        narrow = incremental_log_probs(decoder, tokens, {})
        decoder.cfg.eval_window = 30
        wide = incremental_log_probs(decoder, tokens, {})
        causal = decoder.get_normalized_probs(decoder(tokens), log_probs=True)
    assert_close("window >= length is the causal forward", wide, causal, 1e-5)
    assert (narrow - wide)[:, 4:].abs().max() > 1e-3  # a narrower window really drops context
    assert_close("identical until the narrow window is full", narrow[:, :4], wide[:, :4], 1e-5)


@pytest.mark.parametrize("adaptive", [False, True])
def test_stream_tokens_greedy_equals_full_forward_argmax(adaptive):
    from fairseq_srupp.sampling import stream_tokens

    decoder = make_decoder(adaptive)
    prompt = torch.randint(4, 40, (5,)).tolist()
    streamed = list(stream_tokens(decoder, prompt, 3 * WINDOW, top_k=1))  # past the window
    sequence = torch.tensor([[decoder.dictionary.eos()] + prompt + streamed])
    with torch.no_grad():
        lprobs = full_log_probs(decoder, sequence)[0]
    lprobs[:, [decoder.dictionary.bos(), decoder.dictionary.pad(), decoder.dictionary.unk()]] = -float("inf")
    expected = lprobs[len(prompt) : -1].argmax(-1).tolist()
    assert streamed == expected


@pytest.mark.parametrize("adaptive", [False, True])
def test_mixed_single_tokens_and_chunks(adaptive):
    # Single tokens fill the window's ring (its oldest slot moves); a chunk then has to put the
    # ring back in order before attending with the same-length mask.
    decoder = make_decoder(adaptive)
    tokens = torch.randint(4, 40, (2, 40))
    ends = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 17, 18, 19, 30, 31, 32, 33, 40]
    with torch.no_grad():
        full = full_log_probs(decoder, tokens)
        state, outs, start = {}, [], 0
        for end in ends:
            out = decoder(tokens[:, :end], incremental_state=state)
            outs.append(decoder.get_normalized_probs(out, log_probs=True))
            assert outs[-1].shape[1] == end - start
            start = end
    assert_close("mixed schedule", torch.cat(outs, 1), full, 1e-5)


@pytest.mark.parametrize("mode", ["cache", "ring"])
def test_ambiguous_or_mismatched_calls_are_rejected(mode, monkeypatch):
    monkeypatch.setenv("FAIRSEQ_SRUPP_DECODING", mode)  # the ring (test_generator_decoding) rejects them too
    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (2, 6))
    with torch.no_grad():
        state = {}
        decoder(tokens[:, :5], incremental_state=state)
        assert (decoder._stepper(state) is not None) == (mode == "ring")
        # Two tokens after five were consumed: a shorter prefix, or the newest two? Neither is guessed.
        with pytest.raises(ValueError, match="got 2 tokens after consuming 5: pass the whole prefix"):
            decoder(tokens[:, 3:5], incremental_state=state)
        with pytest.raises(ValueError, match="holds 2 sequences but 3 were passed"):
            decoder(torch.randint(4, 40, (3, 6)), incremental_state=state)
        decoder.cfg.eval_window = WINDOW + 1
        with pytest.raises(ValueError, match="eval_window changed from 8 to 9"):
            decoder(tokens, incremental_state=state)


@pytest.mark.parametrize("chunk", [1, 5])
def test_padding_inside_the_window_equals_full_forward(chunk):
    # Padding is masked as a key while it is inside the window; once it has left, the cache drops
    # its padding mask (no mask, no per-layer check) and still equals the full pass.
    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (3, 4 * WINDOW))
    pad = decoder.dictionary.pad()
    tokens[0, 3] = tokens[0, 10] = tokens[2, 17] = pad
    with torch.no_grad():
        full = full_log_probs(decoder, tokens)
        state, outs, held_pad = {}, [], []
        for t in range(0, tokens.shape[1], chunk):
            out = decoder(tokens[:, : t + chunk], incremental_state=state)
            outs.append(decoder.get_normalized_probs(out, log_probs=True))
            held_pad.append("pad" in decoder.get_incremental_state(state, "srupp_state"))
    keep = tokens.ne(pad)
    assert_close("padded batch", torch.cat(outs, 1)[keep], full[keep], 1e-5)
    if chunk == 1:  # the mask is held while positions 3 … 17 + WINDOW are cached
        assert held_pad == [3 <= t <= 17 + WINDOW for t in range(tokens.shape[1])]
    assert not held_pad[-1]


def test_cache_ring_ordered_view_growth_and_reorder():
    from fairseq_srupp.modules.decoding_cache import DecodingCache

    window, batch = 9, 2
    cache = DecodingCache(window, attention_layers=2)
    keys = torch.randn(20, 2, batch, 1, 1, 4)  # (positions, layers, B, H, 1, hd)
    capacities = []
    for t in range(keys.shape[0]):
        cache.begin(1)
        for a in range(2):
            k, v, bias = cache.attend(a, keys[t, a], -keys[t, a])
            assert bias is None and k.shape[2] == min(t + 1, window + 1)
            # a single token sees itself and the window before it, in whatever slot order
            seen = keys[max(0, t - window): t + 1, a, :, :, 0].permute(1, 2, 0, 3)  # (B, H, S, hd)
            assert_close("slots", k.sort(dim=2).values, seen.sort(dim=2).values, 0)
        cache.end(torch.zeros(1, batch, 5))
        capacities.append(cache.keys.shape[3])
        ordered, negated = cache.ordered(1)
        assert_close("ordered view", ordered, keys[max(0, t - window): t + 1, 1, :, :, 0].permute(1, 2, 0, 3), 0)
        assert_close("values", negated, -ordered, 0)
    assert capacities[:11] == [1, 2, 4, 4, 8, 8, 8, 8, 10, 10, 10]  # doubles while the window fills
    assert cache.head == 20 % (window + 1)  # then a ring

    restored = DecodingCache.from_state(cache.to_state())  # what fairseq's incremental state holds
    restored.reorder(torch.tensor([1, 1]))
    assert_close("reordered", restored.ordered(0)[0], cache.ordered(0)[0][[1, 1]], 0)
    assert (restored.consumed, restored.filled, restored.window) == (20, 10, 9)


# ------------------------------------------------------------------------------------------------
# What generation conditions on, against fairseq-eval-lm with the stateful task (README, section
# "Generation and scoring"): the task evaluates segments of W tokens and feeds each layer the
# previous segment's *raw* inputs as memory (un-normalised, as the paper's checkpoints were
# trained); generation keeps keys/values of normalised inputs for its whole window (one segment).


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    from cli_utils import make_char_data

    return make_char_data(tmp_path_factory.mktemp("gen_vs_eval"), n_train=1000, n_valid=300)


@pytest.mark.parametrize("layer_norm", [True, False], ids=["layer-norm", "no-layer-norm"])
def test_generation_versus_stateful_eval_lm(char_data, layer_norm):
    from omegaconf import OmegaConf

    from fairseq_srupp.models.srupp_lm import SRUppLanguageModel
    from fairseq_srupp.tasks import SRUppLanguageModelingConfig, SRUppLanguageModelingTask

    window = 12
    task = SRUppLanguageModelingTask.setup_task(OmegaConf.structured(SRUppLanguageModelingConfig(
        data=str(char_data), tokens_per_sample=16, eval_unroll_size=window, batch_size=1, batch_size_valid=1,
        seed=1, train_subset="train")))
    task.load_dataset("valid")
    cfg = SRUppLMConfig(hidden_size=32, proj_size=16, num_layers=3, dropout=0.0, attn_dropout=0.0,
                        eval_window=window, no_layer_norm=not layer_norm)
    model = SRUppLanguageModel.build_model(cfg, task).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 1.5)  # ReZero starts at 0, which would hide the attention
    segments = list(task.get_batch_iterator(task.dataset("valid")).next_epoch_itr(shuffle=False))
    with torch.no_grad():  # what fairseq-eval-lm computes, segment after segment of one stream
        evaluated = torch.cat([model.get_normalized_probs(model(**s["net_input"]), log_probs=True)
                               for s in segments], dim=1)[0]
        tokens = torch.cat([s["net_input"]["src_tokens"] for s in segments], dim=1)
        real = tokens[0].ne(task.dictionary.pad())
        generated = incremental_log_probs(model.decoder, tokens, {}, chunk=1)[0]
    assert len(segments) >= 4 and real[: 3 * window].all()
    assert_close("first segment", generated[:window], evaluated[:window], 1e-5)
    later = (generated[window:] - evaluated[window:])[real[window:]].abs().max().item()
    print("later segments: max |generation - eval-lm| = {:.3e}".format(later))
    if layer_norm:
        assert later > 1e-3  # memory fed un-normalised to eval-lm, normalised in generation's cache
    else:
        assert later <= 1e-5  # no layer norm: the same conditioning everywhere
