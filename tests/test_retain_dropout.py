"""fairseq's --retain-dropout (Monte-Carlo dropout at inference) on srupp_lm (issue 15).

fairseq-generate / -interactive / -eval-lm and the hub call ``model.prepare_for_inference_(cfg)``
with the parsed generation options; the model's dropouts must then stay on in eval mode. The
config below comes from fairseq's own generation parser, so the flags are the real ones."""
import copy

import pytest
import torch
from conftest import assert_close
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from test_model import ByteDictionary

import fairseq_srupp  # noqa: F401  (registers the model)
from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLanguageModel, SRUppLMConfig
from fairseq_srupp.modules import Dropout

VOCAB = 40


def generation_cfg(*flags):
    parser = options.get_generation_parser(default_task="language_modeling")
    args = options.parse_args_and_arch(parser, ["unused-data-dir", *flags])
    return convert_namespace_to_omegaconf(args)


def tiny_model(adaptive):
    cfg = SRUppLMConfig(hidden_size=16, proj_size=8, num_layers=3, attention_every_n_layers=2, dropout=0.3,
                        attn_dropout=0.3, emb_dropout=0.3, eval_window=8,
                        adaptive_softmax_cutoff="10,20" if adaptive else None, adaptive_embed_dim=16)
    return SRUppLanguageModel(SRUppDecoder(cfg, ByteDictionary(range(VOCAB))))


def forward(model, tokens, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(tokens)[0]


@pytest.mark.parametrize("adaptive", [False, True], ids=["char", "adaptive"])
def test_retained_dropout_equals_seeded_training_dropout(adaptive):
    model = tiny_model(adaptive)
    training_copy = copy.deepcopy(model).train()
    tokens = torch.randint(4, VOCAB, (2, 9))
    model.eval()
    model.prepare_for_inference_(generation_cfg("--retain-dropout"))
    first, second = forward(model, tokens, 1), forward(model, tokens, 2)
    assert (first - second).abs().max() > 1e-3, "dropout is not active at inference"
    assert_close("eval with retained dropout vs training forward", first, forward(training_copy, tokens, 1), 0.0)
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    assert dropouts and all(m.apply_during_inference for m in dropouts)


def test_without_retain_dropout_inference_is_deterministic():
    model = tiny_model(adaptive=False).eval()
    tokens = torch.randint(4, VOCAB, (2, 9))
    plain = forward(model, tokens, 1)
    model.prepare_for_inference_(generation_cfg())
    assert_close("second eval forward", forward(model, tokens, 2), plain, 0.0)
    assert not any(m.apply_during_inference for m in model.modules() if isinstance(m, Dropout))


def test_retain_dropout_modules_selects_by_class_name():
    model = tiny_model(adaptive=False).eval()
    model.prepare_for_inference_(generation_cfg("--retain-dropout", "--retain-dropout-modules", "SRUppAttention"))
    retained = {m.module_name for m in model.modules() if isinstance(m, Dropout) and m.apply_during_inference}
    assert retained == {"SRUppAttention"}
    tokens = torch.randint(4, VOCAB, (2, 9))
    assert (forward(model, tokens, 1) - forward(model, tokens, 2)).abs().max() > 1e-4


def test_retain_dropout_modules_that_select_nothing_are_one_error_line():
    """A misspelt name would keep no dropout on, without a word (fairseq's own models behave so)."""
    from fairseq_srupp.errors import SRUppUserError

    model = tiny_model(adaptive=True).eval()
    with pytest.raises(SRUppUserError, match=r"^--retain-dropout-modules SRUppAtention: selects none of srupp_lm's "
                                             r"dropouts, which are in ProjectedAdaptiveSoftmax, SRUppAttention, "
                                             r"SRUppDecoder, SRUppLayer, SRUppProjectedLinear$"):
        model.prepare_for_inference_(generation_cfg("--retain-dropout", "--retain-dropout-modules", "SRUppAtention"))
    assert not any(m.apply_during_inference for m in model.modules() if isinstance(m, Dropout))
    model.prepare_for_inference_(generation_cfg("--retain-dropout-modules", "Nothing"))  # without --retain-dropout: unused
