"""fairseq_srupp.modules.SRUpp against the reference sru.SRUpp (3.0.0.dev6), identical weights."""
import os
from unittest import mock

import pytest
import sru
import torch
from conftest import assert_close

from fairseq_srupp.modules.attention_masks import causal_mask
from fairseq_srupp.modules import SRUpp


def randomize_(module):
    """Move every parameter off its initial value (ReZero alpha starts at 0 and would hide attention)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("alpha"):
                p.normal_(0.0, 1.0)
            elif "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))


def build_pair(input_size, hidden_size, proj_size, **kwargs):
    ref = sru.SRUpp(input_size, hidden_size, proj_size, **kwargs)
    randomize_(ref)
    mine = SRUpp(input_size, hidden_size, proj_size, **kwargs)
    mine.load_state_dict(ref.state_dict())  # strict: every name and shape must match
    return ref, mine


CONFIGS = {
    "ln_every_layer_1head": dict(layer_norm=True, attention_every_n_layers=1, num_heads=1),
    "no_ln_every_2nd_2heads": dict(layer_norm=False, attention_every_n_layers=2, num_heads=2),
    "ln_every_2nd_2heads": dict(layer_norm=True, attention_every_n_layers=2, num_heads=2),
    "post_norm": dict(layer_norm=True, normalize_after=True),
    "no_attn_ln": dict(layer_norm=True, attn_layer_norm=False),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("use_memory", [False, True])
@pytest.mark.parametrize("use_pad", [False, True])
@pytest.mark.parametrize("L,B", [(7, 3), (1, 1), (13, 1)])
@pytest.mark.parametrize("input_size", [16, 12])  # 12 != hidden: first layer has k=4
def test_eval_forward_matches_reference(config, use_memory, use_pad, L, B, input_size):
    hidden, proj, layers, mem_len = 16, 8, 3, 5
    ref, mine = build_pair(input_size, hidden, proj, num_layers=layers, dropout=0.1, attn_dropout=0.1, **CONFIGS[config])
    ref.eval()
    mine.eval()
    x = torch.randn(L, B, input_size)
    c0 = torch.randn(layers, B, hidden)
    memory = None
    if use_memory:
        memory = [torch.randn(mem_len, B, input_size if i == 0 else hidden) for i in range(layers)]
    attn_mask = causal_mask(L, mem_len if use_memory else 0)
    mask_pad = None
    if use_pad:
        mask_pad = torch.zeros(L, B, dtype=torch.bool)
        mask_pad[L // 2 + 1 :, 0] = True  # right padding of the first sequence
    with torch.no_grad():
        h_ref, c_ref, saved_ref = ref(x, c0, mask_pad=mask_pad, attn_mask=attn_mask, memory=memory)
        h, c, saved = mine(x, c0, mask_pad=mask_pad, attn_mask=attn_mask, memory=memory)
    assert_close("h", h, h_ref, 1e-5)
    assert_close("c", c, c_ref, 1e-5)
    saved_ref = saved_ref["saved_inputs"]
    assert len(saved) == len(saved_ref) == layers
    for i, (a, b) in enumerate(zip(saved, saved_ref)):
        assert_close("saved input {}".format(i), a, b, 1e-5)


def assert_training_step_matches(ref, mine, x, c0, **forward_kwargs):
    """Seeded training forward + backward of both stacks: h, c, gradients of x, c0 and every parameter.

    Same seed → same dropout masks (variational, sub-layer), so dropout may be on, with our
    dropout set to PyTorch's own draws (FAIRSEQ_SRUPP_DROPOUT=torch; the default fused CPU dropout
    draws other masks); attention dropout must be 0 (scaled_dot_product_attention draws its mask
    differently).
    """
    with mock.patch.dict(os.environ, {"FAIRSEQ_SRUPP_DROPOUT": "torch"}):
        _assert_training_step_matches(ref, mine, x, c0, **forward_kwargs)


def _assert_training_step_matches(ref, mine, x, c0, **forward_kwargs):
    ref.train()
    mine.train()
    layers = c0.shape[0]
    grad_h, grad_c = torch.randn(x.shape[0], x.shape[1], mine.hidden_size), torch.randn_like(c0)
    outputs = {}
    for name, model in (("ref", ref), ("mine", mine)):
        xi, c0i = x.clone().requires_grad_(), c0.clone().requires_grad_()
        torch.manual_seed(99)
        h, c, _ = model(xi, c0i, **forward_kwargs)
        assert c.shape == (layers, x.shape[1], mine.hidden_size)
        ((h * grad_h).sum() + (c * grad_c).sum()).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        outputs[name] = (h, c, xi.grad, c0i.grad, grads)
    h_ref, c_ref, gx_ref, gc0_ref, g_ref = outputs["ref"]
    h, c, gx, gc0, g = outputs["mine"]
    assert_close("h", h, h_ref, 1e-5)
    assert_close("c", c, c_ref, 1e-5)
    assert_close("grad input", gx, gx_ref, 1e-4)
    assert_close("grad c0", gc0, gc0_ref, 1e-4)
    assert g.keys() == g_ref.keys()
    for name in sorted(g):
        assert_close("grad " + name, g[name], g_ref[name], 1e-4)


@pytest.mark.parametrize("config", ["ln_every_layer_1head", "no_ln_every_2nd_2heads"])
def test_training_forward_and_gradients_match_reference(config):
    """Same seed → same dropout masks (variational, sub-layer, embedding order) and same gradients."""
    L, B, d, layers = 9, 2, 16, 3
    ref, mine = build_pair(d, d, 8, num_layers=layers, dropout=0.2, attn_dropout=0.0, **CONFIGS[config])
    x = torch.randn(L, B, d)
    memory = [torch.randn(4, B, d) for _ in range(layers)]
    c0 = torch.randn(layers, B, d)
    assert_training_step_matches(ref, mine, x, c0, attn_mask=causal_mask(L, 4), memory=memory)


def test_memory_that_requires_grad_gets_the_references_gradient():
    L, B, d, layers = 5, 2, 16, 2
    ref, mine = build_pair(d, d, 8, num_layers=layers, dropout=0.0, **CONFIGS["ln_every_layer_1head"])
    memory = [torch.randn(3, B, d) for _ in range(layers)]
    x = torch.randn(L, B, d)
    grads = {}
    for name, model in (("ref", ref), ("mine", mine)):
        mem = [m.clone().requires_grad_() for m in memory]
        h, c, _ = model(x, attn_mask=causal_mask(L, 3), memory=mem)
        (h.sum() + c.sum()).backward()
        grads[name] = [m.grad for m in mem]
    for i, (a, b) in enumerate(zip(grads["mine"], grads["ref"])):
        assert_close("grad memory {}".format(i), a, b, 1e-4)


def test_detached_memory_costs_no_input_gradient_product():
    """W1 over [memory; x] is two products, so the (detached) memory's rows get no input gradient: a
    training step with memory that requires grad costs exactly that product (2·M·B·d·p FLOPs per
    attention layer) more, and none otherwise."""
    from torch.utils.flop_counter import FlopCounterMode

    M, L, B, d, p, layers = 6, 5, 2, 16, 8, 3
    _, mine = build_pair(d, d, p, num_layers=layers, dropout=0.0, **CONFIGS["ln_every_layer_1head"])
    memory = [torch.randn(M, B, d) for _ in range(layers)]

    def step_flops(memory_requires_grad):
        mem = [m.clone().requires_grad_(memory_requires_grad) for m in memory]
        with FlopCounterMode(display=False) as counter:
            h, c, _ = mine(torch.randn(L, B, d, requires_grad=True), attn_mask=causal_mask(L, M), memory=mem)
            (h.sum() + c.sum()).backward()
        return counter.get_total_flops()

    assert step_flops(True) - step_flops(False) == layers * 2 * M * B * d * p


def test_memory_equals_full_sequence():
    """Two segments with carried c and memory give the same outputs as one pass over both.

    Only without pre-norm: the memory is the previous segment's *raw* layer input while the
    current input is normalised (spec §2, as the released checkpoints were trained), so with
    layer_norm=True the two differ by design.
    """
    d, layers = 16, 2
    _, model = build_pair(d, d, 8, num_layers=layers, layer_norm=False)
    model.eval()
    x = torch.randn(10, 2, d)
    with torch.no_grad():
        h_full, c_full, _ = model(x, attn_mask=causal_mask(10))
        h1, c1, mem = model(x[:6], attn_mask=causal_mask(6))
        h2, c2, _ = model(x[6:], c1, attn_mask=causal_mask(4, 6), memory=mem)
    assert_close("segment 1", h1, h_full[:6], 1e-5)
    assert_close("segment 2", h2, h_full[6:], 1e-5)
    assert_close("final c", c2, c_full, 1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(c0=torch.zeros(3, 2, 16)), "c0 has size"),
        (dict(mask_pad=torch.zeros(4, 2, dtype=torch.bool)), "mask_pad has size"),
        (dict(memory=[torch.zeros(3, 2, 16)]), "memory must be a list of 2"),
        (dict(attn_mask=torch.zeros(5, 6)), "attn_mask has size"),
    ],
)
def test_bad_inputs_are_reported(kwargs, message):
    model = SRUpp(16, 16, 8, num_layers=2)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(5, 2, 16), **kwargs)


def test_wrong_input_width_is_reported():
    with pytest.raises(ValueError, match="last dimension of 16"):
        SRUpp(16, 16, 8)(torch.randn(5, 2, 15))
