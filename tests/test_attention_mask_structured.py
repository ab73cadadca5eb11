"""The training causal mask as a structure (``causal_lower_right``, a ``CausalBias``) against the
additive tensor it replaces (issue 11): same outputs and every gradient.

On CPU the structure is normally turned into the additive tensor before SDPA (today's kernels and
speed). The ``structure_reaches_sdpa`` fixture makes CPU behave like CUDA instead, so the structure
itself reaches ``F.scaled_dot_product_attention`` (torch then applies it as a lower-right boolean
mask, or as ``is_causal`` without memory): that checks the alignment and the plumbing the GPU path
uses, against the tensor path. The GPU tests at the bottom (skipped without CUDA) run the structured
path under the flash / memory-efficient backends only, so they fail if those cannot be used.
"""
import os
import subprocess
import sys

import pytest
import torch
from conftest import assert_close
from test_compile import CARRY, tiny_decoder, tokens
from torch.nn.attention.bias import CausalBias, causal_lower_right, causal_upper_left

from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.modules import SRUpp, SRUppAttention
from fairseq_srupp.modules import attention_masks
from fairseq_srupp.modules.attention_masks import (ATTENTION_ENV, causal_mask, mask_for_sdpa, training_causal_mask)

L, B, MEM = 7, 3, 5
ATOL = 1e-5  # the bool (-inf) and additive (-10000) masks reach different CPU kernels


@pytest.fixture
def sdpa_masks(monkeypatch):
    """Records the type of every mask the attention hands on to be applied (``_attend_and_project``'s
    ``bias``): "CausalBias" reaches SDPA as the structure, "Tensor" as an additive tensor."""
    seen = []
    attend = SRUppAttention._attend_and_project

    def recording(self, q, k, v, bias, residual):
        seen.append(type(bias).__name__)
        return attend(self, q, k, v, bias, residual)

    monkeypatch.setattr(SRUppAttention, "_attend_and_project", recording)
    return seen


@pytest.fixture
def structure_reaches_sdpa(monkeypatch):
    monkeypatch.setattr(attention_masks, "sdpa_takes_structure", lambda device: True)


@pytest.mark.parametrize("mem_len", [0, 1, MEM])
def test_mask_for_sdpa_of_the_structure_is_the_additive_causal_mask(mem_len):
    dense = mask_for_sdpa(causal_lower_right(L, mem_len + L), "cpu", torch.float32)
    assert torch.equal(dense, causal_mask(L, mem_len))
    upper = mask_for_sdpa(causal_upper_left(L, mem_len + L), "cpu", torch.float32)
    assert torch.equal(upper, torch.triu(torch.full((L, mem_len + L), -10000.0), diagonal=1))


def test_mask_for_sdpa_keeps_tensors_and_the_structure_where_sdpa_takes_it(structure_reaches_sdpa):
    tensor = causal_mask(L, MEM)
    assert mask_for_sdpa(tensor, "cpu", torch.float32) is tensor
    structure = causal_lower_right(L, MEM + L)
    assert mask_for_sdpa(structure, "cpu", torch.float32) is structure
    assert torch.equal(mask_for_sdpa(structure, "cpu", torch.float32, key_padding=True), tensor)


def stack_and_inputs(heads, mem_len, padded):
    """A 3-layer stack (attention in layers 2 and 3, k=4 first layer), train mode with variational
    and projection dropout on but attention dropout off, and inputs needing gradients."""
    stack = SRUpp(6, 8, 4, num_layers=3, num_heads=heads, dropout=0.2, attn_dropout=0.0, layer_norm=True,
                  attention_every_n_layers=1, attention_last_n_layers=2).train()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(L, B, 6, generator=gen).requires_grad_(True)
    c0 = torch.randn(3, B, 8, generator=gen)
    memory = None
    if mem_len:
        memory = [torch.randn(mem_len, B, 6 if i == 0 else 8, generator=gen).requires_grad_(True) for i in range(3)]
    mask_pad = None
    if padded:
        mask_pad = torch.zeros(L, B, dtype=torch.bool)
        mask_pad[-2:, 1] = True
    return stack, x, c0, memory, mask_pad


def stack_step(stack, x, c0, memory, mask_pad, attn_mask):
    """Outputs and every gradient (parameters, input, memory) of one forward + backward."""
    stack.zero_grad()
    for t in [x] + (memory or []):
        t.grad = None
    torch.manual_seed(11)  # same dropout masks on both sides
    h, c, _ = stack(x, c0, mask_pad=mask_pad, attn_mask=attn_mask, memory=memory)
    gen = torch.Generator().manual_seed(5)
    (h * torch.randn(h.shape, generator=gen)).sum().backward()
    grads = {n: p.grad.clone() for n, p in stack.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    for i, m in enumerate(memory or []):  # the first layer only projects: its memory gets no gradient
        grads["memory{}".format(i)] = None if m.grad is None else m.grad.clone()
    return h.detach(), c.detach(), grads


def assert_same_step(a, b, atol):
    assert_close("h", a[0], b[0], atol)
    assert_close("c", a[1], b[1], atol)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert_close(name, a[2][name], b[2][name], atol)


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "key-padding"])
@pytest.mark.parametrize("mem_len", [0, MEM], ids=["no-memory", "memory"])
@pytest.mark.parametrize("heads", [1, 2])
def test_structure_reaching_sdpa_matches_the_additive_mask(structure_reaches_sdpa, sdpa_masks, heads, mem_len,
                                                          padded):
    stack, *inputs = stack_and_inputs(heads, mem_len, padded)
    additive = stack_step(stack, *inputs, attn_mask=causal_mask(L, mem_len))
    assert set(sdpa_masks) == {"Tensor"}
    sdpa_masks.clear()
    structured = stack_step(stack, *inputs, attn_mask=causal_lower_right(L, mem_len + L))
    # Key padding has to be added to a tensor, so then the stack builds the additive mask itself.
    assert set(sdpa_masks) == {"Tensor" if padded else "CausalBias"}
    assert_same_step(additive, structured, 0.0 if padded else ATOL)


@pytest.mark.parametrize("mem_len", [0, MEM], ids=["no-memory", "memory"])
def test_structure_on_cpu_becomes_exactly_the_additive_mask(sdpa_masks, mem_len):
    stack, *inputs = stack_and_inputs(2, mem_len, False)
    additive = stack_step(stack, *inputs, attn_mask=causal_mask(L, mem_len))
    structured = stack_step(stack, *inputs, attn_mask=causal_lower_right(L, mem_len + L))
    assert set(sdpa_masks) == {"Tensor"}
    assert_same_step(additive, structured, 0.0)


@pytest.mark.parametrize("reaches_sdpa", [False, True], ids=["cpu", "structure-reaches-sdpa"])
def test_attention_module_alone_takes_the_structure(monkeypatch, reaches_sdpa):
    monkeypatch.setattr(attention_masks, "sdpa_takes_structure", lambda device: reaches_sdpa)
    attn = SRUppAttention(6, 12, 4, num_heads=2, rezero_init_alpha=0.5).train()
    x = torch.randn(L, B, 6, requires_grad=True)
    memory = torch.randn(MEM, B, 6, requires_grad=True)
    outs = []
    for mask in (causal_mask(L, MEM), causal_lower_right(L, MEM + L)):
        x.grad = memory.grad = None
        u = attn(x, attn_mask=mask, memory=memory)
        u.backward(torch.linspace(-1, 1, u.numel()).view_as(u))
        outs.append((u.detach(), x.grad.clone(), memory.grad.clone()))
    for name, a, b in zip(("U", "input grad", "memory grad"), *outs):
        assert_close(name, a, b, ATOL if reaches_sdpa else 0.0)


def test_structure_of_the_wrong_size_is_refused():
    attn = SRUppAttention(6, 12, 4)
    with pytest.raises(ValueError, match=r"attn_mask has size \[7, 11\] but expect \[7, 12\]"):
        attn(torch.randn(L, B, 6), attn_mask=causal_lower_right(L, 11), memory=torch.randn(MEM, B, 6))


def decoder_step(decoder, padded):
    """Logits of the second of two carried training segments (attending over the first as memory)
    and every parameter gradient."""
    decoder.zero_grad()
    decoder.reset_carried_state()
    torch.manual_seed(7)
    for seed in (0, 1):
        batch = tokens(seed)
        if not padded:
            batch[batch == 1] = 5
        logits = decoder(batch, segment=CARRY)[0]
    logits.backward(torch.linspace(-1, 1, logits.numel()).view_as(logits))
    return logits.detach(), {n: p.grad.clone() for n, p in decoder.named_parameters()}


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "padding"])
def test_srupp_lm_training_is_the_same_with_the_switch_on_and_off(monkeypatch, structure_reaches_sdpa, sdpa_masks,
                                                                   padded):
    decoder = tiny_decoder().train()
    for layer in decoder.srupp.rnn_lst:  # attention dropout draws differ between SDPA kernels
        if isinstance(layer.transform_module, SRUppAttention):
            layer.transform_module.attn_dropout_module.p = 0.0
    monkeypatch.setenv(ATTENTION_ENV, "additive")
    logits_a, grads_a = decoder_step(decoder, padded)
    assert set(sdpa_masks) == {"Tensor"}
    sdpa_masks.clear()
    monkeypatch.setenv(ATTENTION_ENV, "auto")
    logits_s, grads_s = decoder_step(decoder, padded)
    # Padding in the first segment is carried as memory padding, so both segments need the tensor.
    assert set(sdpa_masks) == {"Tensor" if padded else "CausalBias"}
    assert_close("logits", logits_a, logits_s, ATOL)
    for name in grads_a:
        assert_close(name, grads_a[name], grads_s[name], ATOL)


def test_the_model_passes_the_structure_only_where_sdpa_takes_it(monkeypatch):
    assert torch.is_tensor(training_causal_mask(L, MEM)) and not isinstance(training_causal_mask(L, MEM), CausalBias)
    monkeypatch.setattr(attention_masks, "sdpa_takes_structure", lambda device: True)
    assert isinstance(training_causal_mask(L, MEM), CausalBias)
    monkeypatch.setenv(ATTENTION_ENV, "additive")
    assert torch.equal(training_causal_mask(L, MEM), causal_mask(L, MEM))


def test_an_unknown_switch_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(ATTENTION_ENV, "flash")
    with pytest.raises(SRUppUserError, match="FAIRSEQ_SRUPP_ATTENTION='flash' is not one of auto, sdpa, additive"):
        training_causal_mask(L, MEM)


def test_an_unknown_switch_value_is_one_line_on_stderr(tmp_path):
    """Through the plugin's excepthook, as a training run would report it."""
    code = ("import fairseq_srupp, torch\n"
            "from fairseq_srupp.modules import SRUpp\n"
            "from torch.nn.attention.bias import causal_lower_right\n"
            "SRUpp(4, 4, 4, num_layers=1)(torch.randn(3, 1, 4), attn_mask=causal_lower_right(3, 3))\n")
    env = {k: v for k, v in os.environ.items() if k != "FAIRSEQ_SRUPP_DEBUG"}
    env[ATTENTION_ENV] = "flash"
    proc = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: FAIRSEQ_SRUPP_ATTENTION='flash' is not one of auto, sdpa, additive: "
                                   "unset it or set it to one of them")


# ------------------------------------------------------------------------------------------------ GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_attention_step(attn, x, memory, mask, backends):
    from torch.nn.attention import sdpa_kernel

    x.grad = memory.grad = None
    with sdpa_kernel(backends), torch.autocast("cuda", dtype=torch.bfloat16):
        u = attn(x, attn_mask=mask, memory=memory)
    u.float().backward(torch.linspace(-1, 1, u.numel(), device="cuda").view_as(u))
    grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
    attn.zero_grad()
    return u.float().detach(), x.grad.clone(), memory.grad.clone(), grads


@needs_cuda
@pytest.mark.parametrize("proj,heads,backend", [(128, 2, "FLASH_ATTENTION"), (768, 1, "EFFICIENT_ATTENTION")],
                         ids=["flash-hd64", "efficient-enwik8-base-hd768"])
def test_gpu_structured_attention_runs_on_the_fused_backend_and_matches_additive(monkeypatch, proj, heads, backend):
    """bf16 autocast, memory as long as the segment (training's shape). Flash takes head dims up to
    256 only, so the enwik8-base layer (1 head of 768) is checked on the memory-efficient kernel (the
    ``sdpa`` switch: by default such wide heads attend through the score product, tested below)."""
    from torch.nn.attention import SDPBackend

    monkeypatch.setenv(ATTENTION_ENV, "sdpa")
    torch.manual_seed(0)
    seg = 256
    attn = SRUppAttention(64, 192, proj, num_heads=heads, rezero_init_alpha=1.0).cuda().train()
    x = torch.randn(seg, 2, 64, device="cuda", requires_grad=True)
    memory = torch.randn(seg, 2, 64, device="cuda", requires_grad=True)
    fused = gpu_attention_step(attn, x, memory, causal_lower_right(seg, 2 * seg), [getattr(SDPBackend, backend)])
    additive = gpu_attention_step(attn, x, memory, causal_mask(seg, seg, device="cuda"), [SDPBackend.MATH])
    for name, a, b in zip(("U", "input grad", "memory grad"), fused[:3], additive[:3]):
        assert_close(name, a, b, 3e-2 * b.abs().max().item())
    for name in additive[3]:
        assert_close(name, fused[3][name], additive[3][name], 3e-2 * additive[3][name].abs().max().item())


@needs_cuda
@pytest.mark.parametrize("proj,heads,expect_sdpa", [(768, 1, False), (256, 2, True)], ids=["hd768", "hd128"])
def test_gpu_wide_heads_attend_through_the_score_product_and_match_sdpa(monkeypatch, proj, heads, expect_sdpa):
    """By default (``auto``) a head wider than SDPA_MAX_HEAD_DIM skips SDPA on CUDA (its generic
    memory-efficient kernel is slow there) and must still give SDPA's math backend's results; a
    narrower one goes to SDPA with the structure."""
    from torch.nn.attention import SDPBackend

    from fairseq_srupp.modules import transforms

    torch.manual_seed(0)
    seg = 256
    attn = SRUppAttention(64, 192, proj, num_heads=heads, rezero_init_alpha=1.0).cuda().train()
    x = torch.randn(seg, 2, 64, device="cuda", requires_grad=True)
    memory = torch.randn(seg, 2, 64, device="cuda", requires_grad=True)
    # A spy on the score product, not on SDPA: CausalBias recognises SDPA by identity, so a wrapped SDPA
    # would make it materialise the structure (on the CPU) instead of dispatching it.
    product = transforms.attention_by_matmul
    calls = []
    monkeypatch.setattr(transforms, "attention_by_matmul", lambda *a, **k: calls.append(1) or product(*a, **k))
    monkeypatch.setenv(ATTENTION_ENV, "auto")
    fast = gpu_attention_step(attn, x, memory, causal_lower_right(seg, 2 * seg),
                              [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
    assert bool(calls) != expect_sdpa
    monkeypatch.setenv(ATTENTION_ENV, "sdpa")  # the reference: SDPA's math backend for every head width
    calls.clear()
    reference = gpu_attention_step(attn, x, memory, causal_mask(seg, seg, device="cuda"), [SDPBackend.MATH])
    for name, a, b in zip(("U", "input grad", "memory grad"), fast[:3], reference[:3]):
        assert_close(name, a, b, 3e-2 * b.abs().max().item())
    for name in reference[3]:
        assert_close(name, fast[3][name], reference[3][name], 3e-2 * reference[3][name].abs().max().item())
    assert not calls
