"""The CUDA recurrence kernel.

* NVRTC compile check of ``recurrence_cuda.cu`` for sm_80 and sm_90 — runs without a GPU (CuPy's
  NVRTC bindings + the NVRTC wheel, installed by ``make test`` through the ``compile-check`` extra).
* The dispatch decision, as a pure function.
* Parity with the reference and fairseq-train --fp16/--bf16 — need a CUDA GPU and CuPy, skipped
  otherwise (run them on a GPU machine with ``pytest tests/test_cuda_kernel.py``).
"""
import functools
import itertools
import re

import pytest
import torch
from cli_utils import TINY_TRAIN_ARGS, TRAIN_LOSS, make_char_data, run_tool
from conftest import max_diff

from fairseq_srupp.ops.recurrence import (NO_CUPY_WARNING, choose_implementation, elementwise_recurrence,
                                          elementwise_recurrence_cuda)
from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.ops.recurrence.cupy_kernel import (CUPY_KERNELS, DEFAULT_PREFETCH, KERNEL_DTYPES, L2_AHEAD_ENV,
                                                      PREFETCH_ENV, SOURCE, STAGE_ENV, STEP_HEADER, cupy_available,
                                                      kernel_name,
                                                      kernel_source, kernel_variants, l2_ahead, launch_cupy,
                                                      nvrtc_options)

GPU = torch.cuda.is_available() and cupy_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and CuPy")


def nvrtc_compile(source, arch, options=nvrtc_options(DEFAULT_PREFETCH)):
    """PTX of ``source`` for ``arch``; raises RuntimeError with NVRTC's log on a compile error."""
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(source, SOURCE.name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, ["--gpu-architecture=" + arch, *options])
        except nvrtc.NVRTCError as err:
            raise RuntimeError("{}\n{}".format(err, nvrtc.getProgramLog(program)))
        ptx = nvrtc.getPTX(program)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("arch,prefetch,stage", [
    ("compute_80", DEFAULT_PREFETCH, 0), ("compute_90", DEFAULT_PREFETCH, 0), ("compute_90", 1, 0), ("compute_90", 3, 0),
    # the staged kernels: cp.async from sm_80 on, plain copies before
    ("compute_90", DEFAULT_PREFETCH, 8), ("compute_80", DEFAULT_PREFETCH, 16), ("compute_75", DEFAULT_PREFETCH, 4),
])
def test_kernel_source_compiles_for_every_dtype_and_k(arch, prefetch, stage):
    ptx = nvrtc_compile(kernel_source(), arch, nvrtc_options(prefetch, stage=stage))
    assert ("cp.async.ca.shared.global" in ptx) == (stage > 0 and arch != "compute_75")
    for direction, dtype, k in itertools.product(("forward", "backward"), KERNEL_DTYPES, (3, 4)):
        assert ".entry {}(".format(kernel_name(direction, dtype, k)) in ptx
    # and the mixed storage of autocast (16-bit U, fp32 x and h), k=3 only
    names = [kernel_name(direction, u_dtype, k, x_dtype)
             for direction, (u_dtype, x_dtype, k) in itertools.product(("forward", "backward"), kernel_variants())]
    assert len(names) == 16 and "srupp_backward_bfloat16_float32_k3" in names
    assert set(re.findall(r"\.entry (\w+)\(", ptx)) == set(names)


def test_kernel_source_needs_a_prefetch_depth():
    with pytest.raises(RuntimeError, match="SRUPP_PREFETCH"):
        nvrtc_compile(kernel_source(), "compute_90", ("--std=c++17",))
    with pytest.raises(RuntimeError, match="SRUPP_PREFETCH must be 1..16"):
        nvrtc_compile(kernel_source(), "compute_90", nvrtc_options(17))


def test_kernel_source_needs_an_l2_distance():
    with pytest.raises(RuntimeError, match="SRUPP_L2_AHEAD"):
        nvrtc_compile(kernel_source(), "compute_90", ("--std=c++17", "-DSRUPP_PREFETCH=4"))
    with pytest.raises(RuntimeError, match="SRUPP_L2_AHEAD must be 0..256"):
        nvrtc_compile(kernel_source(), "compute_90", nvrtc_options(4, 257))
    # 0 compiles without any prefetch instruction, the default with them
    assert "prefetch.global.L2" not in nvrtc_compile(kernel_source(), "compute_90", nvrtc_options(4, 0))
    assert "prefetch.global.L2" in nvrtc_compile(kernel_source(), "compute_90", nvrtc_options(4))


@pytest.mark.parametrize("value,expected", [(None, 16), ("0", 0), ("32", 32), (" 256 ", 256)])
def test_l2_distance_comes_from_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(L2_AHEAD_ENV, raising=False)
    else:
        monkeypatch.setenv(L2_AHEAD_ENV, value)
    assert l2_ahead() == expected


@pytest.mark.parametrize("value", ["257", "-1", "far"])
def test_bad_l2_distance_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv(L2_AHEAD_ENV, value)
    with pytest.raises(SRUppUserError, match="^{}={!r}: give how many time steps ahead".format(L2_AHEAD_ENV, value)):
        l2_ahead()


def test_compile_check_catches_errors():
    source = kernel_source()
    assert "forward_step(in, unit, c_next)" in source
    broken = source.replace("forward_step(in, unit, c_next)", "forward_step(in, unit, f_undefined)")
    with pytest.raises(RuntimeError, match="f_undefined"):
        nvrtc_compile(broken, "compute_90")


def test_kernel_source_carries_the_step_header():
    """CuPy caches compiled kernels by source text: the shared header must be part of that text."""
    source = kernel_source()
    assert STEP_HEADER.read_text() in source
    assert '#include "recurrence_step.h"' not in source


@pytest.mark.parametrize(
    "choice,is_cuda,dtype,has_cupy,expected",
    [
        ("auto", False, torch.float32, False, ("cpu", None)),
        ("auto", True, torch.float16, True, ("cuda", None)),
        ("auto", True, torch.bfloat16, True, ("cuda", None)),
        ("auto", True, torch.float32, False, ("reference", NO_CUPY_WARNING)),
        ("auto", True, torch.float64, True, ("reference", None)),
        ("reference", True, torch.float32, True, ("reference", None)),
        ("cuda", True, torch.float32, True, ("cuda", None)),
    ],
)
def test_dispatch_choice(choice, is_cuda, dtype, has_cupy, expected):
    assert choose_implementation(choice, is_cuda, dtype, has_cupy) == expected


def test_dispatch_refuses_impossible_requests():
    with pytest.raises(ValueError, match="needs CPU tensors"):
        choose_implementation("cpu", True, torch.float32, True)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        choose_implementation("cuda", False, torch.float32, True)
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[cuda12\]"):
        choose_implementation("cuda", True, torch.float32, False)


TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}  # relative to max |ref|


def check_against_reference(u_dtype, x_dtype, k, pad, dropout, L, B, d, contiguous=True):
    dev = torch.device("cuda")
    U = torch.randn(L, B, d * k, device=dev)
    if not contiguous:  # same values through a transposed view
        U = U.transpose(0, 1).contiguous().transpose(0, 1)
    inputs = dict(
        U=U.to(u_dtype), x=torch.randn(L, B, d, device=dev).to(x_dtype),
        weight_c=torch.empty(2 * d, device=dev).uniform_(-1, 1), bias=torch.randn(2 * d, device=dev),
        c0=torch.randn(B, d, device=dev),
        mask_c=(torch.rand(B, d, device=dev) > 0.2).float() / 0.8 if dropout else None,
        mask_pad=(torch.rand(L, B, device=dev) < 0.2) if pad else None,
    )
    grad_h, grad_c = torch.randn(L, B, d, device=dev), torch.randn(B, d, device=dev)
    results = []
    # the reference through the dispatcher: itself when U and x share a dtype; with a 16-bit U next to an
    # fp32 x it gets U widened, so its h is fp32 as the kernels' is
    for fn in (elementwise_recurrence_cuda, functools.partial(elementwise_recurrence, implementation="reference")):
        leaves = {n: (t.detach().clone().requires_grad_(n in ("U", "x", "weight_c", "bias", "c0")) if t is not None and t.is_floating_point() else t)
                  for n, t in inputs.items()}
        h, c = fn(**leaves)
        (h.float() * grad_h).sum().add_((c.float() * grad_c).sum()).backward()
        grads = {n: leaves[n].grad for n in ("U", "x", "weight_c", "bias", "c0")}
        results.append((h.float(), c.float(), grads))
    (h, c, g), (h_ref, c_ref, g_ref) = results
    tol = TOLERANCE[u_dtype]
    for name, a, b in [("h", h, h_ref), ("c", c, c_ref)] + [("grad " + n, g[n], g_ref[n]) for n in g]:
        if k == 4 and name == "grad x":
            assert a is None and b is None
            continue
        scale = b.detach().abs().max().item() + 1.0
        print("{}/{} {}: max diff {:.3e} (scale {:.2e})".format(u_dtype, x_dtype, name, max_diff(a, b), scale))
        assert max_diff(a, b) <= tol * scale, name


@needs_gpu
@pytest.mark.parametrize("dtype", list(KERNEL_DTYPES))
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("pad,dropout", [(False, False), (True, True)])
@pytest.mark.parametrize("L,B,d", [(1, 1, 5), (63, 3, 37), (1000, 2, 130)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_kernel_matches_reference(dtype, k, pad, dropout, L, B, d, contiguous):
    check_against_reference(dtype, dtype, k, pad, dropout, L, B, d, contiguous)


@needs_gpu
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("pad,dropout", [(False, False), (True, True)])
def test_kernel_matches_reference_over_10k_steps(k, pad, dropout):
    """A long walk through time once per (k, padding) in fp32 (the 16-bit types store the same steps): the
    reference's Python loop takes seconds per call on a GPU, and the GPU kit runs this file in 150 s."""
    check_against_reference(torch.float32, torch.float32, k, pad, dropout, 10000, 1, 33)


@needs_gpu
@pytest.mark.parametrize("u_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prefetch", [1, 8])  # each depth compiles a module: the host-shim tests cover 3 and 4
@pytest.mark.parametrize("L,B,d", [(63, 3, 37), (1000, 2, 130)])
def test_kernel_with_16_bit_u_and_fp32_x_matches_reference(monkeypatch, u_dtype, prefetch, L, B, d):
    """Autocast's storage (16-bit U, fp32 x and h) at prefetch depths around the default, L no multiple of 8."""
    monkeypatch.setenv(PREFETCH_ENV, str(prefetch))
    check_against_reference(u_dtype, torch.float32, 3, True, True, L, B, d)


@needs_gpu
@pytest.mark.parametrize("stage,u_dtype,x_dtype,k,L,B,d", [
    (stage, u, x, k, 63, 3, 37) for stage in (4, 16) for u, x, k in kernel_variants() if u != torch.float16 or x != u
] + [(8, torch.bfloat16, torch.float32, 3, 1000, 2, 130)])
def test_staged_kernel_matches_reference(monkeypatch, stage, u_dtype, x_dtype, k, L, B, d):
    """The kernels fed through shared memory by cp.async (FAIRSEQ_SRUPP_CUDA_STAGE_STEPS): 111 columns make the
    16-bit spans alternate between starting at a word and 2 bytes into one; L no multiple of a stage. Short
    walks but one (the reference's time loop is slow on a GPU, and the kit gives this file about 100 s)."""
    monkeypatch.setenv(STAGE_ENV, str(stage))
    check_against_reference(u_dtype, x_dtype, k, True, True, L, B, d)


@needs_gpu
@pytest.mark.parametrize("stage", [4, 8, 16])
@pytest.mark.parametrize("u_dtype,x_dtype,k", kernel_variants())
def test_staged_kernel_agrees_with_the_ring_on_gpu(monkeypatch, stage, u_dtype, x_dtype, k):
    """The same arithmetic on the same values as the register ring (no slow reference here), over 1000 steps of
    3 x 333 columns with U, x and the padding flags one element into their storage. Not bit for bit: the two
    are compiled apart and nvcc may fuse a multiply-add in one and not the other, so each output may differ
    by a rounding of its own dtype (the host build, without FMA, gives the same bits)."""
    dev = torch.device("cuda")
    L, B, d = 1000, 3, 333

    def shifted(t):
        return torch.empty(t.numel() + 1, dtype=t.dtype, device=dev)[1:].view_as(t).copy_(t)

    inputs = dict(U=shifted(torch.randn(L, B, d * k, device=dev).to(u_dtype)),
                  x=shifted(torch.randn(L, B, d, device=dev).to(x_dtype)) if k == 3 else None,
                  weight_c=torch.empty(2 * d, device=dev).uniform_(-1, 1), bias=torch.randn(2 * d, device=dev),
                  c0=torch.randn(B, d, device=dev), mask_c=(torch.rand(B, d, device=dev) > 0.2).float() / 0.8,
                  mask_pad=shifted(torch.rand(L, B, device=dev) < 0.2))
    grad_h, grad_c = torch.randn(L, B, d, device=dev), torch.randn(B, d, device=dev)
    outputs = []
    for steps in (0, stage):
        monkeypatch.setenv(STAGE_ENV, str(steps))
        leaves = {n: t.detach().clone().requires_grad_(n in ("U", "x", "weight_c", "bias", "c0"))
                  if t is not None and t.is_floating_point() else t for n, t in inputs.items()}
        h, c = elementwise_recurrence_cuda(**leaves)
        (h.float() * grad_h).sum().add_((c.float() * grad_c).sum()).backward()
        named = {"h": h, "c": c}
        named.update({"grad " + n: leaves[n].grad for n in ("U", "x", "weight_c", "bias", "c0")
                      if leaves[n] is not None})
        outputs.append(named)
    ring, staged = outputs
    assert set(ring) == set(staged)
    for name in ring:
        a, b = staged[name], ring[name]
        assert a.dtype == b.dtype, name
        rounding = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[a.dtype]
        scale = b.float().abs().max().item() + 1.0
        print("{} {}: max diff {:.3e} (scale {:.2e})".format(stage, name, max_diff(a.float(), b.float()), scale))
        assert max_diff(a.float(), b.float()) <= 4 * rounding * scale, name


@needs_gpu
def test_dispatch_uses_the_kernel_on_gpu(monkeypatch):
    launched = []

    def recording_launch(name, *args):
        launched.append(name)
        launch_cupy(name, *args)

    monkeypatch.setattr(CUPY_KERNELS, "launch", recording_launch)
    U = torch.randn(4, 2, 12, device="cuda", requires_grad=True)
    args = (U, torch.randn(4, 2, 4, device="cuda"), torch.randn(8, device="cuda"), torch.randn(8, device="cuda"),
            torch.zeros(2, 4, device="cuda"))
    h, _ = elementwise_recurrence(*args)
    # the custom op's autograd node, whose backward is the CUDA backward kernel
    assert "fairseq_srupp_elementwise_recurrence" in h.grad_fn.name()
    h.sum().backward()
    assert launched == ["srupp_forward_float32_k3", "srupp_backward_float32_k3"]


@needs_gpu
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_u_reaches_the_kernel_uncast(monkeypatch, autocast_dtype):
    launched = []

    def recording_launch(name, device, n_columns, args, prefetch):
        launched.append((name, int(args[0])))
        launch_cupy(name, device, n_columns, args, prefetch)

    monkeypatch.setattr(CUPY_KERNELS, "launch", recording_launch)
    linear = torch.nn.Linear(4, 12).cuda()
    x = torch.randn(4, 2, 4, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=autocast_dtype):
        U = linear(x)
        U.retain_grad()
        h, _ = elementwise_recurrence(U, x, torch.randn(8, device="cuda"), torch.randn(8, device="cuda"),
                                      torch.zeros(2, 4, device="cuda"))
    h.sum().backward()
    name = KERNEL_DTYPES[autocast_dtype]
    assert launched == [("srupp_forward_{}_float32_k3".format(name), U.data_ptr()),
                        ("srupp_backward_{}_float32_k3".format(name), U.data_ptr())]
    assert U.dtype == autocast_dtype and h.dtype == torch.float32 and U.grad.dtype == autocast_dtype


@needs_gpu
@pytest.mark.parametrize("precision", ["--fp16", "--bf16"])
def test_fairseq_train_on_gpu_with_half_precision(tmp_path, precision):
    data_bin = make_char_data(tmp_path)
    args = [a for a in TINY_TRAIN_ARGS if a != "--cpu"]
    log = run_tool("fairseq-train", data_bin, *args, precision, "--max-update", 30, "--save-dir", tmp_path / "ckpt")
    losses = [float(v) for v in TRAIN_LOSS.findall(log)]
    assert losses[-1] < losses[0] - 1.0
