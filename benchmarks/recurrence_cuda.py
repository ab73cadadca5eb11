"""GPU benchmark of the SRU++ elementwise recurrence, forward + backward (needs CUDA and CuPy; sru optional).

At the enwik8 base shape (L=1024, d=3072, k=3) for every batch in --batches and dtype in --dtypes it
times, with CUDA events (median of --repeats after --warmup calls), one forward + backward with random
upstream gradients of h and of the last cell state (gradients of U, x, weight_c, bias, c0):

* ``fairseq_srupp``: this package's CuPy kernel (``elementwise_recurrence_cuda``);
* ``sru``: ``sru==3.0.0.dev6``'s own CUDA kernel (``sru.ops.elementwise_recurrence_gpu`` with
  ``amp_recurrence_fp16``: fp16 inputs run in fp16, fp32 and bf16 inputs in fp32 after a cast, as in
  a model trained with sru), when sru imports and its kernel compiled;
* ``reference``: the pure-PyTorch loop, only with --reference (slow).

and reports ms per call, µs per time step (the recurrence is a chain over time: at small B·d its
cost is the latency of one step), the bytes the kernels must move over the time taken, as a fraction
of the device-to-device copy bandwidth measured on the same GPU, and sru's time over ours.

With --prefetch it then times, at each of --prefetch-batches (16 and 4), the kernels compiled with each prefetch
depth P (time steps loaded ahead, ``FAIRSEQ_SRUPP_CUDA_PREFETCH``) in three cases: bf16 U and x;
autocast's bf16 U next to an fp32 x, read as it is; and the same cast to fp32 first (the path
before the kernels took mixed storage: a copy of U, and grad_U cast back), with the bytes each
moves, and names the fastest P per case and batch. With --blocks it times the first two cases at
--prefetch-batches with each threads-per-block (``FAIRSEQ_SRUPP_CUDA_BLOCK``; ``auto``: the launch's
own choice, spread over the SMs) at the default P, with --l2-ahead with the kernels asking L2 for
each step's inputs that many steps ahead (``FAIRSEQ_SRUPP_CUDA_L2_AHEAD``; 0: never), and with
--stage-steps with the kernels that copy their inputs into shared memory (cp.async) that many time steps
a stage (``FAIRSEQ_SRUPP_CUDA_STAGE_STEPS``; 0: the register ring), with each one's GB/s.

    python benchmarks/recurrence_cuda.py [--batches 4 16 32] [--dtypes float32 float16 bfloat16] [--prefetch 1 2 4 8]
                                         [--blocks auto 256 128 64] [--l2-ahead 0 16 32] [--stage-steps 0 4 8 16]

``benchmarks/gpu/run_all.sh`` runs the same measurement as step 3 of the GPU kit.
"""
import argparse
import contextlib
import os
import statistics

import torch

from fairseq_srupp.bench.paper_sru import import_sru
from fairseq_srupp.ops.recurrence import elementwise_recurrence_cuda, elementwise_recurrence_ref
from fairseq_srupp.ops.recurrence.cuda_host import HOST_SM_COUNT
from fairseq_srupp.ops.recurrence.cupy_kernel import (BLOCK_ENV, DEFAULT_L2_AHEAD, DEFAULT_PREFETCH,
                                                      DEFAULT_STAGE_STEPS, L2_AHEAD_ENV, PREFETCH_ENV, STAGE_ENV,
                                                      sm_count, threads_per_block)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cuda_time_ms(fn, warmup, repeats):
    """Median milliseconds of ``fn`` measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes=1 << 30, repeats=10):
    """Device-to-device copy bandwidth in GB/s, counting the bytes read and the bytes written."""
    src = torch.empty(nbytes // 4, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), 3, repeats)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def sru_recurrence():
    """(function with our signature running sru's CUDA kernel, None) or (None, why it is unavailable)."""
    try:
        _, failed = import_sru()
        from sru.ops import elementwise_recurrence_gpu
    except Exception as err:  # sru missing, or its C++ build failed
        return None, "sru unavailable: {}".format(err)
    # sru swaps in a dummy op when its CUDA build fails and only warns: that must not pass as timed.
    if failed:
        return None, "sru's CUDA kernel did not compile: {}".format(failed)

    def run(U, x, weight_c, bias, c0, mask_c=None, mask_pad=None):
        return elementwise_recurrence_gpu(U, x, weight_c, bias, c0, 0, c0.shape[1], False, True, None, mask_c,
                                          mask_pad, True)

    return run, None


def recurrence_inputs(L, B, d, k, dtype, device="cuda", x_dtype=None):
    """Random (U, x, weight_c, bias, c0) and upstream gradients (grad_h, grad_c) of one shape; x in
    ``x_dtype`` (default: U's)."""
    inputs = [torch.randn(L, B, d * k, device=device, dtype=dtype),
              torch.randn(L, B, d, device=device, dtype=x_dtype or dtype),
              torch.rand(2 * d, device=device) * 2 - 1, torch.randn(2 * d, device=device),
              torch.randn(B, d, device=device)]
    grads = (torch.randn(L, B, d, device=device), torch.randn(B, d, device=device))
    return inputs, grads


def recurrence_step(fn, inputs, grads):
    """One forward + backward of ``fn``. The upstream gradients are cast to the outputs' dtypes once, in
    the first (warm-up) call, so that no cast of an (L, B, d) tensor is timed."""
    cast = {}

    def step():
        leaves = [t.detach().requires_grad_() for t in inputs]
        h, c = fn(*leaves)
        if not cast:
            cast.update(h=grads[0].to(h.dtype), c=grads[1].to(c.dtype))
        torch.autograd.backward([h, c], [cast["h"], cast["c"]])
    return step


def kernel_bytes(L, B, d, k, elem, x_elem=None, widen_u=False):
    """Bytes the forward and backward move (per-position tensors only), with U stored in ``elem``
    bytes and x, h and their gradients in ``x_elem`` (default: the same; k=3). ``widen_u``: U is cast
    to fp32 before the kernels (a read and a write of it) and grad_U cast back (another), and the
    kernels then read and write fp32."""
    per_pos = L * B * d
    x_elem = x_elem or elem
    if widen_u:
        return kernel_bytes(L, B, d, k, 4, x_elem) + 2 * per_pos * k * (elem + 4)
    forward = per_pos * (k * elem + x_elem + x_elem + 4)  # read U, x; write h, c (fp32)
    # read U, x, c, grad_h; write grad_U, grad_x
    backward = per_pos * (k * elem + x_elem + 4 + x_elem + k * elem + x_elem)
    return forward + backward


def measure_recurrence(length, hidden, batches, dtypes, warmup=2, repeats=5, copy_gbs=None, reference=False):
    """One row per (dtype, B): milliseconds of each implementation, µs per step, GB/s, fractions, ratio."""
    sru_fn, sru_reason = sru_recurrence()
    k = 3
    rows = []
    for dtype_name in dtypes:
        for B in batches:
            inputs, grads = recurrence_inputs(length, B, hidden, k, DTYPES[dtype_name])
            ours = cuda_time_ms(recurrence_step(elementwise_recurrence_cuda, inputs, grads), warmup, repeats)
            row = {"dtype": dtype_name, "L": length, "B": B, "d": hidden, "fairseq_srupp_ms": ours,
                   "us_per_step": 1000.0 * ours / length}
            row["gbs"] = kernel_bytes(length, B, hidden, k, inputs[0].element_size()) / (ours * 1e-3) / 1e9
            row["of_copy_bandwidth"] = row["gbs"] / copy_gbs if copy_gbs else None
            if sru_fn is not None:
                row["sru_ms"] = cuda_time_ms(recurrence_step(sru_fn, inputs, grads), warmup, repeats)
                row["sru_precision"] = "float16" if dtype_name == "float16" else "float32"
                row["sru_over_ours"] = row["sru_ms"] / ours
            if reference:
                row["reference_ms"] = cuda_time_ms(recurrence_step(elementwise_recurrence_ref, inputs, grads), 1, 3)
            rows.append(row)
            del inputs, grads
            torch.cuda.empty_cache()
    return {"copy_bandwidth_gbs": copy_gbs, "sru": sru_reason or "timed", "rows": rows}


PREFETCH_CASES = (  # (name, U's dtype, x's dtype, U cast to fp32 before the kernels)
    ("bf16 U, bf16 x", torch.bfloat16, torch.bfloat16, False),
    ("bf16 U, fp32 x (autocast, U read as bf16)", torch.bfloat16, torch.float32, False),
    ("bf16 U, fp32 x, U cast to fp32 first (old path)", torch.bfloat16, torch.float32, True),
)


@contextlib.contextmanager
def environment(name, value):
    """``os.environ[name] = str(value)`` inside the block; None leaves it unset there."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = str(value)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def widened_u(fn):
    """``fn`` given an fp32 copy of U: the cast, and that of grad_U back, are part of the timing."""
    def run(U, *rest):
        return fn(U.float(), *rest)
    return run


def measure_prefetch(length, hidden, batches, depths, warmup=2, repeats=5, copy_gbs=None,
                     fn=elementwise_recurrence_cuda, time_ms=cuda_time_ms, device="cuda", save=None):
    """One row per (prefetch depth, batch, case of PREFETCH_CASES), k=3, with the bytes it moves per second;
    the fastest depth per case and batch; autocast's speed-up from reading U as it is (cast-first time /
    uncast time, at the depth fastest for the uncast case). ``save(partial result)`` is called after each
    depth, so a run cut short keeps what it measured."""
    out = {"L": length, "batches": list(batches), "d": hidden, "default_prefetch": DEFAULT_PREFETCH, "rows": [],
           "fastest_prefetch": {}, "autocast_uncast_speedup": {}}
    uncast, cast_first = PREFETCH_CASES[1][0], PREFETCH_CASES[2][0]
    runs = case_runs(length, hidden, batches, PREFETCH_CASES, fn, device)

    def with_speedup(result):
        for batch in batches:
            best = result["fastest_prefetch"]["{}, B={}".format(uncast, batch)]
            ms = {r["case"]: r["ms"] for r in result["rows"] if r["B"] == batch and r["prefetch"] == best}
            result["autocast_uncast_speedup"]["B={}".format(batch)] = ms[cast_first] / ms[uncast]
        if save is not None:
            save(result)

    return sweep_setting(out, "prefetch", PREFETCH_ENV, depths, runs, warmup, repeats, time_ms, with_speedup,
                         row_extra=bandwidth_fields(runs, length, copy_gbs))


def bandwidth_fields(runs, length, copy_gbs):
    """A sweep row's µs per time step, bytes moved (of the run of ``runs`` with its case and batch), GB/s and
    share of the copy bandwidth: ``row_extra`` of :func:`sweep_setting`."""
    moved = {(name, batch): bytes_moved for name, batch, _, bytes_moved in runs}

    def fields(row):
        gbs = moved[row["case"], row["B"]] / (row["ms"] * 1e-3) / 1e9
        return {"us_per_step": 1000.0 * row["ms"] / length, "bytes": moved[row["case"], row["B"]], "gbs": gbs,
                "of_copy_bandwidth": gbs / copy_gbs if copy_gbs else None}
    return fields


def case_runs(length, hidden, batches, cases, fn, device):
    """(case name, B, timed step, bytes moved) for each batch and case of ``cases`` (as PREFETCH_CASES), k=3."""
    runs = []
    for batch in batches:
        for name, u_dtype, x_dtype, widen in cases:
            inputs, grads = recurrence_inputs(length, batch, hidden, 3, u_dtype, device, x_dtype)
            moved = kernel_bytes(length, batch, hidden, 3, inputs[0].element_size(), inputs[1].element_size(), widen)
            runs.append((name, batch, recurrence_step(widened_u(fn) if widen else fn, inputs, grads), moved))
    return runs


def sweep_setting(out, key, env_name, values, runs, warmup, repeats, time_ms, save, row_extra=None):
    """Times every run of ``runs`` (from case_runs) with ``env_name`` set to each of ``values`` ("auto": unset),
    appending rows ``{case, B, key: value, ms, **row_extra(row)}`` to ``out["rows"]`` and naming the fastest
    value per case and batch in ``out["fastest_" + key]``; ``save(out)`` after each value."""
    for value in values:
        with environment(env_name, None if value == "auto" else value):
            for name, batch, step, _ in runs:
                row = {"case": name, "B": batch, key: value, "ms": time_ms(step, warmup, repeats)}
                row.update(row_extra(row) if row_extra else {})
                out["rows"].append(row)
        for name, batch, _, _ in runs:
            best = min((r for r in out["rows"] if r["case"] == name and r["B"] == batch), key=lambda r: r["ms"])
            out["fastest_" + key]["{}, B={}".format(name, batch)] = best[key]
        if save is not None:
            save(out)
    return out


def measure_blocks(length, hidden, batches, block_sizes, warmup=2, repeats=5, fn=elementwise_recurrence_cuda,
                   time_ms=cuda_time_ms, device="cuda", save=None):
    """At the default prefetch depth, the bf16 and autocast (U read as bf16) cases with each threads-per-block
    of ``block_sizes`` (``"auto"``: the launch's own choice, spread over the SMs); the fastest per case and
    batch. ``save(partial result)`` after each size."""
    sms = sm_count(torch.cuda.current_device()) if device == "cuda" else HOST_SM_COUNT
    out = {"L": length, "d": hidden, "prefetch": DEFAULT_PREFETCH, "sm_count": sms, "rows": [], "fastest_block": {}}
    runs = case_runs(length, hidden, batches, PREFETCH_CASES[:2], fn, device)
    return sweep_setting(out, "block", BLOCK_ENV, block_sizes, runs, warmup, repeats, time_ms, save,
                         row_extra=lambda row: {"threads": threads_per_block(row["B"] * hidden, sms)})


def measure_l2_ahead(length, hidden, batches, distances, warmup=2, repeats=5, fn=elementwise_recurrence_cuda,
                     time_ms=cuda_time_ms, device="cuda", save=None):
    """At the default prefetch depth, the bf16 and autocast cases with the kernels asking L2 for each step's
    inputs each of ``distances`` time steps ahead (``FAIRSEQ_SRUPP_CUDA_L2_AHEAD``; 0: never); the fastest
    per case and batch. ``save(partial result)`` after each distance."""
    out = {"L": length, "d": hidden, "prefetch": DEFAULT_PREFETCH, "default_l2_ahead": DEFAULT_L2_AHEAD, "rows": [],
           "fastest_l2_ahead": {}}
    runs = case_runs(length, hidden, batches, PREFETCH_CASES[:2], fn, device)
    return sweep_setting(out, "l2_ahead", L2_AHEAD_ENV, distances, runs, warmup, repeats, time_ms, save)


def measure_staging(length, hidden, batches, stage_steps, warmup=2, repeats=5, copy_gbs=None,
                    fn=elementwise_recurrence_cuda, time_ms=cuda_time_ms, device="cuda", save=None):
    """The bf16 and autocast cases with the kernels fed through shared memory, ``stage_steps`` time steps a stage
    (``FAIRSEQ_SRUPP_CUDA_STAGE_STEPS``; 0: the register ring at the default prefetch depth), with the bytes
    each moves per second; the fastest per case and batch. ``save(partial result)`` after each size."""
    out = {"L": length, "d": hidden, "default_stage_steps": DEFAULT_STAGE_STEPS, "rows": [], "fastest_stage_steps": {}}
    runs = case_runs(length, hidden, batches, PREFETCH_CASES[:2], fn, device)
    return sweep_setting(out, "stage_steps", STAGE_ENV, stage_steps, runs, warmup, repeats, time_ms, save,
                         row_extra=bandwidth_fields(runs, length, copy_gbs))


def format_staging(result):
    """Markdown lines of a measure_staging result."""
    lines = ["Inputs staged in shared memory (time steps a stage; 0: the register ring), L={L} d={d}, default "
             "{default_stage_steps}:".format(**result), "", "| case | B | steps a stage | ms | µs/step | GB/s "
             "| of copy bw |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += ["| {} | {} | {} | {:.3f} | {:.2f} | {:,.0f} | {} |".format(
        r["case"], r["B"], r["stage_steps"], r["ms"], r["us_per_step"], r["gbs"],
        _num(r["of_copy_bandwidth"], "{:.1%}")) for r in result["rows"]]
    return lines + [""] + ["- fastest for {}: **{}**".format(n, v) for n, v in result["fastest_stage_steps"].items()]


def format_l2_ahead(result):
    """Markdown lines of a measure_l2_ahead result."""
    lines = ["Inputs asked of L2 ahead (time steps; 0: never), L={L} d={d}, P={prefetch}, default "
             "{default_l2_ahead}:".format(**result), "", "| case | B | L2 ahead | ms |", "| --- | --- | --- | --- |"]
    lines += ["| {} | {} | {} | {:.3f} |".format(r["case"], r["B"], r["l2_ahead"], r["ms"]) for r in result["rows"]]
    return lines + [""] + ["- fastest for {}: **{}**".format(n, v) for n, v in result["fastest_l2_ahead"].items()]


def format_blocks(result):
    """Markdown lines of a measure_blocks result."""
    lines = ["Threads per block (auto: spread over the {sm_count} SMs), L={L} d={d}, P={prefetch}:".format(**result),
             "", "| case | B | block | threads | ms |", "| --- | --- | --- | --- | --- |"]
    lines += ["| {} | {} | {} | {} | {:.3f} |".format(r["case"], r["B"], r["block"], r["threads"], r["ms"])
              for r in result["rows"]]
    return lines + [""] + ["- fastest block for {}: **{}**".format(n, b) for n, b in result["fastest_block"].items()]


def format_prefetch(result):
    """Markdown lines of a measure_prefetch result."""
    lines = ["Prefetch depth P (time steps loaded ahead), L={L} d={d}, default P={default_prefetch}:".format(**result),
             "", "| case | B | P | ms | µs/step | MB moved | GB/s | of copy bw |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append("| {} | {} | {} | {:.3f} | {:.2f} | {:,.0f} | {:,.0f} | {} |".format(
            r["case"], r["B"], r["prefetch"], r["ms"], r["us_per_step"], r["bytes"] / 1e6, r["gbs"],
            _num(r["of_copy_bandwidth"], "{:.1%}")))
    lines.append("")
    lines += ["- fastest P for {}: **{}**".format(name, p) for name, p in result["fastest_prefetch"].items()]
    lines += ["- autocast, {}: U read as bf16 is {:.2f}x the speed of casting it to fp32 first".format(b, v)
              for b, v in result["autocast_uncast_speedup"].items()]
    return lines


def _num(v, spec):
    return "-" if v is None else spec.format(v)


def format_recurrence(result):
    """Markdown lines of a measure_recurrence result."""
    lines = ["Device-to-device copy: {} GB/s (read + written). sru: {}.".format(
        _num(result["copy_bandwidth_gbs"], "{:,.0f}"), result["sru"]), "",
        "| dtype | B | fairseq_srupp ms | µs/step | GB/s | of copy bw | sru ms (precision) | sru / ours "
        "| reference ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        sru = "-" if r.get("sru_ms") is None else "{:.3f} ({})".format(r["sru_ms"], r["sru_precision"])
        lines.append("| {} | {} | {:.3f} | {:.2f} | {:,.0f} | {} | {} | {} | {} |".format(
            r["dtype"], r["B"], r["fairseq_srupp_ms"], r["us_per_step"], r["gbs"],
            _num(r["of_copy_bandwidth"], "{:.1%}"), sru, _num(r.get("sru_over_ours"), "{:.2f}x"),
            _num(r.get("reference_ms"), "{:.1f}")))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--reference", action="store_true", help="also time the pure-PyTorch loop (slow)")
    parser.add_argument("--prefetch", type=int, nargs="*", default=[],
                        help="prefetch depths to compare (e.g. 1 2 4 8; none: skip the comparison)")
    parser.add_argument("--prefetch-batches", type=int, nargs="+", default=[16, 4],
                        help="batches of the prefetch comparison")
    parser.add_argument("--blocks", nargs="*", default=[], type=lambda v: v if v == "auto" else int(v),
                        help="threads per block to compare at the default prefetch depth (e.g. auto 256 128 64)")
    parser.add_argument("--l2-ahead", nargs="*", default=[], type=int,
                        help="time steps ahead to ask L2 for the inputs, to compare (e.g. 0 16 32)")
    parser.add_argument("--stage-steps", nargs="*", default=[], type=int,
                        help="time steps a stage of the shared-memory kernels holds, to compare (e.g. 0 4 8 16)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU")
    print("GPU: {}".format(torch.cuda.get_device_name()))
    copy_gbs = copy_bandwidth_gbs()
    result = measure_recurrence(args.length, args.hidden, args.batches, args.dtypes, args.warmup, args.repeats,
                                copy_gbs, args.reference)
    print("\n".join(format_recurrence(result)))
    if args.prefetch:
        sweep = measure_prefetch(args.length, args.hidden, args.prefetch_batches, args.prefetch, args.warmup,
                                 args.repeats, copy_gbs)
        print("\n" + "\n".join(format_prefetch(sweep)))
    if args.blocks:
        sizes = measure_blocks(args.length, args.hidden, args.prefetch_batches, args.blocks, args.warmup, args.repeats)
        print("\n" + "\n".join(format_blocks(sizes)))
    if args.l2_ahead:
        l2 = measure_l2_ahead(args.length, args.hidden, args.prefetch_batches, args.l2_ahead, args.warmup, args.repeats)
        print("\n" + "\n".join(format_l2_ahead(l2)))
    if args.stage_steps:
        staging = measure_staging(args.length, args.hidden, args.prefetch_batches, args.stage_steps, args.warmup,
                                  args.repeats, copy_gbs)
        print("\n" + "\n".join(format_staging(staging)))


if __name__ == "__main__":
    main()
