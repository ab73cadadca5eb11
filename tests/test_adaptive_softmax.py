"""Projected adaptive input / log-softmax: exact probabilities, tying, and the two output paths."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

from fairseq_srupp.modules.adaptive_softmax import ProjectedAdaptiveSoftmax

V, D, E = 23, 12, 16
CUTOFFS = [5, 11, 17]  # clusters [0,5) [5,11) [11,17) [17,23), widths 16, 8, 4, 2


def make(untie=False, dropout=0.0, cutoffs=CUTOFFS):
    torch.manual_seed(0)
    softmax = ProjectedAdaptiveSoftmax(V, D, E, cutoffs, div_value=2, dropout=dropout, untie_projections=untie)
    with torch.no_grad():  # non-zero biases so they are exercised
        for layer in softmax.output_layers():
            layer.bias.uniform_(-1, 1)
    return softmax


def brute_force_log_prob(softmax, hidden):
    """log p(w | h) for every w, written from the definition one word at a time."""
    bounds = [0] + softmax.cutoffs + [V]
    out = torch.empty(hidden.shape[0], V, dtype=torch.float64)
    for n, h in enumerate(hidden.double()):
        head_proj = h @ softmax.projections[0].double()
        head_scores = torch.cat([
            softmax.head.weight.double().mv(head_proj) + softmax.head.bias.double(),
            softmax.cluster_logits.weight.double().mv(head_proj) + softmax.cluster_logits.bias.double(),
        ])
        head_lp = head_scores - torch.logsumexp(head_scores, 0)
        for w in range(V):
            cluster = max(i for i in range(len(bounds) - 1) if bounds[i] <= w)
            if cluster == 0:
                out[n, w] = head_lp[w]
                continue
            tail = softmax.tails[cluster - 1]
            proj = h @ softmax.projections[cluster].double()
            scores = tail.weight.double().mv(proj) + tail.bias.double()
            within = scores[w - bounds[cluster]] - torch.logsumexp(scores, 0)
            out[n, w] = head_lp[bounds[1] + cluster - 1] + within
    return out


def test_full_distribution_matches_the_definition_and_normalises():
    softmax = make()
    hidden = torch.randn(7, D)
    lp = softmax.log_prob(hidden)
    assert_close("log_prob vs brute force", lp, brute_force_log_prob(softmax, hidden).float(), 1e-5)
    assert_close("sum of probabilities", lp.exp().sum(-1), torch.ones(7), 1e-5)


def test_target_path_equals_full_distribution_values_and_gradients():
    softmax = make()
    hidden = torch.randn(4, 9, D, requires_grad=True)
    target = torch.randint(0, V, (4, 9))
    target[0, :4] = torch.tensor([0, 4, 5, 22])  # cluster edges
    upstream = torch.randn(4, 9)

    lp_target = softmax.target_log_prob(hidden, target)
    (lp_target * upstream).sum().backward()
    grads_target = [hidden.grad.clone()] + [p.grad.clone() for p in softmax.parameters()]
    hidden.grad = None
    softmax.zero_grad()

    lp_full = softmax.log_prob(hidden).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    (lp_full * upstream).sum().backward()
    grads_full = [hidden.grad] + [p.grad for p in softmax.parameters()]

    assert_close("log p(target)", lp_target, lp_full, 1e-6)
    for (name, _), a, b in zip([("hidden", None)] + list(softmax.named_parameters()), grads_target, grads_full):
        assert_close("grad " + name, a, b, 1e-5)


def test_target_path_handles_clusters_without_targets():
    softmax = make()
    hidden = torch.randn(6, D, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 0])  # head only
    lp = softmax.target_log_prob(hidden, target)
    lp.sum().backward()
    assert_close("head-only targets", lp, softmax.log_prob(hidden).gather(1, target[:, None]).squeeze(1), 1e-6)
    assert softmax.tails[0].weight.grad is None  # no target there, no gradient (hence legacy_ddp)


def test_input_embedding_uses_the_softmax_tables_and_projections():
    for untie in (False, True):
        softmax = make(untie=untie)
        tokens = torch.tensor([[0, 4, 5, 10], [11, 16, 17, 22]])
        emb = softmax.embed(tokens)
        assert emb.shape == (2, 4, D)
        bounds = [0] + CUTOFFS + [V]
        projections = softmax.input_projections if untie else softmax.projections
        for (b, t), w in zip([(b, t) for b in range(2) for t in range(4)], tokens.flatten().tolist()):
            cluster = max(i for i in range(4) if bounds[i] <= w)
            row = softmax.table(cluster).weight[w - bounds[cluster]]
            assert_close("embedding of {}".format(w), emb[b, t], projections[cluster] @ row, 1e-6)
        if untie:
            assert all(a is not b for a, b in zip(softmax.input_projections, softmax.projections))


def test_parameter_layout_and_initialisation():
    softmax = ProjectedAdaptiveSoftmax(V, D, E, CUTOFFS, div_value=2)
    assert softmax.widths == [16, 8, 4, 2]
    assert softmax.head.weight.shape == (5, 16) and softmax.cluster_logits.weight.shape == (3, 16)
    assert [t.weight.shape for t in softmax.tails] == [(6, 8), (6, 4), (6, 2)]
    assert [tuple(p.shape) for p in softmax.projections] == [(D, 16), (D, 8), (D, 4), (D, 2)]
    bound = math.sqrt(3.0 / D)
    for layer in softmax.output_layers():
        assert layer.weight.abs().max() <= bound and torch.all(layer.bias == 0)
    # Tied: the input side adds no parameter of its own.
    n_tied = sum(p.numel() for p in softmax.parameters())
    n_untied = sum(p.numel() for p in ProjectedAdaptiveSoftmax(V, D, E, CUTOFFS, 2, untie_projections=True).parameters())
    assert n_untied - n_tied == D * (16 + 8 + 4 + 2)


def test_no_cutoffs_is_a_projected_full_softmax():
    softmax = ProjectedAdaptiveSoftmax(V, D, E, [], div_value=2)
    hidden = torch.randn(3, D)
    expected = F.log_softmax(softmax.head(hidden @ softmax.projections[0]), -1)
    assert_close("single cluster", softmax.log_prob(hidden), expected, 1e-6)


def test_dropout_only_in_training():
    softmax = make(dropout=0.5).eval()
    hidden = torch.randn(5, D)
    assert torch.equal(softmax.log_prob(hidden), softmax.log_prob(hidden))
    softmax.train()
    assert not torch.equal(softmax.log_prob(hidden), softmax.log_prob(hidden))


def test_fairseq_adaptive_loss_is_refused_with_advice():
    with pytest.raises(RuntimeError, match="srupp_adaptive_loss"):
        make()(torch.randn(2, D), torch.tensor([0, 1]))
