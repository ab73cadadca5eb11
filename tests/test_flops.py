"""fairseq_srupp.bench.flops against PyTorch's FLOP counter on real training steps (forward + backward).

The counter sees every matrix product; the analytic count is checked on the products of the linear
layers (aten.mm / aten.addmm). Attention's batched products are left out on purpose: the analytic
count takes the keys a causal query really sees, the kernels compute whole blocks."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))

import train_bench  # noqa: E402
from fairseq_srupp.bench.flops import srupp_flops_per_token, transformer_flops_per_token  # noqa: E402
from fairseq_srupp.bench.generation import write_dictionary  # noqa: E402

B, T, VOCAB = 2, 8, 209


def linear_flops_per_token(name, shape_args, tmp_path, steps):
    """Matrix-product FLOPs per token of the last of ``steps`` training steps of train_bench's model."""
    args = train_bench.parse_args(["--device", "cpu", "--batch", str(B), "--length", str(T), "--vocab", str(VOCAB),
                                   "--dropout", "0"] + shape_args)
    write_dictionary(str(tmp_path), args.vocab)
    with train_bench.model_switches(name):
        model, forward, analytic = train_bench.build(name, args, str(tmp_path))
        data = torch.randint(4, VOCAB, (B, T + 1))
        for i in range(steps):
            with FlopCounterMode(display=False) as counter:
                loss = F.cross_entropy(forward(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
                loss.backward()
    counts = counter.get_flop_counts()["Global"]
    products = sum(v for op, v in counts.items() if op in (torch.ops.aten.mm, torch.ops.aten.addmm))
    return products / (B * T), analytic


@pytest.mark.parametrize("d,p,n", [(32, 16, 2), (48, 8, 3)])
def test_srupp_count_matches_the_products_of_a_step_with_memory(tmp_path, d, p, n):
    # the second step attends over the first as memory (M = T): its W1, W2 rows cost forward + weight grad
    counted, analytic = linear_flops_per_token("srupp_lm", ["--srupp", "{},{},{}".format(d, p, n)], tmp_path, steps=2)
    keys = T + (T + 1) / 2
    assert analytic == srupp_flops_per_token(d, p, n, VOCAB, T)
    assert counted == pytest.approx(analytic - n * (12 * p * keys + 45 * d))  # all but attention and recurrence


def test_srupp_count_without_memory(tmp_path):
    d, p, n = 32, 16, 2
    counted, _ = linear_flops_per_token("srupp_lm", ["--srupp", "{},{},{}".format(d, p, n)], tmp_path, steps=1)
    analytic = srupp_flops_per_token(d, p, n, VOCAB, T, memory=0)
    assert counted == pytest.approx(analytic - n * (12 * p * (T + 1) / 2 + 45 * d))


def test_transformer_count_matches_the_products_of_a_step(tmp_path):
    dim, ffn, layers = 32, 64, 2
    shape = ["--transformer", "{},{},{},4".format(dim, ffn, layers)]
    counted, analytic = linear_flops_per_token("transformer_lm", shape, tmp_path, steps=1)
    assert analytic == transformer_flops_per_token(dim, ffn, layers, VOCAB, T)
    assert counted == pytest.approx(analytic - layers * 12 * dim * (T + 1) / 2)


def test_srupp_count_with_attention_in_every_second_layer(tmp_path, monkeypatch):
    d, p, n = 32, 16, 4
    cli_args = train_bench.model_cli_args

    def with_k2(opts, length):
        specs = cli_args(opts, length)
        specs["srupp_lm"] = specs["srupp_lm"] + ["--attention-every-n-layers", 2]
        return specs

    monkeypatch.setattr(train_bench, "model_cli_args", with_k2)
    counted, _ = linear_flops_per_token("srupp_lm", ["--srupp", "{},{},{}".format(d, p, n)], tmp_path, steps=2)
    analytic = srupp_flops_per_token(d, p, n, VOCAB, T, attention_every_n_layers=2)
    assert counted == pytest.approx(analytic - 2 * 12 * p * (T + (T + 1) / 2) - n * 45 * d)  # 2 attention layers
