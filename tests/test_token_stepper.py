"""TokenStepper and RingCache: fixed-shape decoding (what a CUDA graph replays) equals the full forward.

On the CPU the ring's eager step is compared with the full pass over the prefix (same-length mask of
the window), with fairseq's incremental-state path, through padding and past the window, and checked
for host synchronisations (which capture refuses). On a GPU (the kit's step 1) the captured graph is
compared with the eager ring and the full pass.
"""
import pytest
import torch
from conftest import assert_close
from test_incremental_decoding import WINDOW, full_log_probs, make_decoder
from torch.utils._python_dispatch import TorchDispatchMode

from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.models.token_stepper import TokenStepper, decoding_mode

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

CASES = [
    pytest.param(dict(adaptive=False), id="char"),
    pytest.param(dict(adaptive=True), id="adaptive"),
    pytest.param(dict(adaptive=False, attention_every_n_layers=2, num_heads=2), id="attention-every-2"),
    pytest.param(dict(adaptive=False, normalize_after=True), id="post-norm"),
]


def stepped_log_probs(decoder, tokens, mode, prompt=4, full_view=False):
    """Log-probabilities (B, T - prompt + 1, V) at positions prompt-1 … T-1, through a TokenStepper
    (``full_view``: an eager ring attends to all its slots from the first step, as a graph does)."""
    stepper = TokenStepper(decoder, tokens.shape[0], mode=mode)
    outs = [stepper.prompt(tokens[:, :prompt])]
    if full_view:  # the slots not written yet were never zeroed (torch.empty): poisoned, as they may be
        ring = stepper.ring
        ring.keys[:, :, :, ring.filled:] = ring.values[:, :, :, ring.filled:] = float("nan")
        ring.growing_view = False  # zeroes them
    outs += [stepper.step(tokens[:, t]) for t in range(prompt, tokens.shape[1])]
    assert stepper.consumed == tokens.shape[1]
    return decoder.get_normalized_probs((torch.stack(outs, 1), None), log_probs=True), stepper


def padded_tokens(decoder, batch, length):
    tokens = torch.randint(4, 40, (batch, length))
    pad = decoder.dictionary.pad()
    tokens[0, 1] = tokens[0, 6] = tokens[batch - 1, 11] = pad  # one in the prompt, two among the steps
    return tokens, tokens.ne(pad)


@pytest.mark.parametrize("view", ["growing-view", "full-view"])
@pytest.mark.parametrize("case", CASES)
def test_ring_steps_equal_full_forward_and_the_cache_past_the_window(case, view):
    decoder = make_decoder(**case)
    tokens, real = padded_tokens(decoder, 3, 3 * WINDOW + 3)
    with torch.no_grad():
        full = full_log_probs(decoder, tokens)[:, 3:]
        ring, stepper = stepped_log_probs(decoder, tokens, "ring", full_view=view == "full-view")
        cache, _ = stepped_log_probs(decoder, tokens, "cache")
    keep = real[:, 3:]
    assert_close("ring vs full", ring[keep], full[keep], 1e-5)
    assert_close("ring vs cache", ring[keep], cache[keep], 1e-5)
    assert stepper.ring.keys.shape[3] == WINDOW + 1  # fixed from the first step
    assert stepper.ring.c.dtype == torch.float32


def test_prompt_longer_than_the_window_and_batch_of_one():
    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (1, 4 * WINDOW))
    with torch.no_grad():
        full = full_log_probs(decoder, tokens)[:, 2 * WINDOW - 1:]
        ring, stepper = stepped_log_probs(decoder, tokens, "ring", prompt=2 * WINDOW)
    assert_close("ring after a long prompt", ring, full, 1e-5)
    assert int(stepper.ring.slot) == (WINDOW + 1 + 2 * WINDOW) % (WINDOW + 1)  # full ring: oldest first


def test_fixed_shape_adaptive_input_equals_the_gathered_one():
    decoder = make_decoder(adaptive=True)
    tokens = torch.randint(0, 40, (4, 9))
    with torch.no_grad():
        assert torch.equal(decoder.embed(tokens, fixed_shape=True), decoder.embed(tokens))


class HostSyncs(TorchDispatchMode):
    """Records the operators that read a tensor's values on the host or size outputs by them, and tensors
    made from host data (on a GPU, a copy from pageable memory): what CUDA graph capture refuses."""

    SYNCING = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero", "aten::masked_select",
               "aten::lift_fresh")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING:
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("adaptive", [False, True])
def test_the_ring_step_never_reads_tensor_values_on_the_host(adaptive):
    # What CUDA graph capture refuses; fairseq's path reads one per step (the padding check), and
    # the gathered adaptive input several, so the check can fail.
    decoder = make_decoder(adaptive=adaptive)
    tokens = torch.randint(4, 40, (2, 6))
    with torch.no_grad():
        stepper = TokenStepper(decoder, 2, mode="ring")
        stepper.prompt(tokens[:, :3])
        stepper.ring.growing_view = False  # the step a graph captures: all S slots
        with HostSyncs() as ring_syncs:
            stepper.step(tokens[:, 3])
        cache = TokenStepper(decoder, 2, mode="cache")
        cache.prompt(tokens[:, :3])
        with HostSyncs() as cache_syncs:
            cache.step(tokens[:, 3])
    assert ring_syncs.seen == []
    assert cache_syncs.seen


def test_modes_and_misuse_are_explained(monkeypatch):
    cpu = torch.device("cpu")
    assert decoding_mode(cpu) == "ring"
    assert decoding_mode(torch.device("cuda")) == "graph"
    with pytest.raises(SRUppUserError, match="needs the model on a GPU"):
        decoding_mode(cpu, "graph")
    monkeypatch.setenv("FAIRSEQ_SRUPP_DECODING", "fast")
    with pytest.raises(SRUppUserError, match="FAIRSEQ_SRUPP_DECODING='fast' is not one of auto, cache, ring, graph"):
        decoding_mode(cpu)
    monkeypatch.setenv("FAIRSEQ_SRUPP_DECODING", "ring")
    decoder = make_decoder(adaptive=False)
    with pytest.raises(ValueError, match="call model.eval"):
        TokenStepper(decoder.train(), 1)
    decoder.eval()
    stepper = TokenStepper(decoder, 2)
    assert stepper.mode == "ring"
    with torch.no_grad():
        with pytest.raises(ValueError, match="give the prompt first"):
            stepper.step(torch.tensor([5, 6]))
        with pytest.raises(ValueError, match=r"prompt tokens must be \(batch=2, T >= 1\)"):
            stepper.prompt(torch.tensor([[5, 6, 7]]))
        stepper.prompt(torch.tensor([[5, 6], [7, 8]]))
        with pytest.raises(ValueError, match="one token per sequence"):
            stepper.step(torch.tensor([[5, 6]]))
    with pytest.raises(ValueError, match="give the prompt first"):
        TokenStepper(decoder, 1, mode="cache").step(torch.tensor([5]))


@pytest.mark.parametrize("mode", ["cache", "ring"])
def test_a_new_prompt_starts_over_in_the_same_buffers(mode):
    decoder = make_decoder(adaptive=False)
    first, second = torch.randint(4, 40, (2, 2, 2 * WINDOW))
    with torch.no_grad():
        fresh, _ = stepped_log_probs(decoder, second, mode)
        stepper = TokenStepper(decoder, 2, mode=mode)
        stepper.prompt(first[:, :3])
        for t in range(3, first.shape[1]):
            stepper.step(first[:, t])
        ring = stepper.ring
        outs = [stepper.prompt(second[:, :4])] + [stepper.step(second[:, t]) for t in range(4, second.shape[1])]
        again = decoder.get_normalized_probs((torch.stack(outs, 1), None), log_probs=True)
    assert stepper.ring is ring  # same buffers (what a captured graph reads)
    assert_close("second sequence vs a fresh stepper", again, fresh, 1e-6)


# ------------------------------------------------------------------------------------------ GPU


GRAPH_CASES = [
    pytest.param(dict(adaptive=False), id="char"),
    pytest.param(dict(adaptive=True), id="adaptive"),
    pytest.param(dict(adaptive=False, proj_size=256, num_heads=1), id="wide-head-score-product"),
]


def check_replay(case, dtype, device, mode):
    """``mode``'s steps on ``device`` against the eager ring and the full forward."""
    torch.manual_seed(0)
    decoder = make_decoder(**case).to(device=device, dtype=dtype)
    tokens, real = padded_tokens(decoder, 3, 3 * WINDOW + 3)
    tokens, real = tokens.to(device), real.to(device)
    with torch.no_grad():
        replayed, stepper = stepped_log_probs(decoder, tokens, mode)
        ring, _ = stepped_log_probs(decoder, tokens, "ring")
        full = full_log_probs(decoder, tokens)[:, 3:]
    keep = real[:, 3:]
    # The same kernels in the same order: equal up to an algorithm choice (one 16-bit rounding of a
    # log-probability near 4 is 0.016). A wrong slot or mask is off by far more than the full
    # forward's bf16 tolerance (0.1, about 6 roundings).
    same, full_tolerance = (1e-5, 1e-4) if dtype == torch.float32 else (0.035, 0.1)
    assert_close("{} vs eager ring".format(mode), replayed[keep].float(), ring[keep].float(), same)
    assert_close("{} vs full forward".format(mode), replayed[keep].float(), full[keep].float(), full_tolerance)
    return stepper


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", GRAPH_CASES)
def test_ring_cases_of_the_gpu_test_on_the_cpu(case, dtype):
    check_replay(case, dtype, "cpu", "ring")  # the GPU test's set-up and tolerances, without a graph


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", GRAPH_CASES)
def test_gpu_graph_replays_the_ring_step(case, dtype):
    stepper = check_replay(case, dtype, "cuda", "graph")
    assert stepper.graph is not None and stepper.graph_failure is None
    # the fused kernel inside the graph (the reference recurrence is only the fallback)
    assert stepper.graph_recurrence == "fused" and stepper.capture_failures == []


def test_a_failed_capture_restores_the_ring_and_steps_eagerly(monkeypatch, caplog):
    # What happens on a GPU where capture refuses an operation, after warm-up steps changed the ring.
    decoder = make_decoder(adaptive=False)
    tokens, real = padded_tokens(decoder, 2, 2 * WINDOW + 3)
    stepper = TokenStepper(decoder, 2, mode="ring")
    stepper.mode = "graph"  # as on a GPU

    def warm_up_then_refuse():
        stepper._ring_step()
        stepper._ring_step()
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(stepper, "_capture_graph", warm_up_then_refuse)
    with torch.no_grad():
        outs = [stepper.prompt(tokens[:, :4])] + [stepper.step(tokens[:, t]) for t in range(4, tokens.shape[1])]
        expected, _ = stepped_log_probs(decoder, tokens, "ring")
    got = decoder.get_normalized_probs((torch.stack(outs, 1), None), log_probs=True)
    assert stepper.graph is None
    refused = "RuntimeError: operation not permitted when stream is capturing"
    assert stepper.graph_failure == "fused recurrence: {0}; reference recurrence: {0}".format(refused)
    assert "decoding without a CUDA graph (capture failed: fused recurrence: RuntimeError" in caplog.text
    assert caplog.text.count("decoding without a CUDA graph") == 1  # tried once (with either recurrence)
    keep = real[:, 3:]
    assert_close("eager after a failed capture", got[keep], expected[keep], 1e-6)


def test_moved_or_cast_parameters_are_refused(monkeypatch):
    # A captured graph would read the old storage: the stepper says so instead.
    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (1, 6))
    with torch.no_grad():
        stepper = TokenStepper(decoder, 1, mode="ring")
        stepper.prompt(tokens[:, :3])
        stepper.step(tokens[:, 3])
        decoder.double()
        with pytest.raises(ValueError, match=r"parameters were moved or cast since this TokenStepper was made"):
            stepper.step(tokens[:, 4])
        with pytest.raises(ValueError, match=r"make a new TokenStepper"):
            stepper.prompt(tokens[:, :3])
        fresh = TokenStepper(decoder, 1, mode="ring")  # a new one works in the new dtype
        assert fresh.prompt(tokens[:, :3]).dtype == torch.float64
        assert fresh.step(tokens[:, 3]).dtype == torch.float64


class ReplayedEagerly:
    """Stands in for a captured graph on the CPU: replay runs the step it was captured from."""

    def __init__(self, step, output):
        self.step, self.output = step, output

    def replay(self):
        self.output.copy_(self.step())


def test_a_capture_refusing_the_fused_recurrence_is_retried_with_the_reference(monkeypatch, caplog):
    from fairseq_srupp.ops import recurrence

    decoder = make_decoder(adaptive=False)
    tokens, real = padded_tokens(decoder, 2, 2 * WINDOW + 3)
    stepper = TokenStepper(decoder, 2, mode="ring")
    stepper.mode = "graph"  # as on a GPU
    seen = []

    def capture_graph():
        seen.append(recurrence._forced)
        stepper._ring_step()  # warm-up, changing the ring before the refusal
        if recurrence._forced != "reference":
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        graph = ReplayedEagerly(stepper._ring_step, stepper._ring_step().clone())
        return graph, graph.output

    monkeypatch.setattr(stepper, "_capture_graph", capture_graph)
    with torch.no_grad():
        outs = [stepper.prompt(tokens[:, :4])] + [stepper.step(tokens[:, t]) for t in range(4, tokens.shape[1])]
        expected, _ = stepped_log_probs(decoder, tokens, "ring")
    assert seen == [None, "reference"] and recurrence._forced is None  # restored after the capture
    assert stepper.graph is not None and stepper.graph_failure is None and stepper.graph_recurrence == "reference"
    assert stepper.capture_failures == [
        "fused recurrence: RuntimeError: CUDA error: operation not permitted when stream is capturing"]
    assert "decoding with a CUDA graph of the recurrence's PyTorch reference" in caplog.text
    got = decoder.get_normalized_probs((torch.stack(outs, 1), None), log_probs=True)
    keep = real[:, 3:]
    assert_close("replayed after a retried capture", got[keep], expected[keep], 1e-6)


def test_forced_implementation_reaches_every_layer_and_is_undone():
    from fairseq_srupp.ops import recurrence

    decoder = make_decoder(adaptive=False)
    tokens = torch.randint(4, 40, (2, 12))
    calls = []
    real_ref = recurrence.elementwise_recurrence_ref

    def counting_ref(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real_ref(*args, **kwargs)

    with torch.no_grad():
        plain, _ = stepped_log_probs(decoder, tokens, "ring")
        recurrence.elementwise_recurrence_ref = counting_ref
        try:
            with recurrence.forced_implementation("reference"):
                forced, _ = stepped_log_probs(decoder, tokens, "ring")
        finally:
            recurrence.elementwise_recurrence_ref = real_ref
    assert calls and len(calls) == 3 * (1 + tokens.shape[1] - 4)  # every layer, the prompt and each step
    assert recurrence._forced is None
    assert_close("reference recurrence in the ring", forced, plain, 1e-5)


def test_an_eager_ring_attends_to_the_filled_slots_until_it_wraps():
    from fairseq_srupp.modules.decoding_ring import RingCache

    ring = RingCache(window=4, attention_layers=1, batch=2, heads=1, head_dim=3, num_layers=1, hidden_size=3,
                     dtype=torch.float32, device="cpu")
    k = torch.ones(2, 1, 1, 3)
    seen = []
    for growing in (True, False):
        ring.growing_view, ring.consumed = growing, 0
        for _ in range(7):
            ring.consumed += 1  # the stepper counts the token before stepping it
            keys, values, bias = ring.attend(0, k, k)
            seen.append((keys.shape[2], values.shape[2], bias.shape[3]))
            ring.slot.add_(1).remainder_(ring.slots)
    assert [n for n, _, _ in seen] == [1, 2, 3, 4, 5, 5, 5] + [5] * 7
    assert all(n == m == b for n, m, b in seen)
