"""fairseq's generators through the ring: ``SRUppDecoder`` keeps a TokenStepper in the incremental state.

With ``FAIRSEQ_SRUPP_DECODING=ring`` (``graph``, the default on a GPU, replays the same step) every call
fairseq's ``SequenceGenerator`` makes (the whole prefix each step, a reorder after each for beam search,
a smaller batch as sentences finish) goes through the fixed-shape ring. On the CPU: the ring against the
full forward pass and against the DecodingCache path, through padding, chunks after single steps, beam
reorders and a shrinking batch; graph mode's bookkeeping (capture after ``GENERATOR_CAPTURE_AFTER`` eager
steps, a new capture for each batch size) with a stand-in for the graph. On a GPU (the kit's step 1):
beam search through real graphs against the DecodingCache.
"""
import itertools

import pytest
import torch
from conftest import assert_close
from fairseq.sequence_generator import SequenceGenerator
from test_incremental_decoding import WINDOW, full_log_probs, incremental_log_probs, make_decoder
from test_token_stepper import ReplayedEagerly

from fairseq_srupp.models import srupp_lm, token_stepper
from fairseq_srupp.models.srupp_lm import GENERATOR_CAPTURE_AFTER, SRUppLanguageModel
from fairseq_srupp.models.token_stepper import MODE_ENV, TokenStepper

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def ring_mode(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "ring")


@pytest.mark.parametrize("adaptive", [False, True])
def test_single_steps_and_chunks_with_padding_equal_the_full_forward(ring_mode, adaptive):
    # Chunks after single steps take the ring's contents back into a DecodingCache, oldest first, with
    # the padding still inside the window; the ring then takes them over again in the same buffers.
    decoder = make_decoder(adaptive)
    tokens = torch.randint(4, 40, (3, 40))
    pad = decoder.dictionary.pad()
    tokens[0, 3] = tokens[0, 14] = tokens[2, 16] = tokens[1, 31] = pad
    ends = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 17, 18, 19, 30, 31, 32, 33, 40]
    with torch.no_grad():
        full = full_log_probs(decoder, tokens)
        state, outs, start, rings = {}, [], 0, set()
        for end in ends:
            outs.append(decoder.get_normalized_probs(decoder(tokens[:, :end], incremental_state=state), log_probs=True))
            assert outs[-1].shape[1] == end - start
            start = end
            stepper = decoder._stepper(state)
            rings.add(id(stepper.ring))
            assert stepper.consumed == end and not decoder.get_incremental_state(state, "srupp_state")
    keep = tokens.ne(pad)
    assert_close("ring: singles and chunks", torch.cat(outs, 1)[keep], full[keep], 1e-5)
    assert isinstance(stepper, TokenStepper) and stepper.mode == "ring"
    assert len(rings) == 1 and stepper.ring.keys.shape[3] == WINDOW + 1  # one set of buffers throughout


@pytest.mark.parametrize("adaptive", [False, True])
def test_beam_reorders_and_a_shrinking_batch_equal_the_full_forward(ring_mode, adaptive):
    decoder = make_decoder(adaptive)
    prefix = torch.randint(4, 40, (3, 11))
    beams = torch.tensor([2, 0, 0])  # same batch size: reordered in place
    finished = torch.tensor([1, 2])  # one sequence done: a smaller ring
    middle, suffix = torch.randint(4, 40, (3, 5)), torch.randint(4, 40, (2, 2 * WINDOW))
    after_beams = torch.cat([prefix.index_select(0, beams), middle], 1)
    final = torch.cat([after_beams.index_select(0, finished), suffix], 1)
    with torch.no_grad():
        state = {}
        incremental_log_probs(decoder, prefix, state)
        stepper = decoder._stepper(state)
        ring = stepper.ring
        decoder.reorder_incremental_state_scripting(state, beams)
        assert stepper.ring is ring  # in place: a captured graph would stay valid
        mid = incremental_log_probs(decoder, after_beams, state, start=prefix.shape[1])
        decoder.reorder_incremental_state_scripting(state, finished)
        end = incremental_log_probs(decoder, final, state, start=after_beams.shape[1])
        expected_mid = full_log_probs(decoder, after_beams)[:, prefix.shape[1]:]
        expected_end = full_log_probs(decoder, final)[:, after_beams.shape[1]:]
    assert_close("after an in-place reorder", mid, expected_mid, 1e-5)
    assert_close("after the batch shrank, past the window", end, expected_end, 1e-5)
    assert stepper.batch == stepper.ring.batch == 2 and stepper.ring is not ring


def test_gradients_or_dropout_keep_the_cache(ring_mode):
    # A ring step has neither: such calls get fairseq's incremental state as before.
    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (2, 3))
    state = {}
    decoder(tokens, incremental_state=state)  # gradients enabled
    assert decoder._stepper(state) is None and decoder.get_incremental_state(state, "srupp_state")
    with torch.no_grad():
        state = {}
        decoder.train()(tokens, incremental_state=state)
    assert decoder._stepper(state) is None


# ------------------------------------------------------------------------------ SequenceGenerator


def beam_search(decoder, prompts, mode, monkeypatch, beam=3):
    """fairseq's SequenceGenerator over ``prompts`` (B, P) with ``mode``; (hypotheses, batch sizes that
    reorder_incremental_state was given, steppers made)."""
    monkeypatch.setenv(MODE_ENV, mode)
    model = SRUppLanguageModel(decoder).eval()
    generator = SequenceGenerator([model], decoder.dictionary, beam_size=beam, max_len_b=4 * WINDOW)
    sizes, steppers = [], []
    real_reorder, real_init = TokenStepper.reorder, TokenStepper.__init__

    def reorder(self, new_order):
        sizes.append(new_order.numel())
        real_reorder(self, new_order)

    def init(self, *args, **kwargs):
        steppers.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(TokenStepper, "reorder", reorder)
    monkeypatch.setattr(TokenStepper, "__init__", init)
    # on the prompts' device, as fairseq-generate's move_to_cuda puts the whole sample (fairseq indexes the lengths
    # with the search's batch indices when sentences finish)
    lengths = torch.full((prompts.shape[0],), prompts.shape[1], device=prompts.device)
    sample = {"net_input": {"src_tokens": prompts, "src_lengths": lengths}}
    hypotheses = generator.generate([model], sample, prefix_tokens=prompts)
    monkeypatch.undo()
    return hypotheses, sizes, steppers


def eos_prone(device="cpu", dtype=torch.float32):
    """A char-level decoder whose </s> is likely, and prompts (B, P) of 2, 9, 16 and 23 tokens (right-padded,
    forced while not padding), so the sentences finish one after another, 7 steps apart."""
    torch.manual_seed(0)
    decoder = make_decoder(adaptive=False)
    with torch.no_grad():
        decoder.output_projection.bias[decoder.dictionary.eos()] += 1.0
    prompts = torch.randint(4, 40, (4, 23))
    for row, length in enumerate([2, 9, 16, 23]):
        prompts[row, length:] = decoder.dictionary.pad()
    return decoder.to(device=device, dtype=dtype), prompts.to(device)


def assert_same_hypotheses(got, expected, tolerance):
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert [h["tokens"].tolist() for h in mine] == [h["tokens"].tolist() for h in theirs]
        assert_close("scores", torch.stack([h["score"] for h in mine]).float(),
                     torch.stack([h["score"] for h in theirs]).float(), tolerance)


def assert_scores_match_the_full_forward(decoder, hypotheses, tolerance):
    """Every hypothesis' per-token scores against one full forward pass over its tokens (after </s>): a
    check that holds whichever path the search took, so 16-bit roundings that swap near-ties cannot fail it."""
    eos = decoder.dictionary.eos()
    for sentence in hypotheses:
        for hypothesis in sentence:
            tokens = hypothesis["tokens"]
            inputs = torch.cat([tokens.new_full((1,), eos), tokens[:-1]]).unsqueeze(0)
            with torch.no_grad():
                lprobs = full_log_probs(decoder, inputs)[0].float()
            expected = lprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
            assert_close("positional scores", hypothesis["positional_scores"].float(), expected, tolerance)


def test_beam_search_decodes_the_same_through_the_ring(monkeypatch):
    decoder, prompts = eos_prone()
    cached, _, no_steppers = beam_search(decoder, prompts, "cache", monkeypatch)
    ringed, sizes, steppers = beam_search(decoder, prompts, "ring", monkeypatch)
    assert no_steppers == [] and len(steppers) == 1
    assert_same_hypotheses(ringed, cached, 1e-5)
    assert_scores_match_the_full_forward(decoder, ringed, 1e-5)
    assert len(set(sizes)) == 4, sizes  # the batch shrank three times as sentences finished


def test_graph_mode_captures_after_eager_steps_and_again_for_each_batch_size(monkeypatch):
    # The capture itself is replaced by eager replays (no CUDA here): what is checked is when it happens,
    # that a new batch size drops the old graph, and that results match the DecodingCache.
    decoder, prompts = eos_prone()
    captures = []

    def capture_graph(self):
        captures.append((self.batch, self.eager_steps))
        graph = ReplayedEagerly(self._ring_step, self._ring_step().clone())
        return graph, graph.output

    cached, _, _ = beam_search(decoder, prompts, "cache", monkeypatch)
    for module in (srupp_lm, token_stepper):  # as on a GPU
        monkeypatch.setattr(module, "decoding_mode", lambda device, mode=None: "graph")
    monkeypatch.setattr(TokenStepper, "_capture_graph", capture_graph)
    graphed, sizes, steppers = beam_search(decoder, prompts, "ring", monkeypatch)  # mode: from the patch
    assert steppers[0].mode == "graph"
    assert_same_hypotheses(graphed, cached, 1e-5)
    # a capture for each batch size that lasted more than GENERATOR_CAPTURE_AFTER steps, each after them
    runs = [(size, sum(1 for _ in group)) for size, group in itertools.groupby(sizes)]
    assert [batch for batch, _ in captures] == [size for size, steps in runs if steps > GENERATOR_CAPTURE_AFTER]
    assert captures and all(steps == GENERATOR_CAPTURE_AFTER for _, steps in captures)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_beam_search_through_cuda_graphs_equals_the_cache(monkeypatch, dtype):
    decoder, prompts = eos_prone("cuda", dtype)
    cached, _, _ = beam_search(decoder, prompts, "cache", monkeypatch)
    captured, real_capture = [], TokenStepper._capture_graph

    def capture_graph(self):
        captured.append(self.batch)
        return real_capture(self)

    monkeypatch.setattr(TokenStepper, "_capture_graph", capture_graph)
    graphed, sizes, steppers = beam_search(decoder, prompts, "graph", monkeypatch)
    stepper = steppers[0]
    assert stepper.graph_failure is None and stepper.graph_recurrence == "fused" and stepper.capture_failures == []
    runs = [(size, sum(1 for _ in group)) for size, group in itertools.groupby(sizes)]
    assert captured == [size for size, steps in runs if steps > GENERATOR_CAPTURE_AFTER] and len(captured) >= 2
    # 16-bit roundings may swap near-tied hypotheses between the two paths: there, each path's scores are
    # checked against the full forward pass (the tolerance of test_token_stepper's GPU test), not each other
    if dtype == torch.float32:
        assert_same_hypotheses(graphed, cached, 1e-4)
    assert_scores_match_the_full_forward(decoder, graphed, 1e-4 if dtype == torch.float32 else 0.1)


# ------------------------------------------------------------------------------------ memory guard


def test_auto_is_the_ring_on_the_cpu_where_free_memory_allows(monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    meminfo = open("/proc/meminfo").read()
    available = int(meminfo.split("MemAvailable:")[1].split()[0]) * 1024
    assert abs(srupp_lm.free_memory(torch.device("cpu")) - available) < 2 ** 30  # a moment later
    decoder = make_decoder(adaptive=False)
    with torch.no_grad():
        state = {}
        decoder(torch.randint(4, 40, (2, 3)), incremental_state=state)
        assert decoder._stepper(state).mode == "ring"
        monkeypatch.setattr(srupp_lm, "free_memory", lambda device: 1000)  # a machine out of memory
        state = {}
        decoder(torch.randint(4, 40, (2, 3)), incremental_state=state)
        assert decoder._stepper(state) is None and decoder.get_incremental_state(state, "srupp_state")


def test_ring_bytes_counts_what_a_ring_allocates():
    from fairseq_srupp.modules.decoding_ring import RingCache, ring_bytes

    for dtype in (torch.float32, torch.bfloat16):
        ring = RingCache(window=7, attention_layers=2, batch=3, heads=2, head_dim=5, num_layers=4, hidden_size=6,
                         dtype=dtype, device="cpu")
        held = sum(t.numel() * t.element_size() for t in ring.tensors() + (ring.visible,))
        assert ring_bytes(7, 2, 3, 10, 4, 6, dtype) == held


class FakeCudaWeight:
    device, dtype = torch.device("cuda"), torch.float32


def test_auto_decodes_through_the_cache_where_the_ring_would_take_too_much_memory(monkeypatch, caplog):
    # A ring holds the whole window from the first token: for a large batch of short outputs on a GPU,
    # auto keeps fairseq's growing cache (explicit graph / ring modes are not second-guessed).
    from fairseq_srupp.modules.decoding_ring import ring_bytes

    decoder = make_decoder(adaptive=False)
    cfg = decoder.cfg
    needed = ring_bytes(cfg.eval_window, 3, 5, cfg.proj_size, cfg.num_layers, cfg.hidden_size, torch.float32)
    free = {"value": 4 * needed}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["value"] - 100, 1 << 40))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 300)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 200)
    assert decoder._ring_fits(5, FakeCudaWeight())  # exactly RING_MEMORY_SHARE (0.25) of what is free
    free["value"] -= 1
    with caplog.at_level("INFO"):
        assert not decoder._ring_fits(5, FakeCudaWeight())
        assert not decoder._ring_fits(5, FakeCudaWeight())
    assert caplog.text.count("decoding 5 sequences through fairseq's incremental state, not a fixed ring") == 1

    monkeypatch.delenv(MODE_ENV, raising=False)
    monkeypatch.setattr(srupp_lm, "decoding_mode", lambda device, mode=None: "ring")  # auto as on a GPU (eager)
    monkeypatch.setattr(decoder, "_ring_fits", lambda batch, weight: False)
    tokens = torch.randint(4, 40, (5, 3))
    with torch.no_grad():
        state = {}
        decoder(tokens, incremental_state=state)
        assert decoder._stepper(state) is None and decoder.get_incremental_state(state, "srupp_state")
        monkeypatch.setenv(MODE_ENV, "ring")  # asked for by name: taken whatever it costs
        state = {}
        decoder(tokens, incremental_state=state)
        assert decoder._stepper(state) is not None


def test_a_ring_that_does_not_fit_is_one_clear_error(ring_mode, monkeypatch):
    from fairseq_srupp.errors import SRUppUserError

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(token_stepper, "RingCache", out_of_memory)
    decoder = make_decoder(adaptive=False)
    decoder.cfg.eval_window = 200_000
    with torch.no_grad(), pytest.raises(SRUppUserError, match=(
            r"^the decoding ring of 5 sequences \(window 200000\) needs 370 MiB, more than the CPU has free: "
            r"decode fewer sequences at once, lower eval_window, or set FAIRSEQ_SRUPP_DECODING=cache \(memory that "
            r"grows with the output\)$")):
        decoder(torch.randint(4, 40, (5, 3)), incremental_state={})
