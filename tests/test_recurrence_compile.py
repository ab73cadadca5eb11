"""The recurrence as a torch.library custom op: opcheck, torch.compile without graph breaks, meta."""
import pytest
import torch
from conftest import assert_close
from test_recurrence_op import DIFFERENTIABLE, make_inputs

from fairseq_srupp.ops.recurrence import elementwise_recurrence, elementwise_recurrence_ref

OP = torch.ops.fairseq_srupp.elementwise_recurrence.default
BACKWARD_OP = torch.ops.fairseq_srupp.elementwise_recurrence_backward.default


def op_args(inputs, k):
    return (inputs["U"], inputs["x"] if k == 3 else None, inputs["weight_c"], inputs["bias"], inputs["c0"],
            inputs["mask_c"], inputs["mask_pad"])


@pytest.mark.parametrize("k,pad,dropout", [(3, False, False), (4, True, True)])
def test_opcheck(k, pad, dropout):
    inputs = make_inputs(5, 2, 3, k, pad=pad, dropout=dropout)
    torch.library.opcheck(OP, op_args(inputs, k))
    with torch.no_grad():
        _, _, c_all = OP(*op_args(inputs, k))
    grads = (torch.randn(5, 2, 3), torch.randn(2, 3))
    detached = tuple(None if t is None else t.detach() for t in op_args(inputs, k))
    torch.library.opcheck(BACKWARD_OP, detached + (c_all,) + grads)


def recurrence_loss(U, x, weight_c, bias, c0, mask_c, mask_pad, grad_h, grad_c):
    h, c = elementwise_recurrence(U, x, weight_c, bias, c0, mask_c, mask_pad)
    return (h * grad_h).sum() + (c * grad_c).sum()


@pytest.mark.parametrize("k", [3, 4])
def test_dynamo_sees_no_graph_break(k):
    inputs = make_inputs(4, 2, 3, k, pad=True, dropout=True)
    x = inputs["x"] if k == 3 else None
    explanation = torch._dynamo.explain(recurrence_loss)(
        inputs["U"], x, inputs["weight_c"], inputs["bias"], inputs["c0"], inputs["mask_c"], inputs["mask_pad"],
        torch.randn(4, 2, 3), torch.randn(2, 3),
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("k,pad,dropout", [(3, True, False), (4, False, True)])
def test_compiled_matches_eager(k, pad, dropout):
    torch._dynamo.reset()
    inputs = make_inputs(7, 2, 5, k, pad=pad, dropout=dropout)
    if k == 4:
        inputs["x"] = None  # the optional argument travels through the compiled graph as None
    grad_h, grad_c = torch.randn(7, 2, 5), torch.randn(2, 5)
    names = [n for n in DIFFERENTIABLE if inputs[n] is not None]

    def run(fn):
        h, c = fn(**inputs)
        return h, c, torch.autograd.grad((h * grad_h).sum() + (c * grad_c).sum(), [inputs[n] for n in names])

    compiled = torch.compile(elementwise_recurrence, fullgraph=True, dynamic=False)
    h, c, g = run(compiled)
    h_ref, c_ref, g_ref = run(elementwise_recurrence)
    assert_close("h", h, h_ref, 0.0)
    assert_close("c_last", c, c_ref, 0.0)
    for name, a, b in zip(names, g, g_ref):
        assert_close("grad " + name, a, b, 0.0)
    # and the fused path itself still agrees with the readable loop
    h_loop, _, g_loop = run(elementwise_recurrence_ref)
    assert_close("h vs reference", h, h_loop, 1e-5)
    assert_close("grad U vs reference", g[0], g_loop[0], 1e-4)


@pytest.mark.parametrize("k", [3, 4])
def test_meta_tensors_propagate_shapes(k):
    L, B, d = 6, 3, 4
    inputs = make_inputs(L, B, d, k, pad=True, dropout=True, requires_grad=False)
    meta = {n: (None if t is None else t.to("meta").requires_grad_(t.is_floating_point())) for n, t in inputs.items()}
    meta["U"] = meta["U"].to(torch.bfloat16).detach().requires_grad_()
    h, c = elementwise_recurrence(**meta)
    assert h.device.type == "meta" and c.device.type == "meta"
    # dtype rule: h in promote(U, x) (U's alone when k=4), c in c0's dtype
    assert (tuple(h.shape), h.dtype) == ((L, B, d), torch.float32 if k == 3 else torch.bfloat16)
    assert (tuple(c.shape), c.dtype) == ((B, d), torch.float32)
    grad_U, grad_c0 = torch.autograd.grad((h.float().sum() + c.sum()), (meta["U"], meta["c0"]))
    assert grad_U.shape == meta["U"].shape and grad_U.dtype == torch.bfloat16
    assert grad_c0.shape == (B, d)


class Recurrence(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight_c = torch.nn.Parameter(torch.empty(2 * d).uniform_(-1, 1))
        self.bias = torch.nn.Parameter(torch.randn(2 * d))

    def forward(self, U, x, c0, mask_pad):
        return elementwise_recurrence(U, x, self.weight_c, self.bias, c0, mask_pad=mask_pad)


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_keeps_the_op_as_one_node(strict):
    module = Recurrence(4)
    args = (torch.randn(5, 2, 12), torch.randn(5, 2, 4), torch.randn(2, 4), torch.rand(5, 2) < 0.3)
    exported = torch.export.export(module, args, strict=strict)
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets.count(OP) == 1
    for name, a, b in zip(("h", "c_last"), exported.module()(*args), module(*args)):
        assert_close(name, a, b, 0.0)
