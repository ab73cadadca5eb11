"""The fused CPU dropout (fairseq_srupp.ops.dropout): its Philox words against the published known
answer and the pure-PyTorch reference, its masks and gradients against the reference, its keep rate,
and where the modules use it."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.modules import Dropout, SRUppAttention
from fairseq_srupp.modules.transforms import attention_by_matmul
from fairseq_srupp.ops.dropout import dropout_ref, fused_dropout, keep_mask, keep_scale, philox_words, threshold
from fairseq_srupp.ops.dropout.cpu import load_dropout_extension

# Random123's known-answer test for philox4x32-10, counter 0 and key 0.
PHILOX_ZERO = [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_philox_matches_the_known_answer():
    assert philox_words(0, 1, 0)[0].tolist() == PHILOX_ZERO
    assert load_dropout_extension().philox_words(0, 1, 0)[0].tolist() == PHILOX_ZERO


@pytest.mark.parametrize("first, seed", [(0, 1), (12345, 987654321987), (2 ** 32 - 5, 2 ** 63 - 1), (7 << 40, 2 ** 40 + 7)])
def test_cpp_words_equal_the_reference(first, seed):
    # 37 counters: two full 16-lane blocks and a partial one; counters crossing 2^32 use the high word.
    assert torch.equal(load_dropout_extension().philox_words(first, 37, seed), philox_words(first, 37, seed))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("numel", [1, 7, 127, 128, 129, 1000, 8195])
def test_fused_dropout_equals_the_reference(dtype, numel):
    x = torch.randn(numel, dtype=torch.float64).to(dtype)
    assert torch.equal(fused_dropout(x, 0.3, seed=12345678901), dropout_ref(x, 0.3, 12345678901))


def test_mask_follows_the_logical_order_of_a_strided_input():
    x = torch.randn(40, 30, dtype=torch.float64)
    assert torch.equal(fused_dropout(x.t(), 0.5, seed=3), dropout_ref(x.t().contiguous(), 0.5, 3))


def test_backward_regenerates_the_forward_mask():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fused_dropout(t, 0.25, seed=11), (x,))
    y = fused_dropout(x, 0.25, seed=11)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, keep_mask(x.shape, 0.25, 11).double() * keep_scale(0.25))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_keep_rate_and_mean(p):
    n = 1 << 20
    y = fused_dropout(torch.ones(n), p, seed=2024)
    dropped = (y == 0).double().mean().item()
    resolved = threshold(p) / 65536
    assert abs(resolved - p) <= 2 ** -17
    assert abs(dropped - resolved) < 5 * math.sqrt(p * (1 - p) / n)  # 5 standard deviations
    assert abs(y.double().mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_seeds_come_from_the_torch_generator():
    x = torch.ones(4096)
    torch.manual_seed(5)
    a, b = fused_dropout(x, 0.5), fused_dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(fused_dropout(x, 0.5), a)  # reproducible under a seed
    assert not torch.equal(a, b)  # a fresh mask per call
    # Words of neighbouring elements are independent: adjacent pairs agree about half the time.
    same = (a[1:] == 0) == (a[:-1] == 0)
    assert abs(same.float().mean().item() - 0.5) < 0.05


def test_bad_probability_is_reported():
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1.5"):
        fused_dropout(torch.ones(3), 1.5)


def test_dropout_module_takes_the_fused_path_unless_told_otherwise(monkeypatch):
    x = torch.randn(64, 8)
    drop = Dropout(0.4).train()
    torch.manual_seed(1)
    seed = int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64))
    torch.manual_seed(1)
    assert torch.equal(drop(x), dropout_ref(x, 0.4, seed))
    monkeypatch.setenv("FAIRSEQ_SRUPP_DROPOUT", "torch")  # exactly nn.Dropout's draws
    torch.manual_seed(1)
    expected = F.dropout(x, 0.4, True)
    torch.manual_seed(1)
    assert torch.equal(drop(x), expected)
    monkeypatch.setenv("FAIRSEQ_SRUPP_DROPOUT", "fast")
    with pytest.raises(SRUppUserError, match="FAIRSEQ_SRUPP_DROPOUT='fast' is not one of auto, torch"):
        drop(x)
    assert torch.equal(drop.eval()(x), x)  # eval mode never reads the choice


def test_bad_dropout_choice_prints_one_line_through_the_plugin():
    script = "import torch, fairseq_srupp\nfrom fairseq_srupp.modules import Dropout\nDropout(0.1)(torch.ones(3))"
    env = dict(os.environ, FAIRSEQ_SRUPP_DROPOUT="fast")
    env.pop("FAIRSEQ_SRUPP_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: FAIRSEQ_SRUPP_DROPOUT='fast' is not one of auto, torch: unset it or set it to one of them"]


def test_attention_by_matmul_equals_the_formula():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k2, v2 = k[:, :, :3], v[:, :, :3]  # a longer key set than the queries: S != L
    k2 = torch.cat([k2, k], dim=2)
    v2 = torch.cat([v2, v], dim=2)
    bias = torch.randn(5, 8, dtype=torch.float64)
    out = attention_by_matmul(q, k2, v2, bias, 0.3, seed=77)
    probs = torch.softmax(q @ k2.transpose(-2, -1) / 2.0 + bias, dim=-1)
    expected = dropout_ref(probs, 0.3, 77) @ v2
    assert_close("attention", out, expected, 1e-12)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    grads_ref = torch.autograd.grad(expected.sum(), (q, k, v))
    for name, a, b in zip("qkv", grads, grads_ref):
        assert_close("grad " + name, a, b, 1e-12)


@pytest.mark.parametrize("B,H", [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_attention_scores_take_every_broadcastable_bias(B, H):
    """The scaled scores plus a bias of each shape the model and fairseq give (causal (L, S), key padding
    (B, 1, 1, S), per batch and head, ...), through one baddbmm where the bias merges per (batch, head) and
    through a product, a scaling and an addition where it does not."""
    from fairseq_srupp.modules import transforms

    torch.manual_seed(0)
    q, k = torch.randn(B, H, 5, 4, dtype=torch.float64), torch.randn(B, H, 7, 4, dtype=torch.float64)
    shapes = [None, (5, 7), (1, 7), (1, 1, 5, 7), (B, 1, 5, 7), (1, H, 5, 7), (B, H, 5, 7), (B, 1, 1, 7), (H, 5, 7)]
    merged = 0
    for shape in shapes:
        bias = None if shape is None else torch.randn(*shape, dtype=torch.float64)
        expected = q @ k.transpose(-2, -1) / 2.0 + (0 if bias is None else bias)
        assert_close("scores {}".format(shape), transforms.attention_scores(q, k, bias), expected, 1e-12)
        merged += bias is not None and transforms._bias_per_batch_and_head(bias, B, H) is not None
    # with B, H > 1 a bias per batch only or per head only does not merge: (B, 1, L, S), (B, 1, 1, S),
    # (1, H, L, S), (H, L, S)
    assert merged == (8 if B == 1 or H == 1 else 4)


def test_attention_module_draws_its_attention_mask_with_the_fused_dropout():
    torch.manual_seed(0)
    attn = SRUppAttention(6, 12, 4, num_heads=2, dropout=0.0, attn_dropout=0.4).double().train()
    with torch.no_grad():
        attn.alpha.fill_(0.7)
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    torch.manual_seed(9)
    out = attn(x)
    torch.manual_seed(9)
    seed = int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64))
    z = attn.linear1(x)
    q = z.view(5, 3, 2, 2).permute(1, 2, 0, 3)
    kk, vv = (t.reshape(5, 3, 2, 2).permute(1, 2, 0, 3) for t in attn.linear2(z).chunk(2, dim=-1))
    probs = torch.softmax(q @ kk.transpose(-2, -1) / math.sqrt(2), dim=-1)
    mixed = (dropout_ref(probs, 0.4, seed) @ vv).permute(2, 0, 1, 3).reshape(5, 3, 4)
    expected = attn.linear3(attn.layer_norm(mixed * attn.alpha + z))
    assert_close("U", out, expected, 1e-12)


def test_attention_by_matmul_takes_a_causal_structure_as_its_tensor():
    from torch.nn.attention.bias import causal_lower_right

    from fairseq_srupp.modules.attention_masks import causal_mask

    q = torch.randn(2, 1, 4, 3, dtype=torch.float64)
    k, v = torch.randn(2, 1, 7, 3, dtype=torch.float64), torch.randn(2, 1, 7, 3, dtype=torch.float64)
    structured = attention_by_matmul(q, k, v, causal_lower_right(4, 7), 0.2, seed=4)
    dense = attention_by_matmul(q, k, v, causal_mask(4, 3, dtype=torch.float64), 0.2, seed=4)
    assert torch.equal(structured, dense)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_by_matmul_in_half_precision_computes_its_softmax_in_fp32(dtype):
    """Half-precision inputs (autocast, fairseq --bf16 / --fp16): the probabilities are an fp32 softmax
    of the half scores rounded once to their dtype, and the result is in v's dtype."""
    from fairseq_srupp.modules.attention_masks import causal_mask

    torch.manual_seed(0)
    q = (torch.randn(2, 1, 6, 8) * 4).to(dtype)
    k, v = (torch.randn(2, 1, 9, 8).to(dtype) for _ in range(2))
    mask = causal_mask(6, 3, dtype=dtype)
    out = attention_by_matmul(q, k, v, mask, 0.0)
    scores = (q.float() @ k.float().transpose(-2, -1)).to(dtype).float() * 8 ** -0.5 + mask.float()
    expected = (torch.softmax(scores, dim=-1).to(dtype).float() @ v.float())
    assert out.dtype == dtype
    assert_close("attention", out.float(), expected, 2e-2)
    with torch.autocast("cpu", dtype=dtype):  # autocast must not turn the probabilities into fp32
        assert attention_by_matmul(q, k, v, mask, 0.0).dtype == dtype
