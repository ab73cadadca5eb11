"""The CUDA source's own entry points, compiled for the host, against the reference.

``recurrence_cuda.cu`` is built as C++ under ``cuda_host_shim.h`` and every thread of each launch
grid runs in turn. It is driven through the real custom op and its registered autograd: the op's
CPU slot is given ``CudaKernels(launch_host)``, i.e. the CUDA path with only CuPy's launcher
swapped. Without a GPU in CI this is the only execution the GPU code gets between GPU runs.
"""
import pytest
import torch
from conftest import max_diff

from fairseq_srupp.ops.recurrence import elementwise_recurrence, elementwise_recurrence_ref, op
from fairseq_srupp.ops.recurrence.cuda_host import launch_host
from fairseq_srupp.ops.recurrence.cupy_kernel import DEFAULT_PREFETCH, THREADS_PER_BLOCK, CudaKernels

# relative to max |reference| + 1, as in test_cuda_kernel.py
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}
DIFFERENTIABLE = ("U", "x", "weight_c", "bias", "c0")


@pytest.fixture
def cuda_source_on_cpu(monkeypatch):
    launched = []

    def recording_launch(name, *args):
        launched.append(name)
        launch_host(name, *args)

    monkeypatch.setitem(op.KERNELS, "cpu", CudaKernels(recording_launch))
    return launched


def inputs_for(L, B, d, k, dtype, pad, dropout):
    U = torch.randn(L, B, d * k)
    return dict(
        U=U.to(dtype), x=torch.randn(L, B, d).to(dtype) if k == 3 else None,
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("pad,dropout", [(False, False), (True, True)])
def test_cuda_entry_points_match_reference(cuda_source_on_cpu, dtype, k, pad, dropout):
    # B*d = 300 columns: two blocks of 256 threads, the second one mostly idle (the bounds check)
    L, B, d = 9, 3, 100
    inputs = inputs_for(L, B, d, k, dtype, pad, dropout)
    if pad:
        inputs["mask_pad"][0, 0] = True  # padding at the first step: c0 passes through
    grad_h, grad_c = torch.randn(L, B, d), torch.randn(B, d)
    h, c, g = run(elementwise_recurrence, inputs, grad_h, grad_c, implementation="cpu")
    h_ref, c_ref, g_ref = run(elementwise_recurrence_ref, inputs, grad_h, grad_c)
    suffix = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    assert cuda_source_on_cpu == ["srupp_forward_{}_k{}".format(suffix, k), "srupp_backward_{}_k{}".format(suffix, k)]
    assert B * d > THREADS_PER_BLOCK
    assert h.dtype == dtype and c.dtype == torch.float32  # the dispatcher's dtype rule
    assert set(g) == set(g_ref)
    tol = TOLERANCE[dtype]
    for name, a, b in [("h", h, h_ref), ("c_last", c, c_ref)] + [("grad " + n, g[n], g_ref[n]) for n in g]:
        scale = b.detach().float().abs().max().item() + 1.0
        print("{} k={} {}: max diff {:.3e} (scale {:.2e})".format(dtype, k, name, max_diff(a, b), scale))
        assert max_diff(a, b) <= tol * scale, name
    if pad:
        assert torch.all(h[inputs["mask_pad"]] == 0)


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
