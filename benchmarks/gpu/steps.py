"""The steps of the GPU kit, one per call:  python benchmarks/gpu/steps.py STEP --json OUT.json [--dry-run]

Each step writes ``{"status": "ok" | "failed" | "skipped", "reason": str | None, "results": ...,
"markdown": [lines]}`` to --json and exits 0; a step that crashes exits non-zero, which ``run_all.py``
reports as a failure. Steps made of several runs save what they have after each run, so a step stopped
at its time limit (``SRUPP_GPU_KIT_DEADLINE``, epoch seconds, set by run_all.py) still reports it.
To check the reporting: ``SRUPP_GPU_KIT_FAIL=step[,step]`` makes the named steps crash on purpose,
``SRUPP_GPU_KIT_HANG=step[,step]`` makes them save a partial result and hang.

With --dry-run (a machine without a GPU) every step runs at tiny size: the kernel tests are cut to
the dispatch tests, the fairseq CLI runs fp32 on the CPU, the recurrence and training benchmarks run
their code on CPU tensors and report themselves skipped (their numbers are no measurement), and the
generation benchmark runs its CLI on the CPU.
"""
import argparse
import concurrent.futures
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

FAIL_ENV = "SRUPP_GPU_KIT_FAIL"
COMPILE_ENV = "SRUPP_GPU_KIT_COMPILE"  # "1": step 4 also times srupp_lm under torch.compile (run_all.py --compile)
HANG_ENV = "SRUPP_GPU_KIT_HANG"
DEADLINE_ENV = "SRUPP_GPU_KIT_DEADLINE"
_json_path = None  # set by main: where save() writes
NO_GPU = "no CUDA GPU (dry run): ran at tiny size on the CPU to check the code path; the figures are no measurement"
# "nan"/"inf" included, so a non-finite loss is seen rather than skipped by the pattern.
TRAIN_LOSS_ANY = re.compile(r"\| train_inner \|.* loss=([-+0-9.eE]+|nan|inf)")


def result(status, results=None, markdown=(), reason=None):
    return {"status": status, "reason": reason, "results": results, "markdown": list(markdown)}


def target(goal, value, met_when, fmt="{:.2f}"):
    """One of issue 11's speed targets: the goal in words, the measured value and whether it is met
    (None when there is no figure)."""
    return {"target": goal, "value": None if value is None else fmt.format(value),
            "met": None if value is None else bool(met_when(value))}


def find(rows, **match):
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), {})


def save(out):
    """Write a step's (possibly partial) result where run_all.py reads it; return it."""
    if _json_path is not None:  # atomically: the step may be killed at its time limit at any moment
        tmp = Path(_json_path + ".tmp")
        tmp.write_text(json.dumps(out, indent=1, default=str))
        os.replace(tmp, _json_path)
    return out


def seconds_left():
    deadline = os.environ.get(DEADLINE_ENV)
    return float(deadline) - time.time() if deadline else float("inf")


# --------------------------------------------------------------------------------------- 0


def environment(dry_run):
    """Versions of Python, the framework and the project's dependencies; the GPU's properties."""
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    for dist in ("numpy", "cupy-cuda13x", "cupy-cuda12x", "fairseq-fixed", "fairseq", "sru", "hydra-core",
                 "omegaconf", "triton", "fairseq-srupp"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        from train_bench import peak_bf16_tflops

        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count, capability="{}.{}".format(props.major, props.minor),
                    peak_bf16_tflops=peak_bf16_tflops(props.name))
        try:  # the driver and the clocks as the card was found (never changed here)
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit",
                 "--format=csv,noheader"], stdout=subprocess.PIPE, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            info["nvidia_smi"] = "unavailable: {}".format(err)
    md = ["| | |", "| --- | --- |"] + ["| {} | {} |".format(k, v) for k, v in info.items()]
    return result("ok", info, md)


# --------------------------------------------------------------------------------------- 1


# Step 1's pytest runs, in order: the newer CUDA-graph decoding first (TokenStepper, then fairseq's beam
# search through graphs: about 10 s), the update's CUDA paths (FusedRAdam's fused kernel and the batched
# FP16Optimizer passes against torch's RAdam and fairseq's loops, in one process: a few seconds), then the
# kernel's parity tests (about 100 s on the H100). Each is counted and saved as it ends, so a run stopped for
# time keeps the others' counts. fairseq-train --fp16 / --bf16 are step 2's (side by side there; 50 s here).
# A run names one test file, or several (separated by spaces) for one pytest process.
KERNEL_TEST_RUNS = (("tests/test_token_stepper.py", "gpu_graph"),  # its CPU tests are CI's (and compile the CPU op)
                    ("tests/test_generator_decoding.py", "gpu"),
                    ("tests/test_optim.py tests/test_batched_update.py", "gpu"),
                    ("tests/test_cuda_kernel.py", "not fairseq_train"))


def case_counts(cases):
    """tests / failures / errors / skipped, the time, the failed tests and the slowest five of JUnit testcases."""
    counts = {"tests": len(cases), "failures": 0, "errors": 0, "skipped": 0, "seconds": 0.0, "failed": []}
    for case in cases:
        tags = {child.tag for child in case}
        counts["failures"] += "failure" in tags
        counts["errors"] += "error" in tags
        counts["skipped"] += "skipped" in tags
        counts["seconds"] += float(case.get("time", 0))
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            counts["failed"].append({"test": case.get("name"), "message": (bad.get("message") or "")[:300]})
    slowest = sorted(((float(c.get("time", 0)), c.get("name")) for c in cases), reverse=True)[:5]
    counts["slowest"] = [{"test": name, "seconds": t} for t, name in slowest]
    return counts


def run_pytest(runs, select, tmp):
    """One pytest process over the test files of ``runs`` (each a run's key: one or more test files separated
    by spaces; ``-k select``), stopped a few seconds before the step's deadline. Returns each run's counts
    from the JUnit XML (the process's exit status included), or None and why it gave none."""
    files = [f for run in runs for f in run.split()]
    junit = Path(tmp) / (Path(files[0]).stem + ".xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "--junitxml", str(junit),
           "-k", select]
    left = seconds_left() - 3
    try:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=None if left == float("inf") else max(left, 1))
    except subprocess.TimeoutExpired as stopped:
        print(stopped.stdout or "", flush=True)
        return None, "{}: stopped at the step's time limit".format(" ".join(runs))
    print(proc.stdout, flush=True)
    if not junit.exists():
        return None, "{}: pytest wrote no report (exit status {}): {}".format(
            " ".join(runs), proc.returncode, proc.stdout.strip().splitlines()[-1:])
    # A testcase's classname is the file's dotted path (a collection error's is empty, its name the file's).
    run_of = {Path(f).stem: run for run in runs for f in run.split()}
    cases = {run: [] for run in runs}
    for case in ET.parse(junit).getroot().iter("testcase"):
        stems = [part for part in (case.get("classname") or case.get("name") or "").split(".") if part in run_of]
        for run in ([run_of[stems[0]]] if stems else runs):  # unplaceable: counted against every run
            cases[run].append(case)
    return {run: dict(case_counts(found), exit_status=proc.returncode) for run, found in cases.items()}, None


def kernel_tests(dry_run):
    """pytest tests/test_token_stepper.py and tests/test_generator_decoding.py (CUDA-graph decoding),
    tests/test_optim.py and tests/test_batched_update.py (the update) and tests/test_cuda_kernel.py (kernel
    parity), counted from their JUnit XML. On a GPU a skipped test is a failure: it means the checks did not
    run. On a GPU each run is a process of its own (a CUDA fault ends its process); a dry run selects one quick
    test of each and runs them in one process (each pytest process costs seconds of imports), through the same
    counting."""
    quick = ("modes_and_misuse", "gradients_or_dropout", "takes_the_fused_kernel or bad_switch_value", "dispatch_choice")
    assert len(quick) == len(KERNEL_TEST_RUNS)
    paths = [path for path, _ in KERNEL_TEST_RUNS]
    batches = [(paths, " or ".join(quick))] if dry_run else [
        ([path], select) for path, select in KERNEL_TEST_RUNS]
    out, md, problems = {"runs": {}}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (runs, select) in enumerate(batches):
            counted, why = run_pytest(runs, select, tmp)
            if counted is None:  # once for the process, whose runs all go without counts
                problems.append(why)
            for path in runs:
                counts = None if counted is None else counted[path]
                out["runs"][path] = counts
                if counts is None:
                    md.append("- `{}`: {}".format(path, why))
                    continue
                if counts["exit_status"] != 0 or counts["failures"] or counts["errors"]:
                    problems.append("{}: {} failed, {} errors".format(path, counts["failures"], counts["errors"]))
                if counts["skipped"] and not dry_run:
                    problems.append("{}: {} skipped on a GPU machine".format(path, counts["skipped"]))
                md.append("- `{path}`: {tests} tests, {failures} failed, {errors} errors, {skipped} skipped "
                          "({seconds:.0f} s)".format(path=path, **counts))
                md += ["  - `{}`: {}".format(f["test"], f["message"].splitlines()[0] if f["message"] else "")
                       for f in counts["failed"]]
                md.append("  - slowest: " + ", ".join(
                    "`{test}` {seconds:.1f} s".format(**t) for t in counts["slowest"]))
            unfinished = ["{}: not run yet".format(p) for later, _ in batches[i + 1:] for p in later]
            status = "failed" if problems or unfinished else "ok"
            save(result(status, out, md, "; ".join(problems + unfinished) or None))
    return result("failed" if problems else "ok", out, md, "; ".join(problems) or None)


# --------------------------------------------------------------------------------------- 2


def cli(dry_run):
    """Tiny fairseq-train runs (--fp16, --bf16, --amp, and --task srupp_language_modeling), then
    fairseq-eval-lm on each checkpoint: training loss finite and falling, evaluation loss finite."""
    from cli_utils import EVAL_LOSS, STATEFUL_TRAIN_ARGS, TINY_TRAIN_ARGS, USER_DIR, make_char_data, run_tool

    def on_device(args):
        return list(args) if dry_run else [a for a in args if a != "--cpu"]

    lm_eval = ["--tokens-per-sample", 64, "--batch-size", 8]
    srupp_eval = ["--task", "srupp_language_modeling", "--batch-size", 3]  # segments = the checkpoint's window
    stateful = STATEFUL_TRAIN_ARGS + ["--batch-size", 4, "--eval-window", 48]
    if dry_run:  # one run: the others take the same code path, and each CPU run costs half a minute here
        runs = [("fp32 (CPU)", TINY_TRAIN_ARGS, [], lm_eval)]
        updates = 10
    else:
        runs = [("--fp16", TINY_TRAIN_ARGS, ["--fp16"], lm_eval), ("--bf16", TINY_TRAIN_ARGS, ["--bf16"], lm_eval),
                ("--amp", TINY_TRAIN_ARGS, ["--amp"], lm_eval),
                ("srupp task --amp", stateful, ["--amp"], srupp_eval)]
        updates = 100
    rows = []
    with tempfile.TemporaryDirectory(prefix="srupp_kit_cli_") as tmp:
        data_bin = make_char_data(Path(tmp))

        def one_run(i, name, train_args, precision, eval_args):
            save_dir = Path(tmp) / "ckpt{}".format(i)
            row = {"run": name, "updates": updates}
            t0 = time.perf_counter()
            try:
                log = run_tool("fairseq-train", data_bin, *on_device(train_args), *precision, "--max-update", updates,
                               "--save-dir", save_dir)
                losses = [float(v) for v in TRAIN_LOSS_ANY.findall(log)]
                row.update(train_losses=losses, finite=all(map(math.isfinite, losses)),
                           falling=len(losses) >= 2 and losses[-1] < losses[0])
                ev = run_tool("fairseq-eval-lm", data_bin, "--user-dir", USER_DIR, "--path",
                              save_dir / "checkpoint_last.pt", "--gen-subset", "valid", "--num-workers", 0, *eval_args,
                              *(["--cpu"] if dry_run else [p for p in precision if p != "--amp"]))
                row["eval_loss"] = float(EVAL_LOSS.findall(ev)[-1])
                row["ok"] = row["finite"] and row["falling"] and math.isfinite(row["eval_loss"])
            except Exception as err:  # noqa: BLE001  (one run failing must not hide the others)
                row.update(ok=False, error="{}: {}".format(type(err).__name__, str(err)[-1500:]))
            row["seconds"] = time.perf_counter() - t0
            return row

        # The runs are tiny, so each mostly waits on its own process start and Python; side by side on
        # one GPU they take about as long as one (the first GPU run, one after another: 25 s each).
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(runs)) as pool:
            futures = {pool.submit(one_run, i, *run): run[0] for i, run in enumerate(runs)}
            for future in concurrent.futures.as_completed(futures):
                row = future.result()
                rows.append(row)
                print("{}: {}".format(row["run"], "ok" if row["ok"] else "FAILED"), flush=True)
                if len(rows) < len(runs):
                    save(cli_result(rows, "unfinished: {} of {} runs done".format(len(rows), len(runs))))
    order = [r[0] for r in runs]
    return cli_result(sorted(rows, key=lambda r: order.index(r["run"])))


def cli_result(rows, unfinished=None):
    md = ["| run | train loss first → last | finite | falling | eval-lm loss (base 2) | s |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r and "train_losses" not in r:
            md.append("| {} | failed: {} | | | | {:.0f} |".format(
                r["run"], r["error"].strip().splitlines()[-1][:200].replace("|", "/"), r["seconds"]))
            continue
        ls = r.get("train_losses") or [float("nan")]
        md.append("| {} | {:.3f} → {:.3f} ({} logged) | {} | {} | {} | {:.0f} |".format(
            r["run"], ls[0], ls[-1], len(r.get("train_losses", [])), r.get("finite"), r.get("falling"),
            "{:.3f}".format(r["eval_loss"]) if "eval_loss" in r else "failed", r["seconds"]))
    bad = [r["run"] for r in rows if not r["ok"]]
    reason = "; ".join(filter(None, ["failed: " + ", ".join(bad) if bad else None, unfinished])) or None
    return result("failed" if reason else "ok", rows, md, reason)


# --------------------------------------------------------------------------------------- 3


PREFETCH_DEPTHS = (1, 2, 4, 8, 16)
STAGE_STEPS = (0, 4, 8, 16)  # time steps a stage of the shared-memory kernels holds; 0: the register ring
BLOCK_SIZES = ("auto", 256, 128, 64)  # threads per block; auto: the launch's spread over the SMs
L2_DISTANCES = (0, 16, 32)  # time steps ahead the kernels ask L2 for the inputs; 0: never
TARGET_CASE = "bf16 U, bf16 x"  # the sweeps' case of issue 11's kernel targets (at B=16)


def fastest_kernel_setting(out, batch=16):
    """(setting in words, its sweep row) of the least time for TARGET_CASE at ``batch`` over the prefetch and the
    staging sweeps of a recurrence result, or None."""
    rows = [("register ring, P={}".format(r["prefetch"]), r) for r in (out.get("prefetch") or {}).get("rows", [])]
    rows += [("shared-memory stages of {} steps".format(r["stage_steps"]) if r["stage_steps"]
              else "register ring, default P", r) for r in (out.get("staging") or {}).get("rows", [])]
    rows = [(label, r) for label, r in rows if r["case"] == TARGET_CASE and r["B"] == batch]
    return min(rows, key=lambda item: item[1]["ms"]) if rows else None


def fastest_setting_targets(out):
    """Issue 11's kernel targets again, at the fastest setting the sweeps found (the table's figures are the
    defaults')."""
    best = fastest_kernel_setting(out)
    if best is None:
        return []
    label, row = best
    sru_ms = find(out["rows"], dtype="bfloat16", B=16).get("sru_ms")
    return [
        target("recurrence fwd+bwd, B=16 bf16, fastest setting ({}): sru's time / ours >= 2".format(label),
               sru_ms / row["ms"] if sru_ms else None, lambda v: v >= 2),
        target("recurrence fwd+bwd, B=16 bf16, fastest setting ({}): >= 60% of the copy bandwidth".format(label),
               row.get("of_copy_bandwidth"), lambda v: v >= 0.6, "{:.1%}")]


def run_sweeps(out, md, ok, sweeps):
    """Step 3's sweeps in order, ``sweeps`` as (key in ``out``, name, markdown of a result, measure(save)), the
    step's result saved after each value of each; a sweep that raises (say, a kernel variant that does not
    compile on this GPU) is reported and the next one still runs; last the targets at the fastest setting."""
    parts = {}  # key: (result so far, markdown)
    failures = []
    for key, _, _, _ in sweeps:
        out[key] = None

    def save_parts(unfinished=None):
        lines = list(md)
        for key, (part, fmt) in parts.items():
            out[key] = part
            lines += [""] + fmt(part)
        lines += [""] + ["- " + why for why in failures] if failures else []
        reason = "; ".join(filter(None, [None if ok else out["sru"]] + failures + [unfinished]))
        return save(result("failed" if reason else "ok", out, lines, reason or None))

    for key, name, fmt, measure in sweeps:
        def keep(part, key=key, fmt=fmt, name=name):
            parts[key] = (part, fmt)
            save_parts(name + " unfinished")

        save_parts(name + " unfinished")
        try:
            parts[key] = (measure(keep), fmt)
        except Exception as err:  # noqa: BLE001  (its rows so far stay; tuned_recurrence_env skips a partial sweep)
            traceback.print_exc()
            failures.append("{} failed: {}: {}".format(name, type(err).__name__, str(err).splitlines()[0][:300]
                                                       if str(err) else ""))
    out["targets"] += fastest_setting_targets(out)
    return save_parts()


def recurrence(dry_run):
    """The recurrence kernel, forward + backward, at L=1024, d=3072, B=4/16/32, fp32/fp16/bf16; then at B=16
    and 4 the prefetch depths 1/2/4/8/16 for bf16 and for autocast's bf16 U + fp32 x (read as it is, or cast
    first); then the kernels fed through shared memory (4, 8, 16 steps a stage, against the register ring);
    then threads per block (the launch's spread over the SMs, 256, 128, 64) and how far ahead the kernels ask
    L2 for their inputs (0: never, 16, 32), both at the default depth; last the targets again at the fastest
    setting found."""
    from recurrence_cuda import (copy_bandwidth_gbs, format_blocks, format_l2_ahead, format_prefetch,
                                 format_recurrence, format_staging)
    from recurrence_cuda import (kernel_bytes, measure_blocks, measure_l2_ahead, measure_prefetch, measure_recurrence,
                                 measure_staging, recurrence_inputs, recurrence_step)

    if dry_run or not torch.cuda.is_available():
        from bench_timing import Timer

        from fairseq_srupp.ops.recurrence import elementwise_recurrence

        inputs, grads = recurrence_inputs(16, 2, 8, 3, torch.float32, device="cpu")
        seconds = Timer().time_fn(recurrence_step(elementwise_recurrence, inputs, grads), 1, 3)[0]
        smoke = {"L": 16, "B": 2, "d": 8, "cpu_ms": 1000 * seconds, "kernel_bytes": kernel_bytes(16, 2, 8, 3, 4)}
        # the sweep's own code, on the CPU path (where the depth changes nothing)
        cpu_ms = lambda f, w, r: 1000 * Timer().time_fn(f, w, r)[0]  # noqa: E731
        cpu = dict(warmup=1, repeats=2, fn=elementwise_recurrence, time_ms=cpu_ms, device="cpu")
        smoke["prefetch"] = measure_prefetch(16, 8, [2, 1], PREFETCH_DEPTHS[:2], **cpu)
        smoke["staging"] = measure_staging(16, 8, [2], STAGE_STEPS[:2], copy_gbs=1.0, **cpu)
        smoke["blocks"] = measure_blocks(16, 8, [2], BLOCK_SIZES[:2], **cpu)
        smoke["l2_ahead"] = measure_l2_ahead(16, 8, [2], L2_DISTANCES[:2], **cpu)
        lines = format_prefetch(smoke["prefetch"]) + [""] + format_staging(smoke["staging"]) + [""]
        return result("skipped", {"smoke": smoke}, lines + format_blocks(smoke["blocks"]) + [""]
                      + format_l2_ahead(smoke["l2_ahead"]), reason=NO_GPU)
    out = measure_recurrence(1024, 3072, [4, 16, 32], ["float32", "float16", "bfloat16"], warmup=2, repeats=5,
                             copy_gbs=copy_bandwidth_gbs())
    ok = out["sru"] == "timed"
    row = find(out["rows"], dtype="bfloat16", B=16)
    out["targets"] = [
        target("recurrence fwd+bwd, B=16 bf16: sru's time / ours >= 2", row.get("sru_over_ours"), lambda v: v >= 2),
        target("recurrence fwd+bwd, B=16 bf16: >= 60% of the copy bandwidth", row.get("of_copy_bandwidth"),
               lambda v: v >= 0.6, "{:.1%}")]
    md = format_recurrence(out)
    timing = dict(warmup=2, repeats=5)
    # (key in the result, name, markdown, measure(save)), in order of importance. B=16: issue 11's target
    # shape; B=4: enwik8-base training per GPU, where the step's latency matters most.
    sweeps = [
        ("prefetch", "prefetch sweep", format_prefetch, lambda keep: measure_prefetch(
            1024, 3072, [16, 4], PREFETCH_DEPTHS, copy_gbs=out["copy_bandwidth_gbs"], save=keep, **timing)),
        ("staging", "shared-memory staging comparison", format_staging, lambda keep: measure_staging(
            1024, 3072, [4, 16], STAGE_STEPS, copy_gbs=out["copy_bandwidth_gbs"], save=keep, **timing)),
        ("blocks", "block-size comparison", format_blocks, lambda keep: measure_blocks(
            1024, 3072, [4, 16], BLOCK_SIZES, save=keep, **timing)),
        ("l2_ahead", "L2 prefetch comparison", format_l2_ahead, lambda keep: measure_l2_ahead(
            1024, 3072, [4, 16], L2_DISTANCES, save=keep, **timing)),
    ]
    return run_sweeps(out, md, ok, sweeps)


# --------------------------------------------------------------------------------------- 4


def training(dry_run):
    """Training at the enwik8-base shape, bf16 and fp16: srupp_lm vs the same with all heads through SDPA
    and with the additive mask vs the paper's sru.SRUpp model vs transformer_lm (see train_bench.py); then,
    in the time left, where a step's time goes and the GPU tests of the attention paths (flash /
    memory-efficient / score product vs SDPA's math); last srupp_lm under torch.compile, in a dry run or
    with run_all.py --compile."""
    import train_bench

    gpu = torch.cuda.is_available() and not dry_run
    tiny = ["--device", "cpu", "--srupp", "32,16,2", "--transformer", "32,64,2,2", "--batch", "2", "--length", "16",
            "--warmup", "1", "--repeats", "2"]
    argv = [] if gpu else tiny + ["--dtypes", "float32", "bfloat16"]
    args = train_bench.parse_args(argv)
    out = train_bench.run(args, on_row=lambda part: save(training_result(part, gpu)))
    if not gpu or seconds_left() > 35:  # where the time goes (about 20 s on an H100): the next speed-up's input
        import step_profile

        save(training_result(out, gpu))
        out["profile"] = step_profile.run(
            args, ["srupp_lm", "srupp_lm_half", "sru_reference"] if gpu else ["srupp_lm"], "bfloat16",
            steps=2 if gpu else 1, on_result=lambda part: save(training_result(dict(out, profile=part), gpu)))
    if gpu and seconds_left() > 45:
        out["attention_gpu_tests"] = attention_gpu_tests(seconds_left() - 10)
    if not gpu or seconds_left() > 30:  # about 10 s on an H100
        save(training_result(out, gpu))
        out["larger_batch"] = train_bench.run(train_bench.parse_args(
            (argv if not gpu else []) + ["--models", *LARGER_BATCH_MODELS, "--dtypes", "bfloat16",
                                         "--batch", str(LARGER_BATCH * args.batch)]))
    # srupp_lm under torch.compile: on a GPU only with run_all.py --compile (on an H100 it measured 0.98x
    # eager on 2026-11-27, with SDPA's attention, and its compiling took 44 s of the kit's 8 minutes);
    # a dry run checks its code path.
    if not gpu or (os.environ.get(COMPILE_ENV) == "1" and seconds_left() > 60):
        save(training_result(out, gpu))  # kept if the step is stopped while compiling
        compiled = train_bench.run(train_bench.parse_args(
            ["--models", "srupp_lm_compiled", "--dtypes", "bfloat16"] if gpu
            else tiny + ["--models", "srupp_lm_compiled", "--dtypes", "bfloat16", "--compile-backend", "aot_eager"]))
        out.update(train_bench.summarise(args, out["device"], out["peak_bf16_tflops"], out["rows"] + compiled["rows"],
                                         out["errors"] + compiled["errors"]))
    return training_result(out, gpu)


# Beside the targets, which are read at the paper's per-GPU batch (4 x 1024 tokens): the same models at 4x that
# batch. The recurrence's time per step hardly grows with the batch (it is bound by the latency of its time
# steps) while the matrix products' grows in proportion, so this says how far the MFU target's gap is the batch's.
LARGER_BATCH = 4
LARGER_BATCH_MODELS = ("srupp_lm_half", "sru_reference")


def larger_batch_lines(out):
    """Markdown lines of step 4's larger-batch runs (none before they ran)."""
    larger = out.get("larger_batch")
    if not larger:
        return []
    lines = ["", "At {}x the paper's per-GPU batch ({} x {} tokens per step, bf16; no target reads these):".format(
        LARGER_BATCH, larger["batch"], larger["length"]), "",
        "| model | ms/step | tokens/s | peak MiB | MFU |", "| --- | --- | --- | --- | --- |"]
    for r in larger["rows"]:
        lines.append("| {} | {:.1f} | {:,.0f} | {} | {} |".format(
            r["model"], r["ms_per_step"], r["tokens_per_s"], "-" if r["peak_mib"] is None else "{:,.0f}".format(
                r["peak_mib"]), "-" if r["mfu"] is None else "{:.1%}".format(r["mfu"])))
    lines += ["| {model} | failed: {error} | | | |".format(**e) for e in larger["errors"]]
    return lines


def attention_gpu_tests(limit):
    """pytest of the structured-mask GPU tests; "passed" only if none failed or was skipped."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "gpu",
           "tests/test_attention_mask_structured.py"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        return "stopped after {:.0f} s".format(limit)
    print(proc.stdout, flush=True)
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    return "passed: " + last if proc.returncode == 0 and "skipped" not in last else "FAILED: " + last


def training_result(out, gpu):
    import train_bench

    md = train_bench.format_results(out)
    out["targets"] = []
    for dtype in ("bfloat16", "float16"):
        r = out["ratios"].get(dtype, {})
        out["targets"] += [
            target("enwik8-base training {}: srupp_lm / sru reference tokens/s >= 1.5".format(dtype),
                   r.get("srupp_over_reference_tokens_per_s"), lambda v: v >= 1.5),
            target("enwik8-base training {}: srupp_lm peak memory <= the reference's".format(dtype),
                   r.get("srupp_over_reference_peak_memory"), lambda v: v <= 1.0),
            # as this project's configs train it: fairseq's --fp16 / --bf16 (half weights, fp32 master copy)
            target("enwik8-base training {}: srupp_lm_half / sru reference tokens/s >= 1.5".format(dtype),
                   r.get("half_over_reference_tokens_per_s"), lambda v: v >= 1.5),
            target("enwik8-base training {}: srupp_lm_half peak memory <= the reference's".format(dtype),
                   r.get("half_over_reference_peak_memory"), lambda v: v <= 1.0)]
    for model in ("srupp_lm", "srupp_lm_half"):
        out["targets"].append(target("enwik8-base training bf16: {} MFU >= 45%".format(model), find(
            out["rows"], model=model, dtype="bfloat16").get("mfu"), lambda v: v >= 0.45, "{:.1%}"))
    ab = out["ratios"].get("bfloat16", {})
    out["targets"] += [  # the structured causal mask must not lose to the additive one it replaces (both SDPA)
        target("enwik8-base training bf16: SDPA structured / additive causal mask tokens/s >= 1",
               ab.get("structured_over_additive_tokens_per_s"), lambda v: v >= 1.0),
        target("enwik8-base training bf16: SDPA structured / additive causal mask peak memory <= 1",
               ab.get("structured_over_additive_peak_memory"), lambda v: v <= 1.0),
        # wide heads through the score product (auto) must not lose to SDPA's kernel for them
        target("enwik8-base training bf16: default attention / all heads through SDPA tokens/s >= 1",
               ab.get("auto_over_sdpa_tokens_per_s"), lambda v: v >= 1.0)]
    profile = out.get("profile")
    if profile:
        import step_profile

        md += ["", "Where a training step's time goes (`benchmarks/gpu/step_profile.py`):"]
        for one in profile["profiles"]:
            md += [""] + step_profile.format_profile(one)
        md += ["profile of {model} {dtype} failed: {error}".format(**e) for e in profile["errors"]]
    tests = out.get("attention_gpu_tests")
    if tests:
        md += ["", "Structured-mask GPU tests (`pytest -k gpu tests/test_attention_mask_structured.py`): " + tests]
    md += larger_batch_lines(out)
    if not gpu:
        return result("skipped", out, md, NO_GPU)
    problems = ["{model} {dtype}: {error}".format(**e) for e in out["errors"]]
    problems += ["attention GPU tests " + tests] if tests and not tests.startswith("passed") else []
    problems += ["profile of {model} {dtype}: {error}".format(**e) for e in (profile or {}).get("errors", [])]
    problems += ["{model} at {batch}x the batch: {error}".format(batch=LARGER_BATCH, **e)
                 for e in (out.get("larger_batch") or {}).get("errors", [])]
    return result("failed" if problems else "ok", out, md, "; ".join(problems) or None)


# --------------------------------------------------------------------------------------- 5


GENERATION_MODELS = ("srupp_lm_stepper", "srupp_lm", "transformer_lm")
# (models run side by side, share of the time left each may take). The TokenStepper runs alone first, so
# its timings are undisturbed, with enough for 17k tokens at 1.5 ms each and its model's set-up. Then
# srupp_lm through fairseq's incremental state (on a GPU also a graph per token, from a TokenStepper the
# decoder keeps in the state) beside transformer_lm, whose eager decoding is bound by the CPU launching
# small kernels (srupp_lm took over 3.7 ms a token that way on the H100), which leaves the GPU mostly
# idle: side by side, on their own CPU cores, each gets all of the time left instead of a part of it.
GENERATION_PHASES = ((("srupp_lm_stepper",), 0.4), (("srupp_lm", "transformer_lm"), 1.0))


def run_generation_processes(names, args, limit, tmp):
    """Run benchmarks/generation.py for each model of ``names`` at once, each stopped after ``limit`` s;
    returns {name: (its JSON or None, failure or None)}. Output goes to files, so neither process can
    stall on a full pipe while the other is waited for."""
    procs = {}
    for name in names:
        out, log = Path(tmp) / (name + ".json"), open(Path(tmp) / (name + ".log"), "w+")
        cmd = [sys.executable, str(REPO / "benchmarks" / "generation.py"), *args, "--models", name, "--json", str(out)]
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), out, log)
    deadline = time.time() + limit
    results = {}
    for name, (proc, out, log) in procs.items():
        failure = None
        try:
            code = proc.wait(timeout=None if limit == float("inf") else max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code, failure = None, "stopped after its share of the time, {:.0f} s".format(limit)
        log.seek(0)
        text = log.read()
        log.close()
        print(text, flush=True)
        if failure is None and (code != 0 or not out.exists()):
            failure = "generation.py failed: {}".format(text.strip().splitlines()[-1:])
        # after a stop: the runs it finished (generation.py writes them after each)
        results[name] = (json.loads(out.read_text()) if out.exists() else None, failure)
    return results


def generation(dry_run):
    """Generation ms/token at 1k and 16k tokens through the benchmark's CLI: srupp_lm decoded by a
    TokenStepper (one CUDA graph per token), srupp_lm through fairseq's incremental state (as
    SequenceGenerator decodes; on a GPU through a TokenStepper the decoder keeps there), transformer_lm.
    One process per model, each with its own share of the time left (GENERATION_PHASES), so a slow one
    cannot cost the others their figures."""
    from train_bench import TRANSFORMER

    if dry_run or not torch.cuda.is_available():
        args = ["--device", "cpu", "--lengths", "8,16", "--threads", "1", "--decoding", "ring",
                "--sequence-generator", "8"]
    else:
        args = ["--device", "cuda", "--dtype", "bfloat16", "--lengths", "1000,16000", "--srupp-arch", "srupp_lm",
                "--transformer", TRANSFORMER, "--vocab", "209", "--sequence-generator", "1000"]
    data, failures = None, {}
    for i, (names, share) in enumerate(GENERATION_PHASES):
        with tempfile.TemporaryDirectory() as tmp:
            runs = run_generation_processes(names, args, (seconds_left() - 5) * share, tmp)
        for name, (part, failure) in runs.items():
            if failure is not None:
                failures[name] = failure
            if part is None:
                continue
            if data is None:
                data = part
            else:
                data["models"].update(part["models"])
                data.setdefault("sequence_generator", {}).update(part.get("sequence_generator") or {})
        if data is not None:
            save(generation_result(data, failures, unfinished=i + 1 < len(GENERATION_PHASES)))
    if data is None:
        return result("failed", failures, reason="; ".join("{}: {}".format(k, v) for k, v in failures.items()))
    return generation_result(data, failures)


def generation_result(data, failures, unfinished=False):
    from fairseq_srupp.bench.generation import summarize

    data = summarize(data)  # the merged models' scaling (time and peak memory, longest over shortest run)
    lo, hi = data["setup"]["lengths"][0], data["setup"]["lengths"][-1]
    together = [" and ".join("`{}`".format(n) for n in names) for names, _ in GENERATION_PHASES if len(names) > 1]
    md = ["{} {}, batch {}, SRU++ window {}. One process per model; {} ran side by side (each launch-bound on "
          "its own CPU core), the others alone.".format(
              data["setup"]["device_name"], data["setup"]["dtype"], data["setup"]["batch"], data["setup"]["window"],
              ", ".join(together) or "none"), "",
          "| model | params | decoding | ms/token at {lo:,} | ms/token over the last 1k of {hi:,} | ratio | state MiB "
          "at {hi:,} | peak MiB growth at {lo:,} → {hi:,} | ratio |".format(lo=lo, hi=hi),
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {}
    peak_key = data["peak_memory_key"]
    for name, m in data["models"].items():
        runs = {r["length"]: r for r in m.get("runs", [])}
        decoding = m.get("decoding") or {}
        how = decoding.get("mode", "cache" if name == "srupp_lm" else "fairseq")
        how = "fairseq incremental state: " + how if name == "srupp_lm" else how
        how += " (capture failed: {})".format(decoding["graph_failure"]) if decoding.get("graph_failure") else ""
        how += " of the reference recurrence (with the fused one: {})".format(
            decoding["capture_failures"][0]) if decoding.get("graph_recurrence") == "reference" else ""
        how = how.replace("|", "/")
        if lo in runs and hi not in runs:
            md.append("| {} | {:,} | {} | {:.3f} | unfinished | | | {:.1f} → unfinished | |".format(
                name, m["params"], how, runs[lo]["ms_per_token"], runs[lo].get(peak_key) or 0.0))
            continue
        if lo not in runs or hi not in runs:
            md.append("| {} | {:,} | {} | skipped: {} | | | | | |".format(name, m["params"], how,
                                                                           m.get("skipped", "no runs")))
            continue
        first, last = runs[lo]["ms_per_token"], runs[hi]["last_span_ms_per_token"]
        memory = data["scaling"].get(name, {}).get("peak_memory")
        summary[name] = {"ms_per_token_short": first, "ms_per_token_long": last, "long_over_short": last / first,
                         "peak_memory_long_over_short": memory, "state_mib_long": runs[hi]["state_mib"],
                         "state_long_over_short": data["scaling"].get(name, {}).get("state_memory")}
        md.append("| {} | {:,} | {} | {:.3f} | {:.3f} | {:.2f}x | {:.1f} | {:.1f} → {:.1f} | {} |".format(
            name, m["params"], how, first, last, last / first, runs[hi]["state_mib"], runs[lo].get(peak_key) or 0.0,
            runs[hi].get(peak_key) or 0.0, "-" if memory is None else "{:.2f}x".format(memory)))
    md += ["| {} | failed: {} | | | | | | | |".format(name, why.replace("|", "/")) for name, why in failures.items()]
    transformer = summary.get("transformer_lm")
    for name in ("srupp_lm_stepper", "srupp_lm"):
        if name in summary and transformer:
            md.append("")
            md.append("{} / transformer_lm ms/token at {:,} tokens: {:.2f}x".format(
                name, hi, summary[name]["ms_per_token_long"] / transformer["ms_per_token_long"]))
    if "srupp_lm_stepper" in summary and "srupp_lm" in summary:
        md.append("srupp_lm fairseq incremental state / TokenStepper ms/token at {:,} tokens: {:.2f}x".format(
            hi, summary["srupp_lm"]["ms_per_token_long"] / summary["srupp_lm_stepper"]["ms_per_token_long"]))
    generators = data.get("sequence_generator") or {}
    if generators:  # fairseq's own SequenceGenerator (what fairseq-generate and the hub run), after the runs
        md += ["", "fairseq's `SequenceGenerator`, beam 1, {:,} tokens from `</s>`: ".format(
            next(iter(generators.values()))["length"]) + ", ".join(
                "{} {:.3f} ms/token".format(name, g["ms_per_token"]) for name, g in generators.items())]
    targets = []
    for name in ("srupp_lm_stepper", "srupp_lm"):
        figures = summary.get(name, {})
        targets += [
            target("generation: {} ms/token at {:,} tokens <= 1.2x at {:,}".format(name, hi, lo),
                   figures.get("long_over_short"), lambda v: v <= 1.2),
            # Memory per token: what the decoding state holds (the peak's growth during a run, in the
            # table, is near zero for a state allocated before the run, so its ratio says little).
            target("generation: {} state memory at {:,} tokens <= 1.2x at {:,}".format(name, hi, lo),
                   figures.get("state_long_over_short"), lambda v: v <= 1.2)]
    data.update(summary=summary, failures=failures, targets=targets)
    missing = [n for n in GENERATION_MODELS if n not in summary]
    reason = "unfinished" if unfinished else ("no runs of " + ", ".join(missing) if missing else None)
    reason = "; ".join(filter(None, [reason] + ["{}: {}".format(k, v) for k, v in failures.items()])) or None
    return result("failed" if reason else "ok", data, md, reason)


STEPS = {"environment": environment, "kernel_tests": kernel_tests, "cli": cli, "recurrence": recurrence,
         "training": training, "generation": generation}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=STEPS)
    p.add_argument("--json", required=True)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    global _json_path
    _json_path = args.json
    if args.step in os.environ.get(FAIL_ENV, "").split(","):
        raise RuntimeError("step {} failed on purpose ({}={})".format(args.step, FAIL_ENV, os.environ[FAIL_ENV]))
    if args.step in os.environ.get(HANG_ENV, "").split(","):
        save(result("failed", {"partial": True}, ["partial result"], "unfinished on purpose"))
        time.sleep(3600)
    save(STEPS[args.step](args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
