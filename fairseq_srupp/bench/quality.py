"""Quality per compute: ``srupp_lm`` against fairseq's ``transformer_lm``, side by side.

Both models of about the same parameter count are trained with ``fairseq-train`` itself, one after
the other, on the same byte-level binarized corpus, with the same tokens per update (B streams or
blocks × T tokens), the same optimizer (Adam 0.9/0.98, weight decay 0.01, clipping 1.0) and the
same schedule (linear warm-up then inverse square root: it needs no run length, so a wall-clock
budget can stop it anywhere):

* **equal wall clock**: each trains for ``--seconds`` of training time (fairseq's
  ``--stop-time-hours``, which excludes validation);
* **equal FLOPs**: each trains for the same number of training FLOPs (``--flops``, default the
  FLOPs SRU++ spent in its wall-clock run), counted analytically (:mod:`fairseq_srupp.bench.flops`).

Each model is validated with its own protocol every ``--validate-every`` updates: SRU++ through
``srupp_language_modeling`` (state carried across segments, attention window T), the Transformer
through ``language_modeling`` (independent blocks of T tokens). Losses are bits per byte.

Writes to ``--out``: ``results.json`` (every validation point against training seconds, tokens and
FLOPs, for every run), ``results.md`` (final BPC, tokens/s, peak memory, the compute ratio) and
``curves.png``. The last line printed is the ratio users care about: how much training compute the
Transformer needs to reach SRU++'s final validation loss, relative to SRU++.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fairseq_srupp.cli_args import (
    child_error_line, int_fields, non_negative_int, positive_float, positive_int, positive_int_fields,
    transformer_heads_problem,
)
from fairseq_srupp.bench.flops import srupp_flops_per_token, transformer_flops_per_token
from fairseq_srupp.bench.quality_curves import CurveRecorder, compute_ratio, finite
from fairseq_srupp.data.char_level import binarize_char_corpus, module_command, split_bytes

USER_DIR = str(Path(__file__).resolve().parents[1])
BUILTIN_CORPUS = "pydoc_data.topics (built in)"  # the corpus without --data, as results name it


def flops_budget(flops: float) -> str:
    """How results name an equal-FLOPs budget."""
    return "{:.3g} training FLOPs each".format(flops)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="text file (default: Python's built-in documentation text)")
    p.add_argument("--out", default="quality_out")
    # Sizes, counts and the model shapes are checked here, before anything is written into --out.
    p.add_argument("--seconds", type=positive_float, default=300, help="training seconds per model (equal wall clock)")
    p.add_argument("--flops", type=float, default=0, help="training FLOPs per model (0: what SRU++ used in its wall-clock run)")
    p.add_argument("--skip-flops-runs", action="store_true")
    p.add_argument("--skip-wall-clock-runs", action="store_true",
                   help="train only to --flops (results then do not depend on the machine's speed or load)")
    p.add_argument("--tokens-per-sample", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--warmup-updates", type=non_negative_int, default=100)
    p.add_argument("--validate-every", type=positive_int, default=100, help="updates between validations")
    p.add_argument("--srupp", type=positive_int_fields("hidden,proj,layers"), default="256,128,4",
                   help="SRU++ hidden,proj,layers (default: srupp_lm_tiny)")
    p.add_argument("--srupp-attention-every", type=positive_int, default=1, metavar="K",
                   help="attention in every K-th SRU++ layer only (the paper's k; default 1: every layer)")
    p.add_argument("--transformer", type=positive_int_fields("dim,ffn,layers,heads"), default="128,448,4,4",
                   help="transformer dim,ffn,layers,heads (default: about srupp_lm_tiny's parameter count)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1, help="fairseq-train's --seed (initialisation, dropout, batch order)")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    p.add_argument("--gpu", action="store_true", help="train on the GPU instead of the CPU")
    args = p.parse_args(argv)
    if args.skip_wall_clock_runs and (args.skip_flops_runs or args.flops <= 0):
        p.error("--skip-wall-clock-runs needs --flops > 0 (and no --skip-flops-runs): it leaves only the "
                "equal-FLOPs runs")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1), got {}".format(args.dropout))
    problem = transformer_heads_problem(args.transformer)
    if problem is not None:
        p.error(problem)
    return args


def run_training(name, train_args, recorder, log_path, threads):
    """Run fairseq-train, echoing and recording its output; return the child's peak RSS in MiB."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    print("\n[{}]".format(name), end="")
    # fairseq makes its --save-dir even with --no-save: a scratch one, not checkpoints/ in the user's folder
    scratch = tempfile.TemporaryDirectory()
    cmd = module_command("fairseq_cli.train", list(train_args) + ["--save-dir", scratch.name])
    error_line = None  # the child's own account of a failure: the one line shown if it fails
    with scratch, open(log_path, "w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                               text=True, env=env, bufsize=1) as proc:
        for line in proc.stdout:
            log.write(line)
            recorder.feed(line)
            error_line = child_error_line([line]) or error_line
            if "| valid |" in line or "| train |" in line:
                sys.stdout.write("[{}] {}".format(name, line))
                sys.stdout.flush()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit("error: {} training failed: {} (log: {})".format(
            name, error_line or "fairseq-train exited with status {}".format(proc.returncode), log_path))
    if not recorder.points:
        raise SystemExit("error: {} training logged no validation: lower --validate-every (log: {})".format(
            name, log_path))
    return usage.ru_maxrss / 1024.0


def model_specs(args, vocab):
    d, p, n = int_fields(args.srupp)
    dim, ffn, layers, heads = int_fields(args.transformer)
    T, B = args.tokens_per_sample, args.batch_size
    common = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", 0.01, "--clip-norm", 1.0,
              "--lr", args.lr, "--lr-scheduler", "inverse_sqrt", "--warmup-updates", args.warmup_updates,
              "--warmup-init-lr", 1e-7, "--tokens-per-sample", T, "--batch-size", B, "--batch-size-valid", 4,
              "--validate-interval-updates", args.validate_every, "--validate-interval", 10 ** 6,
              "--no-save", "--log-format", "simple", "--log-interval", args.validate_every, "--num-workers", 0,
              "--seed", args.seed, "--dropout", args.dropout]
    if not args.gpu:
        common.append("--cpu")
    return {
        "srupp_lm": dict(
            flops_per_token=srupp_flops_per_token(d, p, n, vocab, T,
                                                  attention_every_n_layers=args.srupp_attention_every),
            args=["--user-dir", USER_DIR, "--task", "srupp_language_modeling", "--arch", "srupp_lm_tiny",
                  "--hidden-size", d, "--proj-size", p, "--num-layers", n, "--attn-dropout", args.dropout,
                  "--attention-every-n-layers", args.srupp_attention_every, "--eval-window", T] + common,
        ),
        "transformer_lm": dict(
            flops_per_token=transformer_flops_per_token(dim, ffn, layers, vocab, T),
            args=["--task", "language_modeling", "--sample-break-mode", "none", "--arch", "transformer_lm",
                  "--decoder-embed-dim", dim, "--decoder-input-dim", dim, "--decoder-output-dim", dim,
                  "--decoder-ffn-embed-dim", ffn, "--decoder-layers", layers,
                  "--decoder-attention-heads", heads] + common,
        ),
    }


def train_pair(args, data_bin, out, specs, budget, earlier=None):
    """Train both models under one budget; return {model: run record}. A record in ``earlier`` ({model: run
    record} of an equal-FLOPs budget on the same corpus) is taken instead of training when it was trained with
    exactly the arguments this run would use (``train_args``: model, optimizer, schedule, rate, batch, budget)."""
    runs = {}
    tokens_per_update = args.batch_size * args.tokens_per_sample
    for name, spec in specs.items():
        if budget["kind"] == "seconds":
            limit = ["--stop-time-hours", budget["value"] / 3600.0, "--max-update", 10 ** 9]
        else:
            updates = max(1, int(budget["value"] // (spec["flops_per_token"] * tokens_per_update)))
            limit = ["--max-update", updates]
        train_args = [str(a) for a in spec["args"] + limit]
        before = (earlier or {}).get(name, {})
        # the FLOPs per token too: the points' FLOPs axis is counted with it
        if before.get("train_args") == train_args and before.get("flops_per_token") == spec["flops_per_token"]:
            print("\n[{}] reusing the run trained with the same arguments".format(name))
            runs[name] = before
            continue
        recorder = CurveRecorder(tokens_per_update, spec["flops_per_token"])
        peak = run_training(name, [data_bin] + spec["args"] + limit, recorder,
                            out / "{}_{}.log".format(name, budget["kind"]), args.threads)
        last = recorder.points[-1]
        runs[name] = {
            "params": recorder.params,
            "flops_per_token": spec["flops_per_token"],
            "tokens_per_second": last["tokens"] / last["seconds"] if last["seconds"] > 0 else None,
            "peak_rss_mib": peak,
            "final_loss": last["loss"],
            "points": recorder.points,
            "train_args": train_args,  # fairseq-train's, but the data folder: what reuse compares
        }
    return runs


def markdown(results):
    lines = ["# Quality per compute: srupp_lm vs transformer_lm", "",
             "corpus: {corpus} · tokens per update: {tokens_per_update} · device: {device} · lr: {lr}".format(
                 **results["setup"]), ""]
    for run_name, runs in results["runs"].items():
        lines += ["## {} ({})".format(run_name, results["budgets"][run_name]), "",
                  "| model | parameters | final valid BPC | training tokens/s | peak memory (MiB) | updates | training FLOPs |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for model, r in runs.items():
            last = r["points"][-1]
            lines.append("| {} | {:,} | {:.3f} | {:,.0f} | {:,.0f} | {} | {:.3g} |".format(
                model, r["params"] or 0, r["final_loss"], r["tokens_per_second"] or 0, r["peak_rss_mib"],
                last["updates"], last["flops"]))
        lines.append("")
    lines += ["## Compute the Transformer needs to reach SRU++'s final loss (SRU++'s {} run)".format(
        next(iter(results["runs"])).replace("_", " ")), ""]
    for axis, ratio in results["ratios"].items():
        lines.append("- {}: {}".format(axis, describe_ratio(ratio)))
    lines += ["", "## Compute SRU++ needs to reach the Transformer's final loss, as a fraction of the Transformer's", ""]
    for axis, ratio in results["srupp_fraction"].items():
        lines.append("- {}: {}".format(axis, describe_fraction(ratio)))
    return "\n".join(lines) + "\n"


def describe_fraction(ratio):
    if ratio["ratio"] is not None:
        return "{:.2f} of the Transformer's (1/{:.1f}; target loss {:.3f})".format(
            ratio["ratio"], 1 / ratio["ratio"], ratio["target_loss"])
    return "more than {:.2f} of the Transformer's: SRU++ never reached loss {:.3f}".format(
        ratio["lower_bound"], ratio["target_loss"])


def describe_ratio(ratio):
    if ratio["ratio"] is not None:
        return "{:.2f}x SRU++'s (target loss {:.3f})".format(ratio["ratio"], ratio["target_loss"])
    return "more than {:.2f}x SRU++'s: the Transformer never reached loss {:.3f}".format(
        ratio["lower_bound"], ratio["target_loss"])


def plot(results, path):
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = [("seconds", "training seconds"), ("tokens", "training tokens"), ("flops", "training FLOPs")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"equal_wall_clock": "-", "equal_flops": "--"}
    colors = {"srupp_lm": "tab:red", "transformer_lm": "tab:blue"}
    for run_name, runs in results["runs"].items():
        for model, r in runs.items():
            for ax, (axis, label) in zip(axes, axes_names):
                ax.plot([p[axis] for p in r["points"]], [p["loss"] for p in r["points"]], styles[run_name],
                        color=colors[model], marker="o", markersize=3, label="{} ({})".format(model, run_name))
                ax.set_xlabel(label)
                ax.set_ylabel("validation bits per byte")
                ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SRU++ vs Transformer: validation loss against training compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure(args, earlier=None):
    """Train both models under each budget of ``args``; return the results (see the module docstring).
    ``earlier``: {model: run record} of equal-FLOPs runs on the same corpus that may be reused (see
    :func:`train_pair`)."""
    out = Path(args.out).resolve()
    if args.data:
        if not Path(args.data).is_file():
            raise SystemExit("error: --data {} is not a file".format(args.data))
        corpus, corpus_name = Path(args.data).read_bytes(), args.data
    else:
        from fairseq_srupp.demo import builtin_corpus

        corpus, corpus_name = builtin_corpus(), BUILTIN_CORPUS
    try:
        split_bytes(corpus)  # its size check, before --out is made
    except ValueError as err:
        raise SystemExit("error: --data {}: {}".format(corpus_name, err))
    if out.exists() and not out.is_dir():
        raise SystemExit("error: --out {} is a file: give a directory (created if missing) for the results".format(
            args.out))
    out.mkdir(parents=True, exist_ok=True)  # once the corpus is read: a missing --data leaves no folder behind
    data_bin = binarize_char_corpus(corpus, out / "data")
    if not args.gpu:
        # Compile the CPU extensions (recurrence, dropout) now: a first-use build inside
        # fairseq-train would count against SRU++'s training-time budget.
        from fairseq_srupp.ops import load_cpu_extensions

        load_cpu_extensions()
    vocab = sum(1 for _ in open(data_bin / "dict.txt")) + 4
    specs = model_specs(args, vocab)

    results = {
        "setup": {"corpus": corpus_name, "tokens_per_update": args.batch_size * args.tokens_per_sample,
                  "device": "GPU" if args.gpu else "CPU ({} threads)".format(args.threads), "vocab": vocab,
                  "lr": args.lr, "flops_per_token": {m: s["flops_per_token"] for m, s in specs.items()}},
        "budgets": {},
        "runs": {},
    }
    if not args.skip_wall_clock_runs:
        results["budgets"]["equal_wall_clock"] = "{:.0f} training seconds each".format(args.seconds)
        results["runs"]["equal_wall_clock"] = train_pair(args, data_bin, out, specs,
                                                         {"kind": "seconds", "value": args.seconds})
    if not args.skip_flops_runs:
        flops = args.flops or results["runs"]["equal_wall_clock"]["srupp_lm"]["points"][-1]["flops"]
        results["budgets"]["equal_flops"] = flops_budget(flops)
        results["runs"]["equal_flops"] = train_pair(args, data_bin, out, specs, {"kind": "flops", "value": flops},
                                                    earlier)
    # The final losses compared are those of the first budget's runs (the wall-clock ones unless skipped).
    reference = next(iter(results["runs"].values()))
    srupp_curve = reference["srupp_lm"]["points"]
    transformer_curves = [runs["transformer_lm"]["points"] for runs in results["runs"].values()]
    results["ratios"] = {axis: compute_ratio(srupp_curve, transformer_curves, axis)
                         for axis in ("flops", "seconds", "tokens")}
    # The converse (the brief's target): SRU++'s compute to reach the Transformer's final loss, as a
    # fraction of the Transformer's.
    transformer_curve = reference["transformer_lm"]["points"]
    srupp_curves = [runs["srupp_lm"]["points"] for runs in results["runs"].values()]
    results["srupp_fraction"] = {axis: compute_ratio(transformer_curve, srupp_curves, axis)
                                 for axis in ("flops", "seconds", "tokens")}
    return results


def write_results(results, out):
    """results.json, results.md and curves.png into ``out``; returns the markdown."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (out / "results.md").write_text(text)
    plot(results, out / "curves.png")
    return text


def main(argv=None):
    args = parse_args(argv)
    results = measure(args)
    out = Path(args.out).resolve()
    print("\n" + write_results(results, out))
    print("wrote {}, {} and {}".format(out / "results.json", out / "results.md", out / "curves.png"))
    print("Training FLOPs SRU++ needs to reach the Transformer's final validation loss: {}".format(
        describe_fraction(results["srupp_fraction"]["flops"])))
    print("Training FLOPs the Transformer needs to reach SRU++'s final validation loss: {}".format(
        describe_ratio(results["ratios"]["flops"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
