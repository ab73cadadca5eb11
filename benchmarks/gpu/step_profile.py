"""Where a training step's time goes: one model of train_bench.py under torch.profiler, by kind of work.

    python benchmarks/gpu/step_profile.py --models srupp_lm sru_reference --dtype bfloat16

Each model is built and trained exactly as ``train_bench.py`` measures it (same shapes, loop and
``FAIRSEQ_SRUPP_ATTENTION``), warmed up, then --steps updates run under the profiler. On a GPU every
kernel, copy and memset is counted at its device time; on the CPU every operator at its self time.
Each is put in one category by its name (``CATEGORIES``, the first pattern that matches):

* ``matmul``: cuBLAS / CUTLASS GEMMs (``aten::mm`` … on the CPU);
* ``attention``: flash / memory-efficient SDPA kernels, and the softmax of the additive-mask path and
  of the score product (whose two matrix products count as ``matmul``);
* ``recurrence``: this project's ``srupp_forward_* / srupp_backward_*`` kernels, ``sru``'s
  ``sru_cuda_*`` ones, the custom op on the CPU;
* ``layer_norm``, ``dropout``, ``loss`` (log-softmax and NLL of the output layer), ``optimizer``
  (RAdam, clipping, the scaler: ``multi_tensor_apply`` / foreach kernels), ``copy/cast``
  (copies, casts, concatenation, fills);
* ``elementwise/other``: the rest (residuals, scaling, the reductions of backward).

Reported per step: the profiled wall time, the device's busy time (the union of its kernels' intervals;
wall minus busy is time the GPU waited for the CPU to launch work), the number of kernels launched,
each category's time and share of the busy time, and the longest kernels by name. The MFU target
needs matmul and attention to dominate; this says what stands in their way.
"""
import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_bench  # noqa: E402
from fairseq_srupp.bench.generation import write_dictionary  # noqa: E402

# (category, pattern over the lower-cased kernel / operator name); the first that matches wins.
CATEGORIES = [
    ("recurrence", r"srupp_(forward|backward)|elementwise_recurrence|sru_cuda|sru_(forward|backward)"),
    ("loss", r"log_?softmax|nll_?loss|cross_entropy"),
    ("attention", r"fmha|flash|attention|softmax"),
    ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|\baten::(mm|bmm|addmm|addmm_|matmul|baddbmm)$"),
    ("layer_norm", r"layer_?norm|gammabeta"),
    ("dropout", r"dropout|bernoulli|philox"),
    ("optimizer", r"multi_tensor|foreach|adam|clip_grad|amp_update|unscale|non_finite|norm"),
    ("copy/cast", r"copy|memcpy|memset|\bcat\b|catarray|fill|clone|contiguous"),
]
OTHER = "elementwise/other"


def category(name):
    """The category of a kernel or operator name (see CATEGORIES)."""
    lowered = name.lower()
    return next((cat for cat, pattern in CATEGORIES if re.search(pattern, lowered)), OTHER)


def busy_us(intervals):
    """Length of the union of (start, end) intervals: time at least one of them was running."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def device_work(events, cuda):
    """[(name, start µs, end µs)] of the work to attribute: device kernels / copies / memsets on a GPU, else
    CPU operators at their self time (as (name, 0, self µs): operators nest, so only self time adds up)."""
    if cuda:
        return [(e.name, e.time_range.start, e.time_range.end) for e in events
                if e.device_type == DeviceType.CUDA and not e.is_user_annotation  # annotations span kernels
                and e.time_range.end > e.time_range.start]
    return [(e.name, 0.0, e.self_cpu_time_total) for e in events
            if e.device_type == DeviceType.CPU and not e.is_async and e.self_cpu_time_total > 0
            and not e.name.startswith(("ProfilerStep", "## "))]


def breakdown(work, steps, wall_ms, cuda, top=12):
    """Per-step figures of the profiled ``work`` (see :func:`device_work`) over ``steps`` updates."""
    by_category, by_name = {}, {}
    for name, start, end in work:
        for table, key in ((by_category, category(name)), (by_name, name)):
            entry = table.setdefault(key, [0.0, 0])
            entry[0] += end - start
            entry[1] += 1
    busy = busy_us([(s, e) for _, s, e in work]) if cuda else sum(e - s for _, s, e in work)
    busy_ms = busy / 1000 / steps

    def rows(table, limit=None):
        ordered = sorted(table.items(), key=lambda kv: -kv[1][0])[:limit]
        return [{"name": key, "ms_per_step": us / 1000 / steps, "calls_per_step": calls / steps,
                 "share": us / 1000 / steps / busy_ms if busy_ms else None} for key, (us, calls) in ordered]

    return {"steps": steps, "wall_ms_per_step": wall_ms, "busy_ms_per_step": busy_ms,
            "idle_share": max(0.0, 1 - busy_ms / wall_ms) if cuda and wall_ms else None,
            "calls_per_step": len(work) / steps, "what": "GPU kernels" if cuda else "CPU operators (self time)",
            "categories": rows(by_category), "top": rows(by_name, top)}


def profile_model(name, dtype_name, args, dict_dir, device, steps=3, warmup=2):
    """Profile ``steps`` training updates of train_bench's model ``name`` after ``warmup`` ones."""
    cuda = device.type == "cuda"
    with train_bench.model_switches(name):
        model, step, _, losses = train_bench.training_step(name, dtype_name, args, dict_dir, device)
        for _ in range(warmup):
            step()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            wall_ms = (time.perf_counter() - t0) * 1000 / steps
        work = device_work(prof.events(), cuda)
        if not work:  # e.g. CUPTI missing: the profiler then records CPU events only
            raise RuntimeError("the profiler recorded no {}".format("GPU kernels" if cuda else "operators"))
        out = breakdown(work, steps, wall_ms, cuda)
    out.update(model=name, dtype=dtype_name, last_loss=losses[-1].item())
    del model, step
    return out


def format_profile(result):
    """Markdown lines for one :func:`profile_model` result."""
    idle = result["idle_share"]
    lines = ["{} {}: {:.1f} ms per step profiled, {} busy {:.1f} ms{}, {:,.0f} {} per step.".format(
        result["model"], result["dtype"], result["wall_ms_per_step"], result["what"], result["busy_ms_per_step"],
        "" if idle is None else " (idle {:.0%})".format(idle), result["calls_per_step"],
        "operator calls" if idle is None else "kernels"), "",
        "| category | ms/step | share | calls/step |", "| --- | --- | --- | --- |"]
    lines += ["| {name} | {ms_per_step:.2f} | {share:.1%} | {calls_per_step:,.0f} |".format(**r)
              for r in result["categories"]]
    lines += ["", "| longest {} | ms/step | share | calls/step |".format("operators" if idle is None else "kernels"),
              "| --- | --- | --- | --- |"]
    lines += ["| `{}` | {:.2f} | {:.1%} | {:,.0f} |".format(
        r["name"][:110].replace("|", "/"), r["ms_per_step"], r["share"], r["calls_per_step"]) for r in result["top"]]
    return lines


def run(args, models, dtype_name, steps=3, on_result=None):
    """Profiles of ``models`` in ``dtype_name``; a model that fails is recorded with its error.
    ``on_result(partial result)`` is called after each model (to keep what was measured if the caller is
    stopped)."""
    device = torch.device(args.device)
    profiles, errors = [], []
    with tempfile.TemporaryDirectory(prefix="srupp_step_profile_") as tmp:
        write_dictionary(tmp, args.vocab)
        for name in models:
            try:
                profiles.append(profile_model(name, dtype_name, args, tmp, device, steps))
            except Exception as err:  # noqa: BLE001  (one model failing must not hide the others)
                errors.append(train_bench.failure(name, dtype_name, err))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if on_result is not None:
                on_result({"profiles": list(profiles), "errors": list(errors)})
    return {"profiles": profiles, "errors": errors}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=train_bench.MODELS, default=["srupp_lm"])
    p.add_argument("--dtype", choices=train_bench.DTYPES, default="bfloat16")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", dest="json_out")
    args, rest = p.parse_known_args(argv)
    bench_args = train_bench.parse_args(rest)  # shapes and device, as train_bench takes them
    if bench_args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs a CUDA GPU (use --device cpu with tiny --srupp sizes)")
    result = run(bench_args, args.models, args.dtype, args.steps)
    for prof in result["profiles"]:
        print("\n".join(format_profile(prof)) + "\n")
    for err in result["errors"]:
        print("{model} {dtype} failed: {error}".format(**err))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
