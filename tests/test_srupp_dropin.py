"""fairseq_srupp.modules.SRUpp as a drop-in for sru.SRUpp 3.0.0.dev6: every constructor and forward
argument is accepted, and the ones beyond the paper's set-up compute what sru.SRUpp computes
(identical weights: outputs, final state, saved inputs and every gradient)."""
import inspect

import pytest
import sru
import torch
from conftest import assert_close
from test_srupp_parity import assert_training_step_matches, build_pair
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fairseq_srupp.modules import SRUpp
from fairseq_srupp.modules.attention_masks import causal_mask


def parameters(fn):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_signatures_match_reference():
    """Same names, order and defaults, so positional and keyword calls written for sru.SRUpp work."""
    assert parameters(SRUpp.__init__) == parameters(sru.SRUpp.__init__)
    theirs = parameters(sru.SRUpp.forward)
    assert parameters(SRUpp.forward)[: len(theirs)] == theirs


REFERENCE_DEFAULTS = [
    (p.name, p.default)
    for p in inspect.signature(sru.SRUpp.__init__).parameters.values()
    if p.default is not inspect.Parameter.empty
]


@pytest.mark.parametrize("name,default", REFERENCE_DEFAULTS, ids=[n for n, _ in REFERENCE_DEFAULTS])
def test_each_keyword_at_its_default_builds_the_reference_model(name, default):
    ref, mine = sru.SRUpp(12, 16, 8), SRUpp(12, 16, 8, **{name: default})
    mine.load_state_dict(ref.state_dict())  # strict: same parameters and buffers


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(attention_last_n_layers=1), id="last1"),
        pytest.param(dict(attention_last_n_layers=2, num_heads=2), id="last2_2heads"),
        pytest.param(dict(attention_last_n_layers=0), id="last0_no_attention"),
        pytest.param(dict(rescale=True), id="rescale"),
        pytest.param(dict(rescale=True, layer_norm=False, highway_bias=-1.0), id="rescale_no_ln"),
        pytest.param(dict(nn_rnn_compatible_return=True), id="nn_rnn_return"),
        pytest.param(dict(proj_input_to_hidden_first=True), id="proj_first"),
        pytest.param(dict(proj_input_to_hidden_first=True, rescale=True, attention_every_n_layers=2),
                     id="proj_first_rescale_every2"),
    ],
)
@pytest.mark.parametrize("input_size", [16, 12])  # 12 != hidden: k=4 first layer unless projected first
def test_new_arguments_match_reference(kwargs, input_size):
    L, B, d, layers, mem_len = 7, 3, 16, 3, 4
    kwargs = dict(dict(layer_norm=True), **kwargs)
    ref, mine = build_pair(input_size, d, 8, num_layers=layers, dropout=0.2, **kwargs)
    assert [type(layer.transform_module).__name__ for layer in mine.rnn_lst] == [
        type(layer.transform_module).__name__ for layer in ref.rnn_lst
    ]
    first_width = d if mine.input_to_hidden is not None else input_size
    x, c0 = torch.randn(L, B, input_size), torch.randn(layers, B, d)
    memory = [torch.randn(mem_len, B, first_width if i == 0 else d) for i in range(layers)]
    mask_pad = torch.zeros(L, B, dtype=torch.bool)
    mask_pad[5:, 1] = True
    forward_kwargs = dict(attn_mask=causal_mask(L, mem_len), memory=memory, mask_pad=mask_pad)

    ref.eval()
    mine.eval()
    with torch.no_grad():
        h_ref, c_ref, saved_ref = ref(x, c0, **forward_kwargs)
        h, c, saved = mine(x, c0, **forward_kwargs)
    assert_close("h", h, h_ref, 1e-5)
    assert_close("c", c, c_ref, 1e-5)
    for i, (a, b) in enumerate(zip(saved, saved_ref["saved_inputs"], strict=True)):
        assert_close("saved input {}".format(i), a, b, 1e-5)
    assert_training_step_matches(ref, mine, x, c0, **forward_kwargs)


def test_rescale_sets_the_reference_constant():
    ref, mine = build_pair(16, 16, 8, num_layers=2, rescale=True, highway_bias=-3.0)
    for a, b in zip(SRUpp(16, 16, 8, num_layers=2, rescale=True, highway_bias=-3.0).rnn_lst, ref.rnn_lst):
        assert_close("scale_x", a.scale_x, b.scale_x, 1e-7)
    assert abs(mine.rnn_lst[0].scale_x.item() - (1 + 2 * torch.tensor(-3.0).exp().item()) ** 0.5) < 1e-6


def test_packed_sequence_input_equals_padded_input_with_mask():
    """sru.SRUpp's own packed path fails on current PyTorch (a uint8 mask in masked_fill), so the
    packed result is compared with the reference run on the padded batch and its padding mask."""
    lengths = torch.tensor([6, 2, 4])
    ref, mine = build_pair(16, 16, 8, num_layers=2, layer_norm=True)
    ref.eval()
    mine.eval()
    x = torch.randn(6, 3, 16)
    mask_pad = torch.arange(6).unsqueeze(1) >= lengths.unsqueeze(0)  # (L, B)
    with torch.no_grad():
        h_ref, c_ref, _ = ref(x, mask_pad=mask_pad, attn_mask=causal_mask(6))
        packed, c, _ = mine(pack_padded_sequence(x, lengths, enforce_sorted=False), attn_mask=causal_mask(6))
    h, out_lengths = pad_packed_sequence(packed)
    assert out_lengths.tolist() == lengths.tolist()
    assert_close("h (packed)", h, h_ref, 1e-5)
    assert_close("c (packed)", c, c_ref, 1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(bidirectional=True), "bidirectional=True is not supported: .* see future tokens"),
        (dict(attention_every_n_layers=2, attention_last_n_layers=1), "not both"),
        (dict(attention_last_n_layers=-2), "attention_last_n_layers must be -1"),
    ],
)
def test_unsupported_arguments_say_why(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SRUpp(16, 16, 8, **kwargs)


def test_boolean_attention_mask_is_refused():
    """sru.SRUpp adds a bool mask as 0 / 1, so "masked" future positions stay visible; ours says so."""
    from fairseq_srupp.modules import SRUpp as Ours

    model = Ours(16, 16, 8, num_layers=2).eval()
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with pytest.raises(TypeError, match="attn_mask must be an additive float mask .* got a torch.bool tensor"):
        model(torch.randn(5, 2, 16), attn_mask=future)
    model(torch.randn(5, 2, 16), attn_mask=future.float() * -10000.0)  # the conversion the message suggests
    for empty in ((0, 2, 16), (5, 0, 16)):
        with pytest.raises(ValueError, match=r"at least one position and one sequence \(L, B >= 1\)"):
            model(torch.randn(*empty))
