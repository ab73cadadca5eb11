"""The elementwise recurrence: fast CPU path vs the reference loop vs autograd/gradcheck."""
import pytest
import torch
from conftest import assert_close

from fairseq_srupp.ops.recurrence import (
    elementwise_recurrence,
    elementwise_recurrence_cpu,
    elementwise_recurrence_ref,
)


def make_inputs(L, B, d, k, dtype=torch.float32, pad=False, dropout=False, requires_grad=True):
    g = dict(dtype=dtype, requires_grad=requires_grad)
    inputs = dict(
        U=torch.randn(L, B, d * k, **g),
        x=torch.randn(L, B, d, **g),
        weight_c=torch.empty(2 * d, dtype=dtype).uniform_(-1, 1).requires_grad_(requires_grad),
        bias=torch.randn(2 * d, **g),
        c0=torch.randn(B, d, **g),
        mask_c=(torch.rand(B, d) > 0.3).to(dtype) / 0.7 if dropout else None,
        mask_pad=None,
    )
    if pad:
        mask_pad = torch.rand(L, B) < 0.3
        mask_pad[0, 0] = True  # padding at the very first step exercises c0 pass-through
        inputs["mask_pad"] = mask_pad
    return inputs


DIFFERENTIABLE = ("U", "x", "weight_c", "bias", "c0")


def run_with_grads(fn, inputs, grad_h, grad_c):
    h, c = fn(**inputs)
    params = [inputs[n] for n in DIFFERENTIABLE]
    grads = torch.autograd.grad((h * grad_h).sum() + (c * grad_c).sum(), params, allow_unused=True)
    return h, c, dict(zip(DIFFERENTIABLE, grads))


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("L,B,d", [(1, 1, 5), (63, 3, 37), (17, 1, 64)])
def test_fast_cpu_matches_reference(k, pad, dropout, L, B, d):
    inputs = make_inputs(L, B, d, k, pad=pad, dropout=dropout)
    grad_h, grad_c = torch.randn(L, B, d), torch.randn(B, d)
    h_ref, c_ref, g_ref = run_with_grads(elementwise_recurrence_ref, inputs, grad_h, grad_c)
    h, c, g = run_with_grads(elementwise_recurrence_cpu, inputs, grad_h, grad_c)
    assert_close("h", h, h_ref, 1e-5)
    assert_close("c_last", c, c_ref, 1e-5)
    for name in DIFFERENTIABLE:
        if k == 4 and name == "x":
            assert g[name] is None and g_ref[name] is None  # the skip is U[..., 3] when k=4
            continue
        assert_close("grad " + name, g[name], g_ref[name], 1e-4)


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("fn", [elementwise_recurrence_cpu, elementwise_recurrence_ref])
def test_gradcheck_float64(k, fn):
    inputs = make_inputs(6, 2, 3, k, dtype=torch.float64, pad=True, dropout=True)
    names = [n for n in DIFFERENTIABLE if not (k == 4 and n == "x")]

    def f(*args):
        kw = dict(inputs)
        kw.update(zip(names, args))
        return fn(**kw)

    assert torch.autograd.gradcheck(f, tuple(inputs[n] for n in names), eps=1e-6, atol=1e-7)


def test_padding_holds_state_and_zeroes_output():
    inputs = make_inputs(5, 2, 4, 3, requires_grad=False)
    inputs["mask_pad"] = torch.zeros(5, 2, dtype=torch.bool)
    inputs["mask_pad"][2:, 1] = True  # batch 1 ends after 2 steps
    h, c = elementwise_recurrence_cpu(**inputs)
    assert torch.all(h[2:, 1] == 0)
    h2, c2 = elementwise_recurrence_cpu(**{**inputs, "U": inputs["U"][:2], "x": inputs["x"][:2], "mask_pad": None})
    assert_close("c of padded column == c after its real steps", c[1], c2[1], 0.0)


def test_low_precision_inputs_return_their_dtype():
    inputs = make_inputs(9, 2, 8, 3, requires_grad=False)
    h32, _ = elementwise_recurrence_cpu(**inputs)
    half = {n: (t.to(torch.bfloat16) if torch.is_tensor(t) and t.is_floating_point() else t) for n, t in inputs.items()}
    h16, c16 = elementwise_recurrence(**half)
    assert h16.dtype == torch.bfloat16 and c16.dtype == torch.bfloat16
    assert_close("bf16 vs fp32", h16.float(), h32, 0.1)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(U=torch.randn(4, 2, 10)), "3\\*d=12 or 4\\*d=16"),
        (dict(x=torch.randn(4, 3, 4)), "skip input x"),
        (dict(weight_c=torch.randn(9)), "weight_c"),
        (dict(c0=torch.randn(3, 4)), "c0 must be"),
        (dict(mask_pad=torch.zeros(5, 2, dtype=torch.bool)), "mask_pad"),
        (dict(mask_c=torch.ones(2, 5)), "mask_c"),
    ],
)
def test_bad_shapes_are_reported(change, message):
    inputs = make_inputs(4, 2, 4, 3, requires_grad=False)
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        elementwise_recurrence(**inputs)


def test_unknown_implementation_is_rejected():
    with pytest.raises(ValueError, match="unknown recurrence implementation"):
        elementwise_recurrence(**make_inputs(2, 1, 3, 3, requires_grad=False), implementation="fast")


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("slot", [0, 1, 2, 3])  # u0, forget pre-activation, reset pre-activation, skip
def test_nan_and_inf_propagate_like_the_reference(k, value, slot):
    """The build must not assume finite math: a NaN / inf in U or x lands where the reference puts it."""
    L, B, d = 5, 2, 19  # d not a multiple of the SIMD width: the remainder lanes too
    inputs = make_inputs(L, B, d, k, requires_grad=False)
    j = 17
    if slot == 3 and k == 3:
        inputs["x"][2, 0, j] = value
    else:
        inputs["U"][2, 0, j * k + slot] = value
    h, c = elementwise_recurrence_cpu(**inputs)
    h_ref, c_ref = elementwise_recurrence_ref(**inputs)
    for name, a, b in (("h", h, h_ref), ("c_last", c, c_ref)):
        assert torch.equal(a.isnan(), b.isnan()), name
        assert torch.equal(a.isposinf(), b.isposinf()) and torch.equal(a.isneginf(), b.isneginf()), name
        finite = b.isfinite()
        assert_close(name + " (finite entries)", a[finite], b[finite], 1e-5)
    if slot == 0 and value != value:  # NaN in u0 reaches h at that step and every later one
        assert h[2:, 0, j].isnan().all()


def test_build_is_keyed_on_source_flags_and_cpu(tmp_path):
    from fairseq_srupp.ops.cpp_extension import CXX_FLAGS, build_name, cpu_features
    from fairseq_srupp.ops.recurrence.cpu import BUILD_INPUTS

    a, b = tmp_path / "checkout_a.cpp", tmp_path / "checkout_b.cpp"
    source = BUILD_INPUTS[0].read_text()
    a.write_text(source)
    b.write_text(source)
    features = cpu_features()
    assert features
    same = build_name("ext", [a], CXX_FLAGS, features)
    assert build_name("ext", [a], CXX_FLAGS, features) == same  # the same checkout finds its build again
    # Identical checkouts elsewhere get their own: ninja recompiles a build whose sources moved.
    assert build_name("ext", [b], CXX_FLAGS, features) != same
    a.write_text(source + "\n// edited\n")
    assert build_name("ext", [a], CXX_FLAGS, features) != same  # an edited checkout gets a new one
    a.write_text(source)
    assert build_name("ext", [a], CXX_FLAGS, features) == same
    assert build_name("ext", [a], CXX_FLAGS + ("-g",), features) != same
    assert build_name("ext", [a], CXX_FLAGS, features + " an_older_cpu") != same  # -march=native differs
    assert "-ffast-math" not in CXX_FLAGS


def test_non_floating_inputs_and_empty_sizes_are_refused():
    """Integer inputs were computed in fp32 and truncated back to int64; L, B or d = 0 hit an IndexError
    or a ZeroDivisionError inside the implementations."""
    from fairseq_srupp.ops.recurrence import elementwise_recurrence

    L, B, d = 3, 2, 4
    U, x, w, b, c0 = torch.randn(L, B, 3 * d), torch.randn(L, B, d), torch.randn(2 * d), torch.randn(2 * d), torch.zeros(B, d)
    for name, bad in (("U", (U.long(), x, w, b, c0)), ("x", (U, x.int(), w, b, c0)), ("weight_c", (U, x, w.long(), b, c0)),
                      ("bias", (U, x, w, b.to(torch.complex64), c0)), ("c0", (U, x, w, b, c0.long()))):
        with pytest.raises(TypeError, match="^{} must be a floating-point tensor".format(name)):
            elementwise_recurrence(*bad)
    with pytest.raises(TypeError, match="^mask_c must be"):
        elementwise_recurrence(U, x, w, b, c0, mask_c=torch.ones(B, d, dtype=torch.long))
    for shapes in (((0, B, 3 * d), (0, B, d), (B, d)), ((L, 0, 3 * d), (L, 0, d), (0, d)), ((L, B, 0), (L, B, 0), (B, 0))):
        (u_shape, x_shape, c_shape), width = shapes, shapes[2][1]
        with pytest.raises(ValueError, match="needs L, B and d >= 1"):
            elementwise_recurrence(torch.randn(u_shape), torch.randn(x_shape), torch.randn(2 * width),
                                   torch.randn(2 * width), torch.zeros(c_shape))


# torch's CUDA build on a machine with nvcc but no GPU, imported fresh: cpp_extension's import looks for CUDA
SIMULATED_CUDA_BUILD = """
import logging, sys, torch
torch.cuda._is_compiled = lambda: True
torch.cuda.is_available = lambda: False
torch.version.cuda = torch.version.cuda or "13.0"
logging.basicConfig(format="%(message)s")
if sys.argv[1] == "plugin":
    from fairseq_srupp.ops.cpp_extension import _import_load
    _import_load()
else:
    import torch.utils.cpp_extension
"""


@pytest.mark.parametrize("importer", ["plugin", "torch"])
def test_the_extension_build_keeps_torchs_no_cuda_runtime_notice_off_stderr(tmp_path, importer):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIMULATED_CUDA_BUILD, importer], capture_output=True, text=True,
                          env=dict(os.environ, CUDA_HOME=str(tmp_path)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    noticed = "No CUDA runtime is found, using CUDA_HOME='{}'".format(tmp_path) in proc.stderr
    assert noticed == (importer == "torch"), proc.stderr  # torch's own import shows the simulation is real
