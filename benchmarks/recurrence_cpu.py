"""Benchmark: forward + backward of the SRU++ elementwise recurrence on CPU.

What is measured
    One "call" is a full training use of the recurrence (spec §1.4):

        h, c_last = recurrence(U, x, weight_c, bias, c0, mask_c)
        torch.autograd.backward([h, c_last], [grad_h, grad_c_last])

    with gradients w.r.t. U, x (k=3 only), weight_c, bias and c0, and a fixed random upstream
    gradient on h and c_last. Two implementations are timed on identical inputs:

    * fast:      ``fairseq_srupp.ops.recurrence.elementwise_recurrence_cpu``
                 (the ``fairseq_srupp::elementwise_recurrence`` custom op on CPU: fused C++
                 loop, hand-written backward)
    * reference: ``fairseq_srupp.ops.recurrence.elementwise_recurrence_ref``
                 (pure-PyTorch time loop, autograd)

    Each is run ``--warmup`` / ``--ref-warmup`` times untimed, then ``--repeats`` times timed with
    ``time.perf_counter`` (fewer if ``--time-budget`` runs out); the median is reported as ms per
    call, together with tokens/s (L*B tokens per call) and the speed-up of the fast path over
    the reference.

    The fast path's achieved memory traffic (GB/s) is an *estimate*: the bytes the fused kernels
    must stream per call (forward reads U, x and writes h and every cell state; backward reads
    U, x, the cell states and grad_h and writes grad_U and grad_x), divided by the median time.
    Parameter-sized tensors (2d or B*d elements) are ignored. Before timing, the gradients of the
    two implementations are compared and the largest absolute difference is printed.

    The reference's backward is dominated by autograd's select-backward, which materialises a
    full-size zero gradient of U (and x) for every per-step slice, so its cost grows like L^2 and
    depends strongly on how the allocator serves those multi-MB buffers (fresh pages from the
    kernel are far slower than reused heap). Its timing is therefore noisier than the fast path's.

    To show where the fast path's time goes, the C++ forward and backward kernels are also timed
    alone (the rest is autograd / Python / dtype-and-contiguity copies), and, when --threads > 1,
    the fast path is timed again with one thread to show how it scales.

How to run (glibc malloc thresholds are tuned first, see tune_malloc / --no-malloc-tuning)
    .venv/bin/python benchmarks/recurrence_cpu.py                      # d=256 L=256 B=8 k=3 fp32
    .venv/bin/python benchmarks/recurrence_cpu.py --k 4 --dtype float64 --threads 1

The first run may compile the C++ extension (about a minute, cached afterwards); that happens
before anything is timed.
"""
import argparse
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
logging.basicConfig(level=logging.WARNING)  # before fairseq's imports, which log at INFO

from bench_timing import Timer, default_threads, tune_malloc  # noqa: E402
from fairseq_srupp.cli_args import non_negative_int, positive_float, positive_int  # noqa: E402
from fairseq_srupp.ops.recurrence import (  # noqa: E402
    elementwise_recurrence_cpu,
    elementwise_recurrence_ref,
)
from fairseq_srupp.ops.recurrence.cpu import load_cpu_extension  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Sizes and counts are checked here, so that an impossible one ends in one argparse error line.
    p.add_argument("--d", type=positive_int, default=256, help="hidden size d (default 256)")
    p.add_argument("--length", "-L", type=positive_int, default=256, help="sequence length L (default 256)")
    p.add_argument("--batch", "-B", type=positive_int, default=8, help="batch size B (default 8)")
    p.add_argument("--k", type=int, choices=(3, 4), default=3, help="U blocks per unit (default 3)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="if > 0, apply a variational dropout mask_c with this rate (default 0)")
    p.add_argument("--threads", type=positive_int, default=default_threads(),
                   help="torch.set_num_threads (default: all available cores)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed iterations of the fast path (default 3)")
    p.add_argument("--ref-warmup", type=non_negative_int, default=1,
                   help="untimed iterations of the reference path, besides the gradient check (default 1)")
    p.add_argument("--repeats", type=positive_int, default=50, help="timed iterations of the fast path (default 50)")
    p.add_argument("--ref-repeats", type=positive_int, default=15,
                   help="timed iterations of the reference path (default 15)")
    p.add_argument("--time-budget", type=positive_float, default=45,
                   help="seconds per measurement after which no more repeats are started "
                        "(at least 3 are always taken; default 45)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's default mmap / trim thresholds (see tune_malloc)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1) (the kept units are scaled by 1 / (1 - rate)), got {}".format(
            args.dropout))
    return args


def make_inputs(args, dtype):
    g = torch.Generator().manual_seed(args.seed)
    L, B, d, k = args.length, args.batch, args.d, args.k

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    inputs = {
        "U": rnd(L, B, k * d),
        "x": rnd(L, B, d) if k == 3 else None,
        "weight_c": rnd(2 * d, scale=0.5),
        "bias": rnd(2 * d, scale=0.5),
        "c0": rnd(B, d),
    }
    mask_c = None
    if args.dropout > 0:
        keep = (torch.rand(B, d, generator=g, dtype=torch.float64) >= args.dropout).to(dtype)
        mask_c = keep / (1 - args.dropout)
    grads = {"h": rnd(L, B, d), "c_last": rnd(B, d)}
    return inputs, mask_c, grads


def leaves(inputs):
    """Fresh leaf copies requiring grad (so one path's .grad never leaks into the other)."""
    return {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inputs.items()}


def step(fn, tensors, mask_c, grads):
    for t in tensors.values():
        if t is not None:
            t.grad = None
    h, c_last = fn(tensors["U"], tensors["x"], tensors["weight_c"], tensors["bias"], tensors["c0"], mask_c)
    torch.autograd.backward([h, c_last], [grads["h"], grads["c_last"]])


def time_path(timer, fn, tensors, mask_c, grads, warmup, repeats):
    return timer.time_fn(lambda: step(fn, tensors, mask_c, grads), warmup, repeats)


def kernel_breakdown(timer, inputs, mask_c, grads, k, warmup, repeats):
    """Median/min seconds of the C++ forward and backward kernels alone (no autograd, no copies)."""
    ext = load_cpu_extension()
    U, x, wc, b, c0 = (inputs[n] for n in ("U", "x", "weight_c", "bias", "c0"))
    x = x if k == 3 else None
    _, c_all = ext.forward(U, x, wc, b, c0, mask_c, None, k)
    fwd = timer.time_fn(lambda: ext.forward(U, x, wc, b, c0, mask_c, None, k), warmup, repeats)
    bwd = timer.time_fn(
        lambda: ext.backward(U, x, wc, b, c0, mask_c, None, c_all, grads["h"], grads["c_last"], k),
        warmup, repeats,
    )
    return fwd, bwd


def traffic_bytes(L, B, d, k, elem):
    """Bytes the fused forward + backward must move per call (large tensors only)."""
    n = L * B * d
    skip = 1 if k == 3 else 0  # x is a separate input only when k == 3
    fwd = (k + skip) * n + 2 * n  # read U (+x); write h, c_all
    bwd = (k + skip) * n + 2 * n + (k + skip) * n  # read U (+x), c_all, grad_h; write grad_U (+grad_x)
    return (fwd + bwd) * elem, fwd * elem, bwd * elem


def main(argv=None):
    args = parse_args(argv)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    timer = Timer(args.time_budget)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    L, B, d, k = args.length, args.batch, args.d, args.k
    tokens = L * B

    load_cpu_extension()  # compile / load outside the timed region
    inputs, mask_c, grads = make_inputs(args, dtype)

    # Sanity check: both paths give the same gradients on these inputs.
    fast_t, ref_t = leaves(inputs), leaves(inputs)
    step(elementwise_recurrence_cpu, fast_t, mask_c, grads)
    step(elementwise_recurrence_ref, ref_t, mask_c, grads)
    max_diff = max(
        (fast_t[n].grad - ref_t[n].grad).abs().max().item() for n in fast_t if fast_t[n] is not None
    )

    fast_med, fast_min = time_path(timer, elementwise_recurrence_cpu, fast_t, mask_c, grads, args.warmup,
                                   args.repeats)
    ref_med, ref_min = time_path(timer, elementwise_recurrence_ref, ref_t, mask_c, grads, args.ref_warmup,
                                 args.ref_repeats)
    (fwd_med, fwd_min), (bwd_med, bwd_min) = kernel_breakdown(
        timer, inputs, mask_c, grads, k, args.warmup, args.repeats
    )
    one_thread = None
    if args.threads > 1:  # does the fast path actually scale with threads?
        torch.set_num_threads(1)
        one_thread = time_path(timer, elementwise_recurrence_cpu, fast_t, mask_c, grads, args.warmup,
                               args.repeats)
        torch.set_num_threads(args.threads)

    elem = torch.empty((), dtype=dtype).element_size()
    total, fwd_b, bwd_b = traffic_bytes(L, B, d, k, elem)

    print("SRU++ elementwise recurrence, forward + backward on CPU")
    print(
        "d={} L={} B={} k={} dtype={} dropout={} threads={} warmup={}/{} repeats={}/{} (fast/ref)".format(
            d, L, B, k, args.dtype, args.dropout, torch.get_num_threads(), args.warmup, args.ref_warmup,
            args.repeats, args.ref_repeats,
        )
    )
    print("malloc tuning (see --no-malloc-tuning): {}".format("on" if malloc_tuned else "off"))
    print("max |grad_fast - grad_ref| over U, x, weight_c, bias, c0: {:.2e}".format(max_diff))
    print()
    header = "{:<11} {:>12} {:>12} {:>14}".format("path", "median ms", "min ms", "tokens/s")
    print(header)
    print("-" * len(header))
    for name, med, mn in (("fast (cpu)", fast_med, fast_min), ("reference", ref_med, ref_min)):
        print("{:<11} {:>12.3f} {:>12.3f} {:>14,.0f}".format(name, med * 1e3, mn * 1e3, tokens / med))
    print()
    print("fast path breakdown (median ms): C++ forward kernel {:.3f}, C++ backward kernel {:.3f}, "
          "autograd/Python/copies {:.3f}".format(fwd_med * 1e3, bwd_med * 1e3,
                                                 (fast_med - fwd_med - bwd_med) * 1e3))
    if one_thread is not None:
        print("fast path with 1 thread: {:.3f} ms -> {}-thread scaling {:.2f}x".format(
            one_thread[0] * 1e3, args.threads, one_thread[0] / fast_med))
    print(
        "fast path memory traffic (estimate): {:.1f} MB/call (fwd {:.1f} + bwd {:.1f}) -> {:.2f} GB/s".format(
            total / 1e6, fwd_b / 1e6, bwd_b / 1e6, total / fast_med / 1e9
        )
    )
    for line in timer.notes([("fast (cpu)", fast_med, fast_min), ("reference", ref_med, ref_min)]):
        print(line)
    print("fast / reference speed-up: {:.1f}x".format(ref_med / fast_med))


if __name__ == "__main__":
    main()
