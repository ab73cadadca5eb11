"""Quality per compute at each model's best learning rate: the equal-FLOPs runs of
:mod:`fairseq_srupp.bench.quality` repeated for every ``--lrs`` value.

One shared learning rate can favour either model. This trains both at every rate to the same
``--flops`` (only the equal-FLOPs runs, so the curves do not depend on the machine's speed or load),
takes each model's best rate (lowest final validation loss) and reports the training FLOPs SRU++
needs to reach the Transformer's final loss, as a fraction of the Transformer's, for the best pair and
for every pair of rates. Each rate's own results go to ``--out``/lr_<rate>/; the comparison to
``sweep.json`` and ``sweep.md``. Other options are :mod:`~fairseq_srupp.bench.quality`'s.
"""
import argparse
import json
import sys
from pathlib import Path

from fairseq_srupp.bench import quality
from fairseq_srupp.bench.quality_curves import compute_ratio

MODELS = ("srupp_lm", "transformer_lm")


def parse_args(argv=None):
    # no abbreviations: quality's --lr would otherwise be taken for --lrs
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--lrs", default="1e-3,2e-3,4e-3,8e-3,1.6e-2", help="comma-separated peak learning rates")
    p.add_argument("--flops", type=float, required=True,
                   help="training FLOPs per model and rate (2.8e13 is about 300 s of SRU++ on 2 CPU cores)")
    p.add_argument("--out", default="quality_sweep_out")
    p.add_argument("--reuse", action="store_true",
                   help="keep a model's earlier run at a rate (--out/lr_<rate>/results.json) when it was trained with "
                        "the same fairseq-train arguments (sizes, optimizer, rate, batch, --flops) on the same corpus, "
                        "instead of training it again")
    p.add_argument("--reuse-from", action="append", default=[], metavar="DIR",
                   help="also look for such runs in another sweep's --out folder (repeatable; implies --reuse): "
                        "e.g. an SRU++ ablation trains only SRU++ and takes the Transformer's runs from there")
    args, rest = p.parse_known_args(argv)
    try:
        args.lrs = [float(v) for v in args.lrs.split(",")]
    except ValueError:
        p.error("--lrs must be comma-separated numbers, got {!r}".format(args.lrs))
    if not args.lrs or min(args.lrs) <= 0 or args.flops <= 0:
        p.error("--lrs must be positive and --flops > 0")
    for flag in ("--lr", "--skip-wall-clock-runs", "--skip-flops-runs", "--seconds"):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            p.error("{} is set by the sweep (equal-FLOPs runs at each of --lrs)".format(flag))
    return args, rest


def fraction(transformer_points, srupp_points):
    """SRU++'s training FLOPs to reach the Transformer's final loss, over the Transformer's (quality's
    ``srupp_fraction``): {"target_loss", "ratio", "lower_bound"}."""
    return compute_ratio(transformer_points, [srupp_points], "flops")


def compare(per_lr):
    """{lr: quality results} -> final losses per rate, each model's best rate, and the fractions."""
    curves = {lr: {m: r["runs"]["equal_flops"][m]["points"] for m in MODELS} for lr, r in per_lr.items()}
    final = {lr: {m: c[m][-1]["loss"] for m in MODELS} for lr, c in curves.items()}
    best = {m: min(final, key=lambda lr: final[lr][m]) for m in MODELS}
    pairs = [{"srupp_lr": s, "transformer_lr": t,
              **fraction(curves[t]["transformer_lm"], curves[s]["srupp_lm"])} for s in curves for t in curves]
    best_pair = fraction(curves[best["transformer_lm"]]["transformer_lm"], curves[best["srupp_lm"]]["srupp_lm"])
    return {"final_loss": final, "best_lr": best, "best_pair": best_pair, "pairs": pairs}


def describe(ratio):
    if ratio["ratio"] is not None:
        return "{:.3f}".format(ratio["ratio"])
    return "> {:.2f} (never reached {:.3f})".format(ratio["lower_bound"], ratio["target_loss"])


def markdown(sweep, flops):
    lrs = list(sweep["final_loss"])
    lines = ["# Quality per compute at each model's best learning rate", "",
             "Equal-FLOPs runs ({:.3g} training FLOPs per model and rate); validation bits per byte.".format(flops),
             "", "| lr | srupp_lm final BPC | transformer_lm final BPC |", "| --- | --- | --- |"]
    lines += ["| {:g} | {:.3f} | {:.3f} |".format(lr, f["srupp_lm"], f["transformer_lm"])
              for lr, f in sweep["final_loss"].items()]
    best = sweep["best_lr"]
    lines += ["", "Best rates: srupp_lm {:g}, transformer_lm {:g}. SRU++'s training FLOPs to reach the "
              "Transformer's final loss, as a fraction of the Transformer's: **{}** (target loss {:.3f}).".format(
                  best["srupp_lm"], best["transformer_lm"], describe(sweep["best_pair"]),
                  sweep["best_pair"]["target_loss"]),
              "", "Every pair (rows: SRU++'s rate; columns: the Transformer's):", "",
              "| SRU++ lr \\ Transformer lr | " + " | ".join("{:g}".format(lr) for lr in lrs) + " |",
              "| --- |" + " --- |" * len(lrs)]
    for s in lrs:
        cells = [describe(next(p for p in sweep["pairs"] if p["srupp_lr"] == s and p["transformer_lr"] == t))
                 for t in lrs]
        lines.append("| {:g} | {} |".format(s, " | ".join(cells)))
    return "\n".join(lines) + "\n"


def earlier_runs(qargs, folders):
    """{model: run record} of the equal-FLOPs runs at ``qargs.lr`` already in ``folders`` (sweeps' ``--out``
    folders, searched in order: ``lr_<rate>/results.json``) on the same corpus. Which of them are reused is
    :func:`quality.train_pair`'s decision: a run whose fairseq-train arguments (model, sizes, optimizer, rate,
    batch, budget) are exactly those it would use. So changing only SRU++'s options retrains only SRU++."""
    corpus = qargs.data or quality.BUILTIN_CORPUS
    runs = {}
    for folder in folders:
        path = Path(folder) / rate_folder(qargs.lr) / "results.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        if results.get("setup", {}).get("corpus") != corpus:
            continue
        for model, record in results.get("runs", {}).get("equal_flops", {}).items():
            runs.setdefault(model, record)
    return runs


def rate_folder(lr):
    return "lr_{:g}".format(lr)


def main(argv=None):
    args, rest = parse_args(argv)
    out = Path(args.out).resolve()
    per_lr = {}
    for lr in args.lrs:
        qargs = quality.parse_args(rest + ["--lr", str(lr), "--flops", str(args.flops), "--skip-wall-clock-runs",
                                           "--out", str(out / rate_folder(lr))])
        earlier = earlier_runs(qargs, [out] + args.reuse_from) if args.reuse or args.reuse_from else None
        per_lr[lr] = quality.measure(qargs, earlier)
        quality.write_results(per_lr[lr], qargs.out)
    sweep = compare(per_lr)
    (out / "sweep.json").write_text(json.dumps({"flops": args.flops, **sweep}, indent=2))  # rates as "0.004"
    text = markdown(sweep, args.flops)
    (out / "sweep.md").write_text(text)
    print("\n" + text)
    print("Training FLOPs SRU++ needs to reach the Transformer's final validation loss, each at its best "
          "learning rate: {}".format(describe(sweep["best_pair"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
