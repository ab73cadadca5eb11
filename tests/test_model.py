"""srupp_lm presets, config validation, and the model's fairseq-facing behaviour."""
from argparse import Namespace

import pytest
import torch
from conftest import assert_close
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

import fairseq_srupp  # noqa: F401  (registers the model)
from fairseq_srupp.models.presets import BY_NAME, FIELDS, PRESETS
from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLMConfig


class ByteDictionary(list):
    """Just enough of fairseq's Dictionary for building a decoder of a given vocabulary size."""

    def pad(self):
        return 1


def preset_config(arch, **overrides):
    args = Namespace(**overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return SRUppLMConfig.from_namespace(args)


def count_parameters_on_meta(cfg, vocab_size):
    with torch.device("meta"):
        decoder = SRUppDecoder(cfg, ByteDictionary(range(vocab_size)))
    return sum(p.numel() for p in decoder.parameters())


ENWIK8_VOCAB, WT103_VOCAB, LM1B_VOCAB = 205, 267735, 793471


# Spec §4: every row of the paper's preset table, at full size with the dataset's vocabulary.
@pytest.mark.parametrize(
    "arch,vocab_size,expected_millions",
    [
        ("srupp_lm", ENWIK8_VOCAB, 107.6),
        ("srupp_lm_large", ENWIK8_VOCAB, 190.7),
        ("srupp_lm_enwik8_large_ratio8", ENWIK8_VOCAB, 195.1),
        ("srupp_lm_wt103_base", WT103_VOCAB, 147.7),
        ("srupp_lm_wt103_large", WT103_VOCAB, 231.8),
        ("srupp_lm_wt103_large_ratio8", WT103_VOCAB, 233.9),
        ("srupp_lm_wt103_large_ratio8_k5", WT103_VOCAB, 225.0),
        ("srupp_lm_lm1b_base", LM1B_VOCAB, 328.4),
        ("srupp_lm_lm1b_large_k5", LM1B_VOCAB, 465.4),
    ],
)
def test_preset_parameter_counts_match_the_paper(arch, vocab_size, expected_millions):
    assert ARCH_MODEL_REGISTRY[arch].__name__ == "SRUppLanguageModel"
    assert (BY_NAME[arch].params, BY_NAME[arch].dataset.vocab) == (expected_millions, vocab_size)  # the table's note
    n = count_parameters_on_meta(preset_config(arch), vocab_size)
    print("{}: {:.2f}M".format(arch, n / 1e6))
    assert abs(n / 1e6 - expected_millions) / expected_millions < 0.005


def test_every_arch_name_is_registered_from_its_row_and_fills_every_field():
    registered = {name for name, model in ARCH_MODEL_REGISTRY.items() if model.__name__ == "SRUppLanguageModel"}
    assert registered == set(BY_NAME)
    defaults = SRUppLMConfig()
    assert {name: getattr(defaults, name) for name in FIELDS} == BY_NAME["srupp_lm"].values()  # --arch srupp_lm
    for preset in PRESETS:
        for name in preset.arch_names:
            args = Namespace()
            ARCH_CONFIG_REGISTRY[name](args)
            expected = preset.values() if name != "srupp_lm" else {}  # fairseq's own no-op entry
            assert vars(args) == expected, name
            with_override = Namespace(hidden_size=8, adaptive_softmax_cutoff=None)
            ARCH_CONFIG_REGISTRY[name](with_override)
            assert (with_override.hidden_size, with_override.adaptive_softmax_cutoff) == (8, None), name


def test_tiny_preset_is_small_and_overridable():
    cfg = preset_config("srupp_lm_tiny")
    assert (cfg.hidden_size, cfg.proj_size, cfg.num_layers) == (256, 128, 4)
    assert preset_config("srupp_lm_tiny", hidden_size=64).hidden_size == 64
    assert count_parameters_on_meta(cfg, 208) < 1.5e6
    assert abs(count_parameters_on_meta(cfg, ENWIK8_VOCAB) / 1e6 - BY_NAME["srupp_lm_tiny"].params) < 0.005


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(proj_size=30, num_heads=4), "divisible by --num-heads"),
        (dict(hidden_size=0), "--hidden-size must be a positive"),
        (dict(dropout=1.0), "--dropout must be in"),
        (dict(attention_every_n_layers=0), "--attention-every-n-layers"),
        (dict(adaptive_softmax_cutoff="5,25"), "smaller than the dictionary size"),
        (dict(adaptive_softmax_cutoff="8,5"), "positive and increasing"),
        (dict(adaptive_softmax_cutoff="5;8"), "comma-separated integers"),
        (dict(adaptive_softmax_cutoff="5,8", adaptive_embed_dim=8, adaptive_div_value=4), "width >= 1"),
        (dict(emb_dropout=-0.1), "--emb-dropout must be in"),
        (dict(eval_window=0), "--eval-window must be a positive"),
    ],
)
def test_impossible_configs_are_rejected(overrides, message):
    cfg = preset_config("srupp_lm_tiny", **overrides)
    with pytest.raises(ValueError, match=message):
        SRUppDecoder(cfg, ByteDictionary(range(20)))


def test_initialisation_follows_the_spec():
    cfg = preset_config("srupp_lm_tiny", hidden_size=48, proj_size=16, num_layers=2)
    decoder = SRUppDecoder(cfg, ByteDictionary(range(30)))
    bound = (3.0 / 48) ** 0.5
    for w in (decoder.embed_tokens.weight, decoder.output_projection.weight):
        assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert torch.all(decoder.output_projection.bias == 0)
    layer = decoder.srupp.rnn_lst[0]
    assert torch.all(layer.bias[:48] == 0) and torch.all(layer.bias[48:] == -2.0)
    assert layer.transform_module.alpha.item() == 0.0


@pytest.mark.parametrize("attention_every_n_layers", [1, 2])
def test_fairseq_finds_no_shared_parameters(attention_every_n_layers):
    """fairseq's trainer ties and logs every pair of identical entries among the modules' parameters;
    bias-free linears must not offer it their None biases as one shared parameter."""
    from fairseq.trainer import _catalog_shared_params

    cfg = preset_config("srupp_lm_tiny", hidden_size=48, proj_size=16, num_layers=3,
                        attention_every_n_layers=attention_every_n_layers)
    decoder = SRUppDecoder(cfg, ByteDictionary(range(30)))
    assert _catalog_shared_params(decoder) == []
    names = [name for name, _ in decoder.named_parameters()]
    assert "srupp.rnn_lst.0.transform_module.linear1.weight" in names
    assert not any(name.endswith("linear1.bias") for name in names)
    x = torch.randn(5, 2, 48)
    linear = decoder.srupp.rnn_lst[0].transform_module.linear1
    assert linear.bias is None and torch.equal(linear(x), x @ linear.weight.t())


def test_batched_padded_forward_equals_single_sequences():
    cfg = preset_config("srupp_lm_tiny", hidden_size=32, proj_size=16, num_layers=2, dropout=0.0, attn_dropout=0.0)
    decoder = SRUppDecoder(cfg, ByteDictionary(range(20))).eval()
    with torch.no_grad():
        for p in decoder.srupp.parameters():
            if p.numel() == 1:
                p.fill_(0.7)  # non-zero ReZero alpha so attention matters
    a = torch.randint(4, 20, (1, 9))
    b = torch.randint(4, 20, (1, 5))
    batch = torch.full((2, 9), 1)
    batch[0], batch[1, :5] = a[0], b[0]
    with torch.no_grad():
        out, _ = decoder(batch)
        out_a, _ = decoder(a)
        out_b, _ = decoder(b)
    assert_close("long sequence", out[0], out_a[0], 1e-5)
    assert_close("right-padded short sequence", out[1, :5], out_b[0], 1e-5)
