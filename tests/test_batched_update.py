"""fairseq's FP16Optimizer with its per-parameter loops as multi-tensor calls (fairseq_srupp.optim.batched_update):
the same bits as fairseq's own loops (FAIRSEQ_SRUPP_UPDATE=fairseq), flat and per-parameter copies alike, and a
number of operations per update that no longer grows with the number of parameters."""
import collections
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fairseq_srupp  # noqa: F401  (registers --optimizer radam, installs the batched update)
from fairseq import utils
from fairseq_srupp.bench.half_precision import fp16_optimizer as fairseq_fp16_optimizer
from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.optim import batched_update
from fairseq_srupp.optim.batched_update import UPDATE_ENV


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def fp16_optimizer(params, dtype, flat):
    if not flat or params[0].is_cuda:
        return fairseq_fp16_optimizer(params, dtype, flatten=flat, lr=0.1)
    # fairseq keys the flat copy by the current CUDA device; on the CPU a parameter's device index is None
    with mock.patch.object(torch.cuda, "current_device", lambda: None):
        return fairseq_fp16_optimizer(params, dtype, flatten=True, lr=0.1)


def half_params(dtype, n=6, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (5,), (4, 2, 3), (1,), (7, 2), (2, 2)]
    return [torch.nn.Parameter(torch.randn(shapes[i % len(shapes)], generator=g).to(device, dtype)) for i in range(n)]


def give_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        # one parameter without a gradient at steps 0 and 2: fairseq copies zeros for it
        if p.requires_grad:
            p.grad = None if (i == 1 and step % 2 == 0) else (torch.randn(p.shape, generator=g) * 3).to(p.device, p.dtype)


def fp32_copies(opt):
    copies = opt.fp32_params
    return list(copies.values()) if isinstance(copies, dict) else list(copies)


def state(opt, params):
    copies = fp32_copies(opt)
    return ([p.detach().clone() for p in params] + [c.detach().clone() for c in copies]
            + [c.grad.detach().clone() for c in copies if c.grad is not None])


@pytest.mark.parametrize("dtype,flat,device", [
    (torch.bfloat16, False, "cpu"), (torch.float16, False, "cpu"), (torch.float16, True, "cpu"),
    pytest.param(torch.bfloat16, False, "cuda", marks=CUDA), pytest.param(torch.float16, True, "cuda", marks=CUDA),
], ids=["bf16-per-parameter", "fp16-per-parameter", "fp16-flat", "bf16-per-parameter-gpu", "fp16-flat-gpu"])
def test_updates_give_fairseqs_bits(monkeypatch, dtype, flat, device):
    """Three updates as fairseq's trainer makes them, through fairseq's loops and through the multi-tensor calls:
    the same half parameters, fp32 copies, fp32 gradients and norm after each phase. Clipping is off here (on a
    GPU the two norms may differ in the last bit, which clipping would carry into the update; on the CPU
    ``_foreach_norm`` takes each norm as ``torch.norm`` does); it is compared with a tolerance below, and on a
    GPU here too."""
    runs = {}
    for mode in ("fairseq", "foreach"):
        monkeypatch.setenv(UPDATE_ENV, mode)
        params = half_params(dtype, device=device)
        if not flat:  # fairseq's per-parameter copies skip a frozen parameter (its flat copy assumes none)
            params[4].requires_grad_(False)
        opt = fp16_optimizer(params, dtype, flat)
        for copy in fp32_copies(opt):  # whatever the fp32 gradients held: every slot must be written or zeroed
            copy.grad.fill_(7.0)
        snapshots = []
        for step in range(3):
            give_grads(params, step)
            opt._needs_sync = True  # what opt.backward(loss) sets
            opt.multiply_grads(1 / 8)
            norm = opt.clip_grad_norm(0.0)
            snapshots.append(state(opt, params) + [norm.detach().clone()])
            opt.step()
            snapshots.append(state(opt, params))
            opt.zero_grad()
            assert all(p.grad is None for p in params)
            snapshots.append(state(opt, params))
        runs[mode] = snapshots
    for ours, theirs in zip(runs["foreach"], runs["fairseq"]):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            if a.dim() == 0 and device == "cuda":  # the norm: the last bit may differ on a GPU
                torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
            else:
                assert a.dtype == b.dtype and torch.equal(a, b)


def test_clipping_norm_and_scaled_gradients_match_fairseqs(monkeypatch):
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(40, 3), (7,), (5, 5, 2), (1,)]]
    grads = [torch.randn(p.shape, generator=g) * 10 for p in params]
    results = {}
    for mode in ("fairseq", "foreach"):
        monkeypatch.setenv(UPDATE_ENV, mode)
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        norm = utils.clip_grad_norm_(params, 1.0, aggregate_norm_fn=lambda n: n * 2)
        results[mode] = (norm, [p.grad.clone() for p in params])
    (norm, clipped), (their_norm, their_clipped) = results["foreach"], results["fairseq"]
    torch.testing.assert_close(norm, their_norm, rtol=1e-6, atol=0)
    torch.testing.assert_close(norm, 2 * torch.cat([g.flatten() for g in grads]).norm(), rtol=1e-6, atol=0)
    for a, b in zip(clipped, their_clipped):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert abs(torch.cat([c.flatten() for c in clipped]).norm().item() - 0.5) < 1e-5  # clipped to 1 / 2


def test_cases_it_does_not_cover_run_fairseqs_code(monkeypatch):
    calls = []
    original = batched_update._originals["clip_grad_norm_"]
    monkeypatch.setitem(batched_update._originals, "clip_grad_norm_",
                        lambda *args: calls.append(args) or original(*args))
    one = torch.nn.Parameter(torch.ones(3))
    one.grad = torch.ones(3)
    utils.clip_grad_norm_([one], 1.0)  # a single gradient
    expert = torch.nn.Parameter(torch.ones(2))
    expert.grad, expert.expert = torch.ones(2), True
    utils.clip_grad_norm_([one, expert], 1.0)  # expert gradients
    monkeypatch.setattr(utils, "multi_tensor_l2norm_available", True)
    utils.clip_grad_norm_([torch.nn.Parameter(torch.ones(1)), one], 0.0)  # apex's fused norm (not called here)
    assert len(calls) == 3


def count_ops(fn):
    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    counts = collections.Counter()
    with Count():
        fn()
    return counts


@pytest.mark.parametrize("dtype,flat", [(torch.bfloat16, False), (torch.float16, True)], ids=["bf16", "fp16-flat"])
def test_operations_per_update_do_not_grow_with_the_parameters(monkeypatch, dtype, flat):
    """What a GPU launches per update: with fairseq's loops the copies, zeroing and norms grow with the number of
    parameters; as multi-tensor calls they do not (the RAdam step itself is left out: on the CPU it loops)."""

    def ops(n, mode):
        monkeypatch.setenv(UPDATE_ENV, mode)
        params = half_params(dtype, n=n)
        opt = fp16_optimizer(params, dtype, flat)
        give_grads(params, 0)

        def update():
            opt._needs_sync = True
            opt.multiply_grads(1 / 8)
            opt.clip_grad_norm(1.0)
            opt._unscale_grads()
            opt._sync_fp32_params_to_fp16()
            opt.zero_grad()

        update()  # the first update makes the flat copy's views
        give_grads(params, 0)
        counts = count_ops(update)
        # fairseq's multiply_grads reads each p.grad.data: a detach, which launches nothing
        return sum(v for k, v in counts.items() if k != "detach")

    assert ops(8, "foreach") == ops(32, "foreach")
    theirs_8, theirs_32 = ops(8, "fairseq"), ops(32, "fairseq")
    assert theirs_32 - theirs_8 >= 2 * 24  # at least a copy in and a copy out per parameter
    assert ops(32, "foreach") < theirs_32 / 4


def test_a_bad_switch_value_is_one_error_line(monkeypatch):
    monkeypatch.setenv(UPDATE_ENV, "fast")
    with pytest.raises(SRUppUserError, match="FAIRSEQ_SRUPP_UPDATE='fast' is not one of foreach, fairseq"):
        batched_update.batched()
