"""torch.compile / torch.export of the SRU++ stack and the srupp_lm decoder (issue 14).

Zero graph breaks (``torch._dynamo.explain``), and the compiled graph gives the eager outputs and
every gradient. The graphs run under the ``aot_eager`` backend: dynamo capture plus AOTAutograd's
forward/backward split, the parts that decide graph breaks and gradients, without Inductor's C++
code generation (minutes on 2 cores; benchmarks/compile_cpu.py runs Inductor). Same seed → same
dropout masks, so dropout stays on and the comparison is exact."""
import pytest
import torch
from conftest import assert_close
from test_model import ByteDictionary

from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLMConfig
from fairseq_srupp.modules import SRUpp
from fairseq_srupp.modules.attention_masks import causal_mask
from fairseq_srupp.tasks.carried_state import SegmentContext

L, B, VOCAB, PAD = 9, 2, 40, 1


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_decoder():
    cfg = SRUppLMConfig(hidden_size=16, proj_size=8, num_layers=3, attention_every_n_layers=2, dropout=0.2,
                        attn_dropout=0.2, eval_window=8)
    return SRUppDecoder(cfg, ByteDictionary(range(VOCAB)))


def tokens(seed):
    generator = torch.Generator().manual_seed(seed)
    t = torch.randint(4, VOCAB, (B, L), generator=generator)
    t[1, -2:] = PAD  # padding takes the masked paths of attention and recurrence
    return t


CARRY = SegmentContext(mask="causal", state="train")


def assert_no_graph_break(fn, *args, **kwargs):
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    assert explanation.graph_break_count == 0, [str(r) for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_srupp_stack_has_no_graph_break():
    stack = SRUpp(12, 16, 8, num_layers=3, dropout=0.2, layer_norm=True, attention_every_n_layers=2).train()
    memory = [torch.randn(4, B, 12 if i == 0 else 16) for i in range(3)]
    mask_pad = torch.zeros(L, B, dtype=torch.bool)
    mask_pad[-2:, 1] = True
    assert_no_graph_break(stack, torch.randn(L, B, 12), torch.randn(3, B, 16), mask_pad=mask_pad,
                          attn_mask=causal_mask(L, 4), memory=memory)


@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried-memory"])
def test_decoder_has_no_graph_break(carried):
    decoder = tiny_decoder().train()
    if carried:
        decoder(tokens(0), segment=CARRY)  # the call below then attends over this segment's memory
        assert decoder.carried.get("train") is not None
    assert_no_graph_break(decoder, tokens(1), segment=CARRY if carried else None)


def training_step(decoder, fn, segments, carry):
    """Outputs and parameter gradients of the last segment (earlier ones only build carried state)."""
    decoder.zero_grad()
    decoder.reset_carried_state()
    torch.manual_seed(7)
    for seed in segments:
        logits = fn(tokens(seed), segment=carry)[0]
    weights = torch.linspace(-1, 1, logits.numel()).view_as(logits)
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in decoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried-memory"])
def test_compiled_decoder_gives_eager_outputs_and_gradients(carried, monkeypatch):
    # Traced code takes F.dropout, so eager must too for the masks to match (see ops/dropout).
    monkeypatch.setenv("FAIRSEQ_SRUPP_DROPOUT", "torch")
    decoder = tiny_decoder().train()
    segments, carry = ([0, 1], CARRY) if carried else ([1], None)
    compiled = torch.compile(decoder, backend="aot_eager", fullgraph=True)
    out, grads = training_step(decoder, compiled, segments, carry)
    carried_c = decoder.carried.get("train").c if carried else None
    out_ref, grads_ref = training_step(decoder, decoder, segments, carry)
    assert_close("logits", out, out_ref, 0.0)
    assert grads.keys() == grads_ref.keys() and len(grads) == len(list(decoder.parameters()))
    for name in sorted(grads):
        assert_close("grad " + name, grads[name], grads_ref[name], 1e-6)
    if carried:
        assert_close("carried c", carried_c, decoder.carried.get("train").c, 0.0)


def test_export_of_decoder_full_sequence_forward():
    decoder = tiny_decoder().eval()
    exported = torch.export.export(decoder, (tokens(0),))
    with torch.no_grad():
        for seed in (1, 2):  # a new input through the exported program
            assert_close("exported logits", exported.module()(tokens(seed))[0], decoder(tokens(seed))[0], 1e-6)
