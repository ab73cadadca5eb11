"""radam and srupp_cosine against the paper's optimizer equations and training loop."""
import copy
import math

import pytest
import torch
from conftest import assert_close
from fairseq.optim import build_optimizer
from fairseq.optim.lr_scheduler import build_lr_scheduler
from omegaconf import OmegaConf

import fairseq_srupp  # noqa: F401
from fairseq_srupp.optim import paper_learning_rate
from fairseq_srupp.optim.fused_radam import FusedRAdam, rho


def paper_radam_step(p, grad, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1):
    """RAdam of the paper's radam.py (degenerated_to_sgd=True), written from its equations."""
    beta1, beta2 = betas
    state["step"] += 1
    t = state["step"]
    state["m"] = beta1 * state["m"] + (1 - beta1) * grad
    state["v"] = beta2 * state["v"] + (1 - beta2) * grad * grad
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
    p = p - weight_decay * lr * p
    if rho_t > 5:
        rect = math.sqrt((1 - beta2 ** t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2))
        return p - lr * rect / (1 - beta1 ** t) * state["m"] / (state["v"].sqrt() + eps)
    return p - lr / (1 - beta1 ** t) * state["m"]


@pytest.mark.parametrize("dtype,unfused,tolerance", [
    (torch.float64, False, 1e-12),  # float64: outside the fused kernel, torch's RAdam passes
    (torch.float32, False, 2e-6),  # the fused AdamW kernel from step 6 on
    (torch.float32, True, 2e-6),  # --radam-unfused
], ids=["fp64", "fp32-fused", "fp32-unfused"])
def test_radam_matches_the_paper_update_rule(dtype, unfused, tolerance):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(7, 3, dtype=dtype))
    cfg = OmegaConf.create({"_name": "radam", "lr": [0.01], "weight_decay": 0.1, "radam_betas": "(0.9, 0.999)",
                            "radam_eps": 1e-8, "radam_unfused": unfused})
    optimizer = build_optimizer(cfg, [param])
    assert isinstance(optimizer.optimizer, torch.optim.RAdam)
    assert isinstance(optimizer.optimizer, FusedRAdam) != unfused
    expected = param.detach().clone().double()
    state = {"step": 0, "m": torch.zeros_like(expected), "v": torch.zeros_like(expected)}
    for step in range(12):  # rho_t > 5 from step 6 on: covers both regimes
        grad = torch.randn_like(expected)
        param.grad = grad.to(dtype)
        optimizer.step()
        expected = paper_radam_step(expected, grad, state, lr=0.01)
        assert_close("param after step {}".format(step + 1), param.detach().double(), expected, tolerance)


def radam_pair(params, **kwargs):
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    return (torch.optim.RAdam(params, decoupled_weight_decay=True, **kwargs), FusedRAdam(twins, **kwargs)), twins


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("dtype,tolerance,device", [
    (torch.float32, 1e-6, "cpu"), (torch.bfloat16, 2e-2, "cpu"),
    pytest.param(torch.float32, 1e-6, "cuda", marks=CUDA), pytest.param(torch.bfloat16, 2e-2, "cuda", marks=CUDA),
], ids=["fp32", "bf16", "fp32-gpu", "bf16-gpu"])
def test_fused_radam_equals_torch_radam_with_skipped_grads_and_a_checkpoint_between(dtype, tolerance, device):
    # A parameter without a gradient now and then falls behind in steps: it steps in its own group.
    # (On a GPU the fused kernel reads the step from a device tensor; the state's step stays on the CPU.)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape).to(device, dtype)) for shape in ((64, 33), (17,), (5, 5))]
    (torch_radam, fused), twins = radam_pair(params, lr=3e-3, betas=(0.8, 0.99), eps=0.05, weight_decay=0.1)
    for step in range(25):
        if step == 12:  # restart the fused one from torch's checkpoint (state on the CPU, as RAdam keeps it)
            fused = FusedRAdam(twins, lr=3e-3, betas=(0.8, 0.99), eps=0.05, weight_decay=0.1)
            fused.load_state_dict(copy.deepcopy(torch_radam.state_dict()))  # as from a file: no shared tensors
            for p, q in zip(params, twins):
                q.data.copy_(p.data)
        for i, (p, q) in enumerate(zip(params, twins)):
            skip = i == 2 and step % 3 == 0
            grad = None if skip else torch.randn_like(p)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        torch_radam.step()
        fused.step()
        for p, q in zip(params, twins):
            assert_close("step {}".format(step + 1), q.detach().float(), p.detach().float(), tolerance)
    assert [int(fused.state[q]["step"]) for q in twins] == [25, 25, 16]
    assert all(not fused.state[q]["step"].is_cuda for q in twins)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)], ids=["cpu", "gpu"])
def test_fused_radam_takes_the_fused_kernel_once_rectified(monkeypatch, device):
    """The fused kernel runs (once per device, dtype and step) exactly when ρ_t > 5; a test that the
    equality above is not just torch's RAdam twice."""
    calls = []
    real = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_",
                        lambda params, *a, **k: (calls.append(len(params)), real(params, *a, **k)))
    params = [torch.nn.Parameter(torch.randn(4, 4, device=device)) for _ in range(3)]
    optimizer = FusedRAdam(params, lr=1e-3)
    for _ in range(8):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    first_fused = next(t for t in range(1, 9) if rho(t, 0.999) > 5)
    assert calls == [3] * (8 - first_fused + 1)


def replay_paper_schedule(peak_lr, warmup, max_iter):
    """The paper's loop: warm-up overwrite, then optimizer step and CosineAnnealingLR step."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_iter)
    used = []
    for niter in range(max_iter):
        if niter < warmup:
            opt.param_groups[0]["lr"] = peak_lr * (niter + 1) / warmup
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return used


def test_srupp_cosine_reproduces_the_paper_loop():
    peak, warmup, max_update = 3e-4, 16, 200
    cfg = OmegaConf.create({"_name": "srupp_cosine", "warmup_updates": warmup, "lr": [peak], "max_update": max_update})
    opt_cfg = OmegaConf.create({"_name": "radam", "lr": [peak], "weight_decay": 0.0, "radam_betas": "(0.9, 0.999)", "radam_eps": 1e-8})
    optimizer = build_optimizer(opt_cfg, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = build_lr_scheduler(cfg, optimizer)
    ours = [optimizer.get_lr()]  # rate of update 0, set at construction
    for num_updates in range(1, max_update):
        ours.append(scheduler.step_update(num_updates))  # the trainer calls this after each update
    paper = replay_paper_schedule(peak, warmup, max_update)
    worst = max(abs(a - b) for a, b in zip(ours, paper))
    print("max |srupp_cosine - paper| = {:.3e}".format(worst))
    assert worst < 1e-9 * peak
    assert ours[0] == pytest.approx(peak / warmup) and ours[warmup - 1] == pytest.approx(peak)
    assert paper_learning_rate(max_update, peak, warmup, max_update) == pytest.approx(0.0, abs=1e-15)


def test_srupp_cosine_rejects_impossible_settings():
    opt_cfg = OmegaConf.create({"_name": "radam", "lr": [1e-3], "weight_decay": 0.0, "radam_betas": "(0.9, 0.999)", "radam_eps": 1e-8})
    optimizer = build_optimizer(opt_cfg, [torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="--warmup-updates"):
        build_lr_scheduler(OmegaConf.create({"_name": "srupp_cosine", "warmup_updates": 50, "lr": [1e-3], "max_update": 50}), optimizer)
