"""Benchmark: CPU training tokens/s of the srupp_lm decoder, eager vs ``torch.compile`` (Inductor).

What is measured
    One training step of the ``srupp_lm`` decoder as the ``srupp_language_modeling`` task runs it
    (carried state and memory from the previous segment, causal mask over [memory; current]):
    zero_grad, forward, cross-entropy, backward, Adam step. The same decoder (same weights) is
    timed eagerly and with ``torch.compile(decoder, dynamic=False)`` (Inductor, the default
    backend). The compiled one first runs two steps (no memory yet, then with memory) that
    include the compilation (their time is printed separately); then both run ``--warmup``
    untimed and ``--repeats`` timed steps, alternating, so load from other processes hits both
    alike. tokens/s = B·L / median step time; the ratio compiled / eager is printed per shape.

Shapes (``--shapes``, default both)
    tiny:           d=64,  proj=32,  2 layers, L=64,  B=8
    srupp_lm_tiny:  d=256, proj=128, 4 layers, L=256, B=16 (the preset and ``make demo``'s batch)

    Compiled and eager logits / gradients differ slightly: Inductor fuses the elementwise work
    and draws its own dropout masks. ``--check`` reruns one step with dropout 0 and prints the
    max differences (equality with a tolerance is asserted by tests/test_compile.py with the
    aot_eager backend, exactly).

How to run
    .venv/bin/python benchmarks/compile_cpu.py                    # both shapes, all cores
    .venv/bin/python benchmarks/compile_cpu.py --shapes tiny --threads 1 --check
"""
import argparse
import copy
import logging
import os
import statistics
import sys
import time
from argparse import Namespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
logging.basicConfig(level=logging.WARNING)  # before fairseq's imports, which log at INFO

from bench_timing import Timer, default_threads, tune_malloc  # noqa: E402
from fairseq.models import ARCH_CONFIG_REGISTRY  # noqa: E402

from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLMConfig  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, proj_size=32, num_layers=2, length=64, batch=8),
    "srupp_lm_tiny": dict(hidden_size=256, proj_size=128, num_layers=4, length=256, batch=16),
}
VOCAB = 205  # enwik8's byte vocabulary


class Dictionary(list):
    def pad(self):
        return 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["tiny", "srupp_lm_tiny"])
    p.add_argument("--threads", type=int, default=default_threads(), help="torch.set_num_threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant, after the compiling ones (default 3)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout and attention dropout (default: the srupp_lm_tiny preset's 0.1)")
    p.add_argument("--check", action="store_true", help="print compiled-vs-eager differences with dropout 0")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_decoder(shape, dropout=None):
    args = Namespace(hidden_size=shape["hidden_size"], proj_size=shape["proj_size"], num_layers=shape["num_layers"])
    if dropout is not None:
        args.dropout = args.attn_dropout = dropout
    ARCH_CONFIG_REGISTRY["srupp_lm_tiny"](args)  # the tiny preset's remaining fields (dropout 0.1, ...)
    return SRUppDecoder(SRUppLMConfig.from_namespace(args), Dictionary(range(VOCAB)))


def make_train_step(decoder, forward, shape, seed):
    """A closure running one stateful training step on the next segment of B random streams."""
    generator = torch.Generator().manual_seed(seed)
    stream = torch.randint(4, VOCAB, (shape["batch"], 64 * shape["length"] + 1), generator=generator)
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    carry = {"key": "train", "reset": False, "mask": "causal", "window": shape["length"]}
    position = [0]
    decoder.train()

    def step():
        start = position[0] % (stream.shape[1] - shape["length"] - 1)
        tokens = stream[:, start:start + shape["length"]]
        target = stream[:, start + 1:start + shape["length"] + 1]
        position[0] += shape["length"]
        opt.zero_grad(set_to_none=True)
        logits = forward(tokens, carry=carry)[0]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return step


def time_alternating(fns, warmup, repeats):
    """(median, min) seconds per callable, calling them in turn so that a busy machine slows all
    of them alike (the CPU benchmarks here often share their cores)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - t0)
    return [(statistics.median(t), min(t)) for t in times]


def check(shape, seed):
    """Max |compiled − eager| of logits and gradients for one step without dropout."""
    torch.manual_seed(seed)
    decoder = build_decoder(shape, dropout=0.0).train()
    tokens = torch.randint(4, VOCAB, (shape["batch"], shape["length"]))
    results = []
    for forward in (torch.compile(decoder, dynamic=False), decoder):
        decoder.zero_grad()
        logits = forward(tokens)[0]
        logits.square().mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in decoder.parameters()]))
    (out_c, grads_c), (out_e, grads_e) = results
    worst = max((a - b).abs().max().item() / (b.abs().max().item() + 1e-12) for a, b in zip(grads_c, grads_e))
    return (out_c - out_e).abs().max().item(), worst


def main(argv=None):
    args = parse_args(argv)
    malloc_tuned = tune_malloc()
    torch.set_num_threads(args.threads)
    print("torch {}, {} thread(s), malloc tuning {}".format(torch.__version__, args.threads,
                                                          "on" if malloc_tuned else "unavailable"))
    rows = []
    for name in args.shapes:
        shape = SHAPES[name]
        torch.manual_seed(args.seed)
        eager_decoder = build_decoder(shape, args.dropout)
        compiled_decoder = copy.deepcopy(eager_decoder)
        tokens = shape["batch"] * shape["length"]

        eager_step = make_train_step(eager_decoder, eager_decoder, shape, args.seed)
        compiled = torch.compile(compiled_decoder, dynamic=False)  # one static graph per segment shape
        compiled_step = make_train_step(compiled_decoder, compiled, shape, args.seed)
        t0 = time.perf_counter()
        compiled_step()  # first segment: no memory yet
        compiled_step()  # with memory: the graph every later step reuses
        compile_s = time.perf_counter() - t0
        # Alternating steps, so a busy machine slows both variants alike.
        (eager_med, eager_min), (compiled_med, compiled_min) = time_alternating(
            [eager_step, compiled_step], args.warmup, args.repeats)

        rows += [(name + " eager", eager_med, eager_min), (name + " compiled", compiled_med, compiled_min)]
        print("{:14s} B={} L={} d={} proj={} layers={}: eager {:8.0f} tok/s, compiled {:8.0f} tok/s, "
              "compiled/eager = {:.2f}x (first two compiled steps incl. compilation: {:.1f} s)".format(
                  name, shape["batch"], shape["length"], shape["hidden_size"], shape["proj_size"],
                  shape["num_layers"], tokens / eager_med, tokens / compiled_med, eager_med / compiled_med,
                  compile_s))
        if args.check:
            out_diff, grad_rel = check(shape, args.seed)
            print("{:14s} dropout 0: max |logits diff| {:.2e}, max relative gradient diff {:.2e}".format(
                name, out_diff, grad_rel))
    for line in Timer().notes(rows):
        print(line)


if __name__ == "__main__":
    main()
