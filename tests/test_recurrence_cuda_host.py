"""The CUDA source's own entry points, compiled for the host, against the reference.

``recurrence_cuda.cu`` is built as C++ under ``cuda_host_shim.h`` and every thread of each launch
grid runs in turn. It is driven through the real custom op and its registered autograd: the op's
CPU slot is given ``CudaKernels(launch_host)``, i.e. the CUDA path with only CuPy's launcher
swapped. Without a GPU in CI this is the only execution the GPU code gets between GPU runs.
"""
import os
import subprocess
import sys

import pytest
import torch
from conftest import max_diff

from fairseq_srupp.errors import SRUppUserError

from fairseq_srupp.ops.recurrence import elementwise_recurrence, elementwise_recurrence_ref, op
from fairseq_srupp.ops.recurrence.cuda_host import launch_host
from fairseq_srupp.ops.recurrence.cupy_kernel import (BLOCK_ENV, DEFAULT_PREFETCH, KERNEL_DTYPES, PREFETCH_ENV,
                                                      STAGE_ENV, THREADS_PER_BLOCK, CudaKernels, grid_blocks,
                                                      kernel_name, kernel_variants, launch_threads, staged_threads,
                                                      threads_per_block)

# relative to max |reference| + 1, as in test_cuda_kernel.py
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}
DIFFERENTIABLE = ("U", "x", "weight_c", "bias", "c0")


@pytest.fixture
def cuda_source_on_cpu(monkeypatch):
    launched = []

    def recording_launch(name, device, n_columns, args, prefetch):
        launched.append(name)
        launch_host(name, device, n_columns, args, prefetch)

    monkeypatch.setitem(op.KERNELS, "cpu", CudaKernels(recording_launch))
    return launched


def inputs_for(L, B, d, k, dtype, pad, dropout, x_dtype=None):
    U = torch.randn(L, B, d * k)
    return dict(
        U=U.to(dtype), x=torch.randn(L, B, d).to(x_dtype or dtype) if k == 3 else None,
        weight_c=torch.empty(2 * d).uniform_(-1, 1), bias=torch.randn(2 * d), c0=torch.randn(B, d),
        mask_c=(torch.rand(B, d) > 0.2).float() / 0.8 if dropout else None,
        mask_pad=(torch.rand(L, B) < 0.3) if pad else None,
    )


def run(fn, inputs, grad_h, grad_c, **kwargs):
    leaves = {n: (t.detach().clone().requires_grad_(n in DIFFERENTIABLE) if t is not None and t.is_floating_point()
                  else t) for n, t in inputs.items()}
    h, c = fn(**leaves, **kwargs)
    (h.float() * grad_h).sum().add_((c.float() * grad_c).sum()).backward()
    grads = {n: leaves[n].grad for n in DIFFERENTIABLE if leaves[n] is not None}
    return h, c, grads


VARIANTS = [pytest.param(u, x, k, id="U_{}-x_{}-k{}".format(KERNEL_DTYPES[u], KERNEL_DTYPES[x], k))
            for u, x, k in kernel_variants()]


@pytest.mark.parametrize("u_dtype,x_dtype,k", VARIANTS)
@pytest.mark.parametrize("prefetch", [1, 3, 4, 8])
@pytest.mark.parametrize("pad,dropout", [(False, False), (True, True)])
def test_cuda_entry_points_match_reference(cuda_source_on_cpu, monkeypatch, u_dtype, x_dtype, k, prefetch, pad,
                                           dropout):
    # B*d = 300 columns: two blocks of 256 threads, the second one mostly idle (the bounds check);
    # L = 11 is no multiple of a group (P + 1 steps: 2, 4, 5, 9): the last group of steps is partial
    L, B, d = 11, 3, 100
    monkeypatch.setenv(PREFETCH_ENV, str(prefetch))
    inputs = inputs_for(L, B, d, k, u_dtype, pad, dropout, x_dtype)
    if pad:
        inputs["mask_pad"][0, 0] = True  # padding at the first step: c0 passes through
        inputs["mask_pad"][L - 1, 1] = True  # and at the last one, where the backward starts
    grad_h, grad_c = torch.randn(L, B, d), torch.randn(B, d)
    h, c, g = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="cpu")
    # the reference through the dispatcher: with U and x in one dtype that is the reference itself, with
    # a 16-bit U next to an fp32 x it gets U widened, so h is fp32 as the kernels give it
    h_ref, c_ref, g_ref = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="reference")
    if u_dtype == x_dtype:
        assert torch.equal(h_ref, run(elementwise_recurrence_ref, inputs, grad_h, grad_c)[0])
    assert cuda_source_on_cpu == [kernel_name("forward", u_dtype, k, x_dtype), kernel_name("backward", u_dtype, k, x_dtype)]
    if u_dtype == x_dtype:  # the names the entry points always had
        suffix = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[u_dtype]
        assert cuda_source_on_cpu == ["srupp_forward_{}_k{}".format(suffix, k), "srupp_backward_{}_k{}".format(suffix, k)]
    assert B * d > THREADS_PER_BLOCK
    assert h.dtype == x_dtype and c.dtype == torch.float32  # the dispatcher's dtype rule
    assert set(g) == set(g_ref)
    for name, a, b in [("h", h, h_ref), ("c_last", c, c_ref)] + [("grad " + n, g[n], g_ref[n]) for n in g]:
        # mixed storage: only grad_U is 16-bit, everything else must agree to fp32 precision
        tol = TOLERANCE[u_dtype] if u_dtype == x_dtype else TOLERANCE[a.dtype]
        scale = b.detach().float().abs().max().item() + 1.0
        print("{}/{} k={} P={} {}: max diff {:.3e} (scale {:.2e})".format(
            u_dtype, x_dtype, k, prefetch, name, max_diff(a, b), scale))
        assert max_diff(a, b) <= tol * scale, name
    if pad:
        assert torch.all(h[inputs["mask_pad"]] == 0)


@pytest.mark.parametrize("L", [1, 2, 9, 10, 19])
def test_prefetch_depth_changes_no_bit(cuda_source_on_cpu, monkeypatch, L):
    """Loading ahead reorders loads, never arithmetic: every depth gives the same bits, also when L < P and
    when L is a whole number of groups (P + 1 steps) or one step more."""
    inputs = inputs_for(L, 3, 100, 3, torch.bfloat16, pad=True, dropout=True, x_dtype=torch.float32)
    grad_h, grad_c = torch.randn(L, 3, 100), torch.randn(3, 100)
    results = {}
    for prefetch in (1, 3, 4, 8):
        monkeypatch.setenv(PREFETCH_ENV, str(prefetch))
        results[prefetch] = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="cpu")
    (h1, c1, g1) = results[1]
    for prefetch in (3, 4, 8):
        h, c, g = results[prefetch]
        assert torch.equal(h, h1) and torch.equal(c, c1), prefetch
        for name in g1:
            assert torch.equal(g[name], g1[name]), (prefetch, name)


def shifted(t):
    """t's values in a tensor that starts one element into its storage (a 16-bit value 2 bytes into a word)."""
    if t is None:
        return None
    return torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view_as(t).copy_(t)


@pytest.mark.parametrize("u_dtype,x_dtype,k", VARIANTS)
@pytest.mark.parametrize("stage", [4, 8, 16])
def test_staged_kernels_give_the_rings_bits(cuda_source_on_cpu, monkeypatch, u_dtype, x_dtype, k, stage):
    """The staged kernels (inputs copied to shared memory by cp.async, read back at their byte offsets) do the
    ring's arithmetic on the same values, so they give its bits: with L shorter than a stage, a whole number of
    stages and a partial last one; with and without padding; with U, x and the padding flags starting one element
    into their storage, and with an odd number of columns (3 x 33), whose 16-bit U spans alternate between starting
    at a word and 2 bytes into one from step to step."""
    for L, B, d, pad, shift in [(1, 1, 5, False, False), (11, 3, 33, True, True), (37, 3, 100, True, False),
                                (2 * stage, 2, 7, False, True)]:
        inputs = inputs_for(L, B, d, k, u_dtype, pad, dropout=pad, x_dtype=x_dtype)
        if shift:
            inputs.update(U=shifted(inputs["U"]), x=shifted(inputs["x"]), mask_pad=shifted(inputs["mask_pad"]))
        grad_h, grad_c = torch.randn(L, B, d), torch.randn(B, d)
        results = {}
        for steps in (0, stage):
            monkeypatch.setenv(STAGE_ENV, str(steps))
            results[steps] = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="cpu")
        (h0, c0, g0), (h, c, g) = results[0], results[stage]
        where = (L, B, d, pad, shift)
        assert torch.equal(h, h0) and torch.equal(c, c0), where
        for name in g0:
            assert torch.equal(g[name], g0[name]), (where, name)
    h_ref = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="reference")[0]
    assert max_diff(h, h_ref) <= TOLERANCE[u_dtype] * (h_ref.float().abs().max().item() + 1.0)


def test_staged_launch_runs_its_own_block_size(monkeypatch):
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    assert [launch_threads(4 * 3072, 132, s) for s in (0, 4, 8, 16)] == [96, 128, 64, 32]
    assert staged_threads(8) == 64
    monkeypatch.setenv(BLOCK_ENV, "64")
    assert launch_threads(4 * 3072, 132, 0) == 64
    with pytest.raises(SRUppUserError, match="^{} and {}=8 cannot be combined: the staged CUDA recurrence runs 64 "
                       "threads per block".format(BLOCK_ENV, STAGE_ENV)):
        launch_threads(4 * 3072, 132, 8)


@pytest.mark.parametrize("value", ["1", "32", "eight", "-4"])
def test_bad_stage_size_is_one_clear_error(cuda_source_on_cpu, monkeypatch, value):
    monkeypatch.setenv(STAGE_ENV, value)
    with pytest.raises(SRUppUserError, match=r"^{}={!r} is not one of 0, 4, 8, 16: unset it or set it to one of "
                       r"them$".format(STAGE_ENV, value)):
        elementwise_recurrence(**inputs_for(3, 1, 4, 3, torch.float32, False, False), implementation="cpu")


@pytest.mark.parametrize("columns, sms, threads", [
    (4 * 3072, 132, 96),     # enwik8-base training per GPU on an H100: 128 blocks instead of 48 of 256
    (16 * 3072, 132, 256),   # enough columns to fill every SM with the largest blocks
    (10, 132, 32),           # never under one warp
    (300, 4, 96),            # the host launches of these tests: 3 full blocks and a partial one
])
def test_blocks_spread_over_the_sms(monkeypatch, columns, sms, threads):
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    assert threads_per_block(columns, sms) == threads
    assert grid_blocks(columns, threads) * threads >= columns > (grid_blocks(columns, threads) - 1) * threads
    monkeypatch.setenv(BLOCK_ENV, "64")
    assert threads_per_block(columns, sms) == 64


@pytest.mark.parametrize("value", ["0", "48", "512", "many"])
def test_bad_block_size_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv(BLOCK_ENV, value)
    with pytest.raises(SRUppUserError, match="^{}={!r}: give the CUDA recurrence's threads per block".format(BLOCK_ENV, value)):
        threads_per_block(1000, 4)


def test_block_size_changes_no_bit(cuda_source_on_cpu, monkeypatch):
    """A column's thread computes the same whatever block it is in; the spare threads of the last
    block (300 columns: 256 + 44, 96 * 3 + 12, 32 * 9 + 12) write nothing."""
    inputs = inputs_for(7, 3, 100, 3, torch.float32, pad=True, dropout=True)
    grad_h, grad_c = torch.randn(7, 3, 100), torch.randn(3, 100)
    results = {}
    for threads in ("256", "96", "32"):
        monkeypatch.setenv(BLOCK_ENV, threads)
        results[threads] = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="cpu")
    h_ref = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="reference")[0]
    assert max_diff(results["256"][0], h_ref) <= TOLERANCE[torch.float32] * (h_ref.abs().max().item() + 1.0)
    for threads in ("96", "32"):
        h, c, g = results[threads]
        assert torch.equal(h, results["256"][0]) and torch.equal(c, results["256"][1]), threads
        for name in g:
            assert torch.equal(g[name], results["256"][2][name]), (threads, name)


@pytest.mark.parametrize("value", ["0", "17", "four", "-1"])
def test_bad_prefetch_depth_is_one_clear_error(cuda_source_on_cpu, monkeypatch, value):
    monkeypatch.setenv(PREFETCH_ENV, value)
    with pytest.raises(SRUppUserError, match="^{}={!r}: give the number of time steps".format(PREFETCH_ENV, value)):
        elementwise_recurrence(**inputs_for(3, 1, 4, 3, torch.float32, False, False), implementation="cpu")


BAD_PREFETCH_SCRIPT = """
import torch, fairseq_srupp
from fairseq_srupp.ops.recurrence import elementwise_recurrence, op
from fairseq_srupp.ops.recurrence.cuda_host import launch_host
from fairseq_srupp.ops.recurrence.cupy_kernel import CudaKernels
op.KERNELS["cpu"] = CudaKernels(launch_host)
elementwise_recurrence(torch.zeros(2, 1, 6), torch.zeros(2, 1, 2), torch.zeros(4), torch.zeros(4), torch.zeros(1, 2))
"""


def test_bad_prefetch_depth_prints_one_line_through_the_plugin():
    env = dict(os.environ, **{PREFETCH_ENV: "32"})
    env.pop("FAIRSEQ_SRUPP_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", BAD_PREFETCH_SCRIPT], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: {}='32': give the number of time steps the CUDA recurrence loads ahead, an integer from 1 to 16 "
        "(default 4)".format(PREFETCH_ENV)]


@pytest.mark.parametrize("u_dtype", [torch.bfloat16, torch.float16])
def test_no_copy_of_u_under_autocast(monkeypatch, u_dtype):
    """A 16-bit U next to an fp32 x reaches the kernels as it is (same storage), and grad_U leaves
    them in U's dtype: no fp32 copy either way."""
    launches = []

    def recording_launch(name, device, n_columns, args, prefetch):
        launches.append((name, [int(a) for a in args]))
        launch_host(name, device, n_columns, args, prefetch)

    monkeypatch.setitem(op.KERNELS, "cpu", CudaKernels(recording_launch))
    inputs = inputs_for(5, 2, 4, 3, u_dtype, pad=True, dropout=True, x_dtype=torch.float32)
    U = inputs.pop("U").requires_grad_()
    h, c = elementwise_recurrence(U, **inputs, implementation="cpu")
    (forward_name, forward_args), = launches
    assert forward_name == kernel_name("forward", u_dtype, 3, torch.float32)
    assert forward_args[0] == U.data_ptr() and forward_args[1] == inputs["x"].data_ptr()
    assert h.dtype == torch.float32
    # the op's own backward, as autograd calls it: grad_U in U's dtype, grad_x in x's
    _, _, c_all = op.recurrence_op(U.detach(), *inputs.values())
    grads = op.recurrence_backward_op(U.detach(), *inputs.values(), c_all, torch.randn(5, 2, 4), torch.randn(2, 4))
    assert launches[-1][1][0] == U.data_ptr()
    assert (grads[0].dtype, grads[1].dtype) == (u_dtype, torch.float32)


@pytest.mark.parametrize("kernels", ["cuda source on the host", "cpu"])
def test_opcheck_with_16_bit_u_and_fp32_x(monkeypatch, kernels):
    """The fake (meta) implementations give the dtypes the kernels return, for torch.compile."""
    if kernels == "cuda source on the host":
        monkeypatch.setitem(op.KERNELS, "cpu", CudaKernels(launch_host))
    inputs = inputs_for(5, 2, 3, 3, torch.bfloat16, pad=True, dropout=True, x_dtype=torch.float32)
    args = tuple(inputs.values())
    torch.library.opcheck(op.recurrence_op, args)
    with torch.no_grad():
        _, _, c_all = op.recurrence_op(*args)
    torch.library.opcheck(op.recurrence_backward_op, args + (c_all, torch.randn(5, 2, 3), torch.randn(2, 3)))


def test_host_launch_rejects_unknown_entry_points():
    with pytest.raises(ValueError, match="no entry point srupp_forward_float64_k3"):
        launch_host("srupp_forward_float64_k3", torch.device("cpu"), 4, [0] * 12, DEFAULT_PREFETCH)


# (U, x, c0) dtypes -> (h, c_last) dtypes, by the dispatcher's rule
DTYPE_RULE = [
    ((torch.bfloat16, torch.float32, torch.float32), (torch.float32, torch.float32)),  # autocast residual
    ((torch.float16, torch.float16, torch.float16), (torch.float16, torch.float16)),
    ((torch.bfloat16, torch.bfloat16, torch.float32), (torch.bfloat16, torch.float32)),  # fp32 carried state
    ((torch.float32, torch.float32, torch.float64), (torch.float64, torch.float64)),
]


@pytest.mark.parametrize("implementation", ["reference", "cpu", "cuda source on the host"])
@pytest.mark.parametrize("dtypes,expected", DTYPE_RULE)
def test_one_dtype_rule_for_every_implementation(monkeypatch, implementation, dtypes, expected):
    if implementation == "cuda source on the host":
        if torch.float64 in dtypes:
            pytest.skip("float64 never reaches the CUDA kernels: the dispatcher sends it to the reference")
        monkeypatch.setitem(op.KERNELS, "cpu", CudaKernels(launch_host))
        implementation = "cpu"
    u_dtype, x_dtype, c_dtype = dtypes
    inputs = inputs_for(4, 2, 3, 3, torch.float32, pad=True, dropout=True)
    inputs.update(U=inputs["U"].to(u_dtype), x=inputs["x"].to(x_dtype), c0=inputs["c0"].to(c_dtype))
    h, c = elementwise_recurrence(**inputs, implementation=implementation)
    assert (h.dtype, c.dtype) == expected
