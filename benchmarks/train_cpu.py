"""Benchmark: CPU training-step throughput of fairseq_srupp.modules.SRUpp vs sru.SRUpp.

What is measured
    A tiny character-level LM, built the same way as the ``srupp_lm`` model (spec §3),

        Embedding(V, d) -> dropout -> SRU++ stack -> dropout -> Linear(d, V) -> cross-entropy

    with a causal attention mask, is trained with Adam. One "step" is a full training step:
    zero_grad, forward, loss, backward, optimizer step. Two models that differ only in the SRU++
    stack are timed on the same inputs:

    (a) ``fairseq_srupp.modules.SRUpp`` (default recurrence: the fused C++ CPU path),
    (b) ``sru.SRUpp`` 3.0.0.dev6 (its own CPU training path: a Python time loop with autograd).

    Both start from the same weights ((a) loads the state dict of (b), strictly). Each model runs
    ``--warmup`` untimed steps, then its timed steps (``time.perf_counter``, fewer if
    ``--time-budget`` runs out); the median step time gives tokens/s (L*B tokens per step), and
    the ratio of the two is printed.

    To show where the time goes, the SRU++ stack's forward + backward alone (random input and
    random upstream gradient, no embedding / softmax / optimizer) is also timed for
    (a) with the default recurrence, (a) with the recurrence forced to the pure-PyTorch reference
    (``FAIRSEQ_SRUPP_RECURRENCE=reference``), and (b). ``--profile`` additionally prints the top
    operators of one training step of (a) from ``torch.profiler``.

How to run (glibc malloc thresholds are tuned first, see tune_malloc / --no-malloc-tuning)
    .venv/bin/python benchmarks/train_cpu.py                 # d=256 proj=64 4 layers L=256 B=8
    .venv/bin/python benchmarks/train_cpu.py --threads 1 --profile
"""
import argparse
import logging
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
logging.basicConfig(level=logging.WARNING)  # before fairseq's imports, which log at INFO

with warnings.catch_warnings():
    # sru tries to JIT-compile its CUDA kernels at import and warns (CUDA_HOME not set) on CPU.
    warnings.simplefilter("ignore")
    import sru
# sru warns on every CPU forward with grad enabled; that is exactly what is benchmarked here.
warnings.filterwarnings("ignore", message="Running SRU on CPU with grad_enabled=True")

from bench_timing import Timer, default_threads, tune_malloc  # noqa: E402
from fairseq_srupp.cli_args import non_negative_int, positive_float, positive_int  # noqa: E402
from fairseq_srupp.models.srupp_lm import causal_mask  # noqa: E402
from fairseq_srupp.modules import Dropout, SRUpp  # noqa: E402
from fairseq_srupp.ops import load_cpu_extensions  # noqa: E402

ENV = "FAIRSEQ_SRUPP_RECURRENCE"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Sizes and counts are checked here, so that an impossible one ends in one argparse error line.
    p.add_argument("--d", type=positive_int, default=256, help="hidden size d (default 256)")
    p.add_argument("--proj", type=positive_int, default=64, help="attention / projection size (default 64)")
    p.add_argument("--layers", type=positive_int, default=4, help="SRU++ layers (default 4)")
    p.add_argument("--heads", type=positive_int, default=1, help="attention heads, dividing --proj (default 1)")
    p.add_argument("--attention-every-n-layers", type=positive_int, default=1)
    p.add_argument("--length", "-L", type=positive_int, default=256, help="segment length L (default 256)")
    p.add_argument("--batch", "-B", type=positive_int, default=8, help="batch size B (default 8)")
    p.add_argument("--vocab", type=positive_int, default=205, help="vocabulary size V (default 205)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout everywhere (default 0.1)")
    p.add_argument("--attn-dropout", type=float, default=None, help="attention dropout (default: --dropout)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=positive_int, default=default_threads(),
                   help="torch.set_num_threads (default: all available cores)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps per model (default 2)")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="timed steps of fairseq_srupp and of the stack-only timings (default 10)")
    p.add_argument("--sru-repeats", type=positive_int, default=5,
                   help="timed steps of sru.SRUpp and of the reference recurrence (default 5)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the SRU++-stack-only timings")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's top operators for one fairseq_srupp training step")
    p.add_argument("--time-budget", type=positive_float, default=40,
                   help="seconds per measurement after which no more repeats are started "
                        "(at least 3 are always taken; default 40)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's default mmap / trim thresholds (see tune_malloc)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.attn_dropout is None:
        args.attn_dropout = args.dropout
    if args.proj % args.heads:
        p.error("--heads {} does not divide --proj {}: each head takes proj / heads features".format(
            args.heads, args.proj))
    for flag, rate in (("--dropout", args.dropout), ("--attn-dropout", args.attn_dropout)):
        if not 0 <= rate < 1:
            p.error("{} must be in [0, 1), got {}".format(flag, rate))
    return args


class TinyLM(nn.Module):
    """Embedding -> dropout -> SRU++ stack -> dropout -> Linear, time-major (L, B)."""

    def __init__(self, vocab, d, stack, drop):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.drop = drop
        self.srupp = stack
        self.out = nn.Linear(d, vocab)

    def forward(self, tokens, attn_mask):
        x = self.drop(self.embed(tokens))  # (L, B, d)
        h, _, _ = self.srupp(x, attn_mask=attn_mask)
        return self.out(self.drop(h))  # (L, B, V)


def stack_kwargs(args):
    return dict(
        num_layers=args.layers,
        dropout=args.dropout,
        attn_dropout=args.attn_dropout,
        num_heads=args.heads,
        layer_norm=True,
        attention_every_n_layers=args.attention_every_n_layers,
    )


def build_models(args):
    torch.manual_seed(args.seed)
    # Each with its own implementation's dropout around the stack, as srupp_lm and the paper's
    # script have: ours is fused on the CPU (fairseq_srupp.ops.dropout), theirs is nn.Dropout.
    ref = TinyLM(args.vocab, args.d, sru.SRUpp(args.d, args.d, args.proj, **stack_kwargs(args)), nn.Dropout(args.dropout))
    mine = TinyLM(args.vocab, args.d, SRUpp(args.d, args.d, args.proj, **stack_kwargs(args)), Dropout(args.dropout))
    mine.load_state_dict(ref.state_dict())  # strict: same names, shapes and values
    return mine, ref


def make_train_step(model, inputs, targets, attn_mask, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(inputs, attn_mask)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        loss.backward()
        opt.step()
        return loss

    return step


def make_stack_step(stack, x, grad_h, attn_mask):
    stack.train()

    def step():
        stack.zero_grad(set_to_none=True)
        x.grad = None
        h, _, _ = stack(x, attn_mask=attn_mask)
        h.backward(grad_h)

    return step


class recurrence_env:
    """Temporarily set FAIRSEQ_SRUPP_RECURRENCE (read on every call of the dispatcher)."""

    def __init__(self, value):
        self.value = value

    def __enter__(self):
        self.old = os.environ.get(ENV)
        if self.value is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.old


def main(argv=None):
    args = parse_args(argv)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    timer = Timer(args.time_budget)
    torch.set_num_threads(args.threads)
    L, B, V = args.length, args.batch, args.vocab
    tokens_per_step = L * B
    load_cpu_extensions()  # compile / load outside the timed region

    mine, ref = build_models(args)
    g = torch.Generator().manual_seed(args.seed + 1)
    data = torch.randint(0, V, (L + 1, B), generator=g)
    inputs, targets = data[:-1], data[1:]
    attn_mask = causal_mask(L, 0)

    # Sanity check: identical weights give the same eval loss.
    with torch.no_grad():
        mine.eval()
        ref.eval()
        losses = [
            F.cross_entropy(m(inputs, attn_mask).view(-1, V), targets.reshape(-1)).item() for m in (mine, ref)
        ]

    with recurrence_env(None):
        mine_med, mine_min = timer.time_fn(make_train_step(mine, inputs, targets, attn_mask, args.lr),
                                           args.warmup, args.repeats)
    ref_med, ref_min = timer.time_fn(make_train_step(ref, inputs, targets, attn_mask, args.lr),
                                     args.warmup, args.sru_repeats)

    breakdown = []
    if not args.no_breakdown:
        x = torch.randn(L, B, args.d, generator=g).requires_grad_(True)
        grad_h = torch.randn(L, B, args.d, generator=g)
        for name, stack, env, reps in (
            ("fairseq_srupp, cpu recurrence", mine.srupp, None, args.repeats),
            ("fairseq_srupp, reference recurr.", mine.srupp, "reference", args.sru_repeats),
            ("sru.SRUpp", ref.srupp, None, args.sru_repeats),
        ):
            with recurrence_env(env):
                med, mn = timer.time_fn(make_stack_step(stack, x, grad_h, attn_mask), args.warmup, reps)
            breakdown.append((name, med, mn))

    print("CPU training step of a tiny SRU++ LM: fairseq_srupp.modules.SRUpp vs sru.SRUpp")
    print(
        "d={} proj={} layers={} heads={} L={} B={} V={} dropout={} attn_dropout={} threads={} "
        "warmup={} repeats={}/{}".format(
            args.d, args.proj, args.layers, args.heads, L, B, V, args.dropout, args.attn_dropout,
            torch.get_num_threads(), args.warmup, args.repeats, args.sru_repeats,
        )
    )
    print("malloc tuning (see --no-malloc-tuning): {}".format("on" if malloc_tuned else "off"))
    print("eval loss with identical weights: fairseq_srupp {:.6f}, sru.SRUpp {:.6f}".format(*losses))
    print()
    header = "{:<34} {:>12} {:>12} {:>12}".format("full training step", "median ms", "min ms", "tokens/s")
    print(header)
    print("-" * len(header))
    for name, med, mn in (("fairseq_srupp.modules.SRUpp", mine_med, mine_min), ("sru.SRUpp", ref_med, ref_min)):
        print("{:<34} {:>12.1f} {:>12.1f} {:>12,.0f}".format(name, med * 1e3, mn * 1e3, tokens_per_step / med))
    if breakdown:
        print()
        header = "{:<34} {:>12} {:>12} {:>12}".format(
            "SRU++ stack fwd+bwd only", "median ms", "min ms", "of step (a)")
        print(header)
        print("-" * len(header))
        for name, med, mn in breakdown:
            print("{:<34} {:>12.1f} {:>12.1f} {:>11.0f}%".format(name, med * 1e3, mn * 1e3, 100 * med / mine_med))
    print()
    notes = timer.notes([("fairseq_srupp step", mine_med, mine_min), ("sru.SRUpp step", ref_med, ref_min)]
                        + [(name, med, mn) for name, med, mn in breakdown])
    for line in notes:
        print(line)
    if breakdown:
        print("stack fwd+bwd, reference / cpu recurrence: {:.1f}x".format(breakdown[1][1] / breakdown[0][1]))
    print("fairseq_srupp / sru.SRUpp training tokens/s: {:.1f}x".format(ref_med / mine_med))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = make_train_step(mine, inputs, targets, attn_mask, args.lr)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
