"""Driver of the GPU kit: runs every step of ``steps.py`` in its own process, each under a time limit,
and writes ``report.json``, ``report.md`` and ``steps.log`` to --out (rewritten after every step, so a
run cut short still leaves its report). Normally started by ``run_all.sh``; see benchmarks/gpu/README.md.

A step that fails, crashes or runs out of time is reported with the reason and the next step runs.
Every step's limit is cut so that the whole run ends within --budget-s of --started (the moment
run_all.sh began, installation included), keeping --reserve-s for each later step.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# (key, title, time limit in seconds). Limits are sized from the first H100 run (benchmarks/gpu/README.md).
STEPS = [
    ("environment", "0. Environment", 40),
    ("kernel_tests", "1. GPU tests: kernel parity, CUDA-graph decoding, FusedRAdam and the batched fp16 update", 190),
    ("cli", "2. fairseq-train --fp16 / --bf16 / --amp and --task srupp_language_modeling, then fairseq-eval-lm", 80),
    ("recurrence", "3. Recurrence kernel fwd+bwd, L=1024 d=3072: bandwidth and sru's kernel", 60),
    ("training", "4. Training at the enwik8-base shape: srupp_lm, sru reference, transformer_lm", 110),
    ("generation", "5. Generation ms/token at 1k and 16k tokens", 240),
]
STATUSES = ("ok", "failed", "timeout", "skipped")
# sru builds its CUDA kernel when first imported, with a header that makes it compile on torch >= 2.11
PREWARM_SRU = ("from fairseq_srupp.bench.paper_sru import import_sru; _, failed = import_sru(); "
               "print('sru CUDA kernel:', 'did not build: ' + failed if failed else 'built')")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for report.json, report.md and steps.log")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on a machine without a GPU")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for the whole run (default 470; with --dry-run 3600)")
    p.add_argument("--limit-scale", type=float, default=None,
                   help="factor on every step's limit (default 1; with --dry-run 10: the limits are sized for an "
                        "H100 machine, not for compiling extensions on a few busy CPU cores)")
    p.add_argument("--reserve-s", type=float, default=20.0, help="seconds kept for each later step (default 20)")
    p.add_argument("--started", type=float, default=None, help="epoch seconds the run began (default: now)")
    p.add_argument("--compile", action="store_true",
                   help="step 4 also times srupp_lm under torch.compile (tens of seconds of compiling; off by default)")
    p.add_argument("--no-tune", action="store_true",
                   help="run steps 4 and 5 with the recurrence kernel's defaults instead of step 3's fastest prefetch "
                        "depth and L2 distance at the training batch")
    p.add_argument("--steps", default=",".join(s[0] for s in STEPS), help="comma-separated subset of steps")
    p.add_argument("--install-log", default=None, help="log of install.py, reported as the first step")
    p.add_argument("--install-status", type=int, default=None, help="exit status of install.py")
    p.add_argument("--install-seconds", type=float, default=None)
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 3600.0 if args.dry_run else 470.0
    if args.limit_scale is None:
        args.limit_scale = 10.0 if args.dry_run else 1.0
    return args


# Step 3's sweeps, read at the training step's batch (4 x 1024 tokens): the cases of its two bf16 models
# (srupp_lm_half: bf16 U and x; srupp_lm under autocast: bf16 U read as it is next to an fp32 x).
TUNE_BATCH = 4
TUNE_CASES = ("bf16 U, bf16 x", "bf16 U, fp32 x (autocast, U read as bf16)")
STAGE_ENV = "FAIRSEQ_SRUPP_CUDA_STAGE_STEPS"
TUNE_SWEEPS = (("prefetch", "prefetch", "FAIRSEQ_SRUPP_CUDA_PREFETCH"),
               ("staging", "stage_steps", STAGE_ENV),
               ("l2_ahead", "l2_ahead", "FAIRSEQ_SRUPP_CUDA_L2_AHEAD"))


def tuned_recurrence_env(results):
    """{environment switch: value} of the fastest prefetch depth, staging and L2 distance in step 3's sweeps,
    each the one with the least summed time over TUNE_CASES at TUNE_BATCH (each sweep varies one setting at the
    others' defaults); a sweep that did not time every case at every value is left out. The staged kernels
    win only if they beat the register ring at its fastest depth too (the staging sweep's ring runs at the
    default depth)."""
    best = {}  # sweep: (fastest value, its summed ms)
    for sweep, key, name in TUNE_SWEEPS:
        rows = [r for r in ((results or {}).get(sweep) or {}).get("rows", [])
                if r.get("B") == TUNE_BATCH and r.get("case") in TUNE_CASES]
        totals = {}
        for r in rows:
            totals.setdefault(r[key], []).append(r["ms"])
        complete = {value: sum(ms) for value, ms in totals.items() if len(ms) == len(TUNE_CASES)}
        if complete and len(complete) == len(totals):
            value = min(complete, key=complete.get)
            best[sweep] = (value, complete[value])
    if best.get("staging", (0,))[0] and "prefetch" in best and best["prefetch"][1] < best["staging"][1]:
        best["staging"] = (0, best["prefetch"][1])
    return {name: str(best[sweep][0]) for sweep, _, name in TUNE_SWEEPS if sweep in best}


KERNEL_TEST_FILE = "tests/test_cuda_kernel.py"


def staging_untested(steps):
    """Why step 1 of this run gives no evidence that the staged kernels compute right on this GPU, or None: it
    ran and gave no counts for the kernel tests, skipped some, or failed one of the staged kernels' tests.
    None as well when step 1 was not part of this run (a rerun of later steps)."""
    step = next((s for s in steps if s["key"] == "kernel_tests"), None)
    if step is None:
        return None
    counts = ((step.get("results") or {}).get("runs") or {}).get(KERNEL_TEST_FILE)
    if counts is None:
        return "step 1 gave no counts for {}".format(KERNEL_TEST_FILE)
    if counts.get("skipped"):
        return "step 1 skipped {} of its tests".format(counts["skipped"])
    failed = [f["test"] for f in counts.get("failed", []) if "staged" in (f["test"] or "")]
    return "step 1 failed {}".format(", ".join(failed)) if failed else None


def tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])


def run_step(key, title, limit, dry_run, log):
    """Run one step in its own process group (its children die with it on a timeout); return its record."""
    record = {"key": key, "title": title, "timeout_s": round(limit, 1)}
    with tempfile.TemporaryDirectory(prefix="srupp_kit_") as tmp:
        out_json, out_log = Path(tmp) / "step.json", Path(tmp) / "step.log"
        cmd = [sys.executable, str(HERE / "steps.py"), key, "--json", str(out_json)]
        cmd += ["--dry-run"] if dry_run else []
        start = time.perf_counter()
        env = dict(os.environ, SRUPP_GPU_KIT_DEADLINE=str(time.time() + limit))
        with open(out_log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
                record.update(status="timeout", reason="stopped after its {:.0f} s limit".format(limit))
        record["seconds"] = round(time.perf_counter() - start, 1)
        text = out_log.read_text(errors="replace")
        log.write("\n===== {} ({:.1f} s, exit status {}) =====\n{}\n".format(title, record["seconds"], code, text))
        log.flush()
        saved = json.loads(out_json.read_text()) if out_json.exists() else None
        if "status" in record:  # timed out: keep what the step saved before it was stopped
            partial = saved or {}
            record.update(results=partial.get("results"), markdown=partial.get("markdown") or [
                "Last output:", "```", tail(text), "```"])
            if partial.get("reason"):
                record["reason"] += "; " + partial["reason"]
        elif saved is not None:
            record.update(saved)
            if code != 0:  # crashed after saving a partial result
                crash = "exit status {}: {}".format(code, tail(text, 1))
                record.update(status="failed", reason="; ".join(filter(None, [record.get("reason"), crash])))
        else:
            record.update(status="failed", results=None, reason="exit status {}: {}".format(
                code, tail(text, 1)), markdown=["Last output:", "```", tail(text), "```"])
    return record


def clear_stale_build_locks(roots, keep_prefixes=()):
    """Remove the ``lock`` files under ``roots`` that torch.utils.cpp_extension leaves when a process is
    killed while it compiles an extension: every later load of that extension would wait on them
    forever. Called after a step was killed, when no process of it is left; builds of a still running
    process (``keep_prefixes``: the background build of sru) keep theirs. Returns the removed paths."""
    removed = []
    for root in map(Path, roots):
        for lock in sorted(root.glob("**/lock")) if root.is_dir() else ():
            if not lock.parent.name.startswith(tuple(keep_prefixes)):
                lock.unlink()
                removed.append(str(lock))
    return removed


def extension_roots():
    """Where torch builds extensions: $TORCH_EXTENSIONS_DIR (run_all.sh sets it on a GPU machine) and
    torch's default cache."""
    roots = [os.environ["TORCH_EXTENSIONS_DIR"]] if os.environ.get("TORCH_EXTENSIONS_DIR") else []
    return roots + [str(Path.home() / ".cache" / "torch_extensions")]


def install_record(args):
    if args.install_status is None:
        return {"key": "install", "title": "Install from the wheelhouse", "status": "skipped", "seconds": 0.0,
                "reason": "no wheelhouse given", "results": None, "markdown": []}
    text = Path(args.install_log).read_text(errors="replace") if args.install_log else ""
    ok = args.install_status == 0
    return {"key": "install", "title": "Install from the wheelhouse", "status": "ok" if ok else "failed",
            "seconds": args.install_seconds, "reason": None if ok else "install.py exit status {}: {}".format(
                args.install_status, tail(text, 1)),
            "results": None, "markdown": ["```", tail(text, 8), "```"]}


def device_line(steps):
    env = next((s["results"] for s in steps if s["key"] == "environment" and s["status"] == "ok"), None)
    if not env:
        ran = any(s["key"] == "environment" for s in steps)
        return "environment unknown (step 0 {})".format("failed" if ran else "not run: see --steps")
    gpu = "{gpu} ({gpu_memory_gib:.0f} GiB, {multiprocessors} SMs, sm_{capability})".format(**env) if "gpu" in env \
        else "no GPU"
    return "{} · torch {} (CUDA {}) · Python {}".format(gpu, env["torch"], env["torch_cuda"], env["python"])


def markdown(report):
    lines = ["# fairseq-srupp GPU kit report", "",
             "{} · {}{} · {:.0f} s of a {:.0f} s budget".format(
                 device_line(report["steps"]), report["started_utc"], " · DRY RUN" if report["dry_run"] else "",
                 report["total_s"], report["budget_s"]), ""]
    if report.get("tuned"):
        lines += ["Steps after 3 ran with step 3's fastest recurrence settings at B={} ({}): {}.".format(
            TUNE_BATCH, "; ".join(TUNE_CASES), ", ".join("`{}={}`".format(k, v) for k, v in report["tuned"].items())),
            ""]
    if report.get("staging_kept_off"):
        lines += ["The staged kernels were the fastest but stayed off for the later steps: {}.".format(
            report["staging_kept_off"]), ""]
    lines += ["| step | status | seconds | note |", "| --- | --- | --- | --- |"]
    for s in report["steps"]:
        note = (s.get("reason") or "").replace("|", "/").replace("\n", " ")[:300]
        lines.append("| {} | {} | {} | {} |".format(s["title"], s["status"].upper() if s["status"] != "ok" else "ok",
                                                   s.get("seconds", ""), note))
    if report["targets"]:
        lines += ["", "| target (issue 11) | measured | met |", "| --- | --- | --- |"]
        lines += ["| {} | {} | {} |".format(t["target"], "-" if t["value"] is None else t["value"],
                                           {True: "yes", False: "NO", None: "-"}[t["met"]]) for t in report["targets"]]
    for s in report["steps"]:
        if s.get("markdown"):
            lines += ["", "## " + s["title"], ""] + s["markdown"]
    return "\n".join(lines) + "\n"


def write_report(out, report):
    report["total_s"] = round(time.time() - report["started"], 1)
    report["summary"] = {k: sum(s["status"] == k for s in report["steps"]) for k in STATUSES}
    # Targets of measured steps only: a dry run's tiny figures say nothing about them.
    report["targets"] = [] if report["dry_run"] else [
        t for s in report["steps"] if s["status"] != "skipped" and isinstance(s.get("results"), dict)
        for t in s["results"].get("targets", [])]
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = args.started or time.time()
    wanted = args.steps.split(",")
    unknown = set(wanted) - {k for k, _, _ in STEPS}
    if unknown:
        raise SystemExit("error: unknown step(s) {}; choose from {}".format(
            ",".join(sorted(unknown)), ",".join(k for k, _, _ in STEPS)))
    report = {"kit": "fairseq-srupp GPU kit", "dry_run": args.dry_run, "budget_s": args.budget_s, "started": started,
              "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
              "steps": [install_record(args)]}
    steps = [s for s in STEPS if s[0] in wanted]
    if args.compile:
        os.environ["SRUPP_GPU_KIT_COMPILE"] = "1"  # read by steps.py's training step (its COMPILE_ENV)
    with open(out / "steps.log", "w") as log:
        # sru compiles its CUDA kernel (ninja + nvcc, about a minute) on first import: start that on the
        # idle CPU cores now; the steps that import sru later wait on torch's build lock or find it built.
        prewarm = None
        if not args.dry_run and {"recurrence", "training"} & set(wanted):
            prewarm_log = tempfile.TemporaryFile("w+")
            prewarm = subprocess.Popen([sys.executable, "-c", PREWARM_SRU], cwd=REPO, stdout=prewarm_log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        for i, (key, title, limit) in enumerate(steps):
            remaining = args.budget_s - (time.time() - started) - args.reserve_s * (len(steps) - i - 1)
            if remaining < 5:
                report["steps"].append({"key": key, "title": title, "status": "skipped", "seconds": 0.0,
                                        "reason": "time budget used up", "results": None, "markdown": []})
            else:
                limit = min(limit * args.limit_scale, remaining)
                report["steps"].append(run_step(key, title, limit, args.dry_run, log))
                # Not in a dry run: there the cache may be shared with builds of other processes.
                if report["steps"][-1]["status"] == "timeout" and not args.dry_run:
                    building = ("sru",) if prewarm is not None and prewarm.poll() is None else ()
                    for path in clear_stale_build_locks(extension_roots(), building):
                        log.write("removed the build lock {} left by the stopped step\n".format(path))
            s = report["steps"][-1]
            if key == "recurrence" and not args.no_tune:  # (a dry run's CPU smoke test has no sweep rows)
                tuned = tuned_recurrence_env(s.get("results"))
                why = staging_untested(report["steps"])
                if why and tuned.get(STAGE_ENV, "0") != "0":  # fast but not shown right: keep the ring
                    tuned[STAGE_ENV] = "0"
                    report["staging_kept_off"] = why
                os.environ.update(tuned)  # the later steps' processes inherit it
                report["tuned"] = tuned
            print("{:<12} {:<8} {:>6} s  {}".format(key, s["status"], s.get("seconds", ""), s.get("reason") or ""),
                  flush=True)
            write_report(out, report)
        if prewarm is not None:
            if prewarm.poll() is None:
                os.killpg(prewarm.pid, signal.SIGKILL)
            code = prewarm.wait()
            prewarm_log.seek(0)
            log.write("\n===== background build of sru (exit status {}) =====\n{}\n".format(code, prewarm_log.read()))
    write_report(out, report)
    # The device tool returns the end of the output: the report itself, in case its files do not come back.
    print("\n" + (out / "report.md").read_text())
    print("report: {}".format(out / "report.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
