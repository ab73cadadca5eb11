"""A reduced quality-per-compute run: outputs well-formed, numbers finite (not that SRU++ wins)."""
import json

import pytest

from fairseq_srupp.bench.quality import main
from fairseq_srupp.bench.quality_curves import compute_ratio, finite, first_reaching
from cli_utils import synthetic_text


def test_first_reaching_interpolates_and_ratio_bounds():
    curve = [{"flops": 1.0, "loss": 4.0}, {"flops": 3.0, "loss": 2.0}]
    assert first_reaching(curve, 3.0, "flops") == pytest.approx(2.0)
    assert first_reaching(curve, 1.0, "flops") is None
    srupp = [{"flops": 1.0, "loss": 3.0}]
    assert compute_ratio(srupp, [curve], "flops")["ratio"] == pytest.approx(2.0)
    unreached = compute_ratio([{"flops": 1.0, "loss": 1.5}], [curve, curve[:1]], "flops")
    assert unreached["ratio"] is None and unreached["lower_bound"] == pytest.approx(3.0)


def test_reduced_benchmark_writes_json_table_and_plot(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(synthetic_text(60000))
    out = tmp_path / "out"
    main(["--data", str(text), "--out", str(out), "--seconds", "2", "--validate-every", "20", "--srupp", "32,16,1",
          "--transformer", "16,32,1,2", "--tokens-per-sample", "32", "--batch-size", "4", "--threads", "1",
          "--warmup-updates", "10"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"equal_wall_clock", "equal_flops"}
    for runs in results["runs"].values():
        assert set(runs) == {"srupp_lm", "transformer_lm"}
        for record in runs.values():
            assert record["params"] > 0 and finite(record["peak_rss_mib"]) and finite(record["tokens_per_second"])
            assert len(record["points"]) >= 2
            for point in record["points"]:
                assert all(finite(point[k]) for k in ("seconds", "tokens", "flops", "loss"))
            flops = [p["flops"] for p in record["points"]]
            assert flops == sorted(flops)
    for ratio in list(results["ratios"].values()) + list(results["srupp_fraction"].values()):
        assert finite(ratio["ratio"]) or finite(ratio["lower_bound"])
    equal_flops = results["runs"]["equal_flops"]
    budgets = [r["points"][-1]["flops"] for r in equal_flops.values()]
    assert max(budgets) <= 1.05 * results["runs"]["equal_wall_clock"]["srupp_lm"]["points"][-1]["flops"]
    table = (out / "results.md").read_text()
    assert "| srupp_lm |" in table and "| transformer_lm |" in table
    assert "Transformer needs" in table and "SRU++ needs" in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def curve(*losses):
    return [{"flops": float(i + 1), "loss": loss} for i, loss in enumerate(losses)]


def test_sweep_takes_each_models_best_rate_and_compares_every_pair():
    from fairseq_srupp.bench.quality_sweep import compare, markdown

    def results(srupp, transformer):
        return {"runs": {"equal_flops": {"srupp_lm": {"points": srupp}, "transformer_lm": {"points": transformer}}}}

    per_lr = {0.001: results(curve(4.0, 3.0, 2.0), curve(4.0, 3.5, 3.0)),  # Transformer's best: 3.0
              0.002: results(curve(4.0, 2.5, 1.5), curve(4.0, 3.8, 3.6))}  # SRU++'s best: 1.5
    sweep = compare(per_lr)
    assert sweep["best_lr"] == {"srupp_lm": 0.002, "transformer_lm": 0.001}
    # SRU++ at 2e-3 reaches 3.0 at 1 + (4.0 - 3.0) / (4.0 - 2.5) = 1.667 of the Transformer's 3 FLOPs.
    assert sweep["best_pair"]["ratio"] == pytest.approx((1 + 1 / 1.5) / 3)
    pair = {(p["srupp_lr"], p["transformer_lr"]): p for p in sweep["pairs"]}
    assert len(pair) == 4 and pair[(0.001, 0.001)]["ratio"] == pytest.approx(2 / 3)
    assert pair[(0.001, 0.002)]["ratio"] == pytest.approx((1 + 0.4 / 1.0) / 3)
    text = markdown(sweep, 3.0)
    assert "Best rates: srupp_lm 0.002, transformer_lm 0.001" in text and "**0.556**" in text


def test_reduced_sweep_writes_each_rate_and_the_comparison(tmp_path):
    """One rate end to end (the comparison of several is test_sweep_takes_each_models_best_rate...), then
    the same sweep again with --reuse: nothing is trained twice."""
    from fairseq_srupp.bench.quality_sweep import main as sweep_main

    text = tmp_path / "corpus.txt"
    text.write_bytes(synthetic_text(60000))
    out = tmp_path / "sweep"
    argv = ["--data", str(text), "--out", str(out), "--lrs", "4e-3", "--flops", "1e8", "--validate-every", "10",
            "--srupp", "32,16,1", "--transformer", "16,32,1,2", "--tokens-per-sample", "32", "--batch-size", "4",
            "--threads", "1", "--warmup-updates", "5"]
    sweep_main(argv)
    sweep = json.loads((out / "sweep.json").read_text())
    assert list(sweep["final_loss"]) == ["0.004"] and len(sweep["pairs"]) == 1
    results = json.loads((out / "lr_0.004" / "results.json").read_text())
    assert list(results["runs"]) == ["equal_flops"] and results["setup"]["lr"] == 0.004
    for model, record in results["runs"]["equal_flops"].items():
        assert record["final_loss"] == sweep["final_loss"]["0.004"][model]
        assert record["points"][-1]["flops"] <= 1e8
    assert finite(sweep["best_pair"]["ratio"]) or finite(sweep["best_pair"]["lower_bound"])
    assert "| SRU++ lr \\ Transformer lr | 0.004 |" in (out / "sweep.md").read_text()

    logs = sorted((out / "lr_0.004").glob("*.log"))
    stamps = [log.stat().st_mtime_ns for log in logs]
    sweep_main(argv + ["--reuse"])
    assert [log.stat().st_mtime_ns for log in logs] == stamps  # not trained again
    assert json.loads((out / "sweep.json").read_text()) == sweep

    # an SRU++ ablation in another folder takes the Transformer's run from this one
    ablation = tmp_path / "ablation"
    argv[argv.index("--out") + 1] = str(ablation)
    sweep_main(argv + ["--reuse-from", str(out), "--srupp-attention-every", "2", "--srupp", "32,16,2"])
    assert sorted(p.name for p in (ablation / "lr_0.004").glob("*.log")) == ["srupp_lm_flops.log"]
    runs = json.loads((ablation / "lr_0.004" / "results.json").read_text())["runs"]["equal_flops"]
    assert runs["transformer_lm"] == results["runs"]["equal_flops"]["transformer_lm"]
    assert runs["srupp_lm"]["flops_per_token"] != results["runs"]["equal_flops"]["srupp_lm"]["flops_per_token"]


def test_sweep_refuses_the_flags_it_sets():
    from fairseq_srupp.bench.quality_sweep import parse_args

    for argv in (["--flops", "1e8", "--lr", "1e-3"], ["--flops", "1e8", "--seconds=10"],
                 ["--lrs", "0,1e-3", "--flops", "1"], ["--lrs", "x", "--flops", "1"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    with pytest.raises(SystemExit):  # quality's own check: only equal-FLOPs runs need a FLOPs budget
        from fairseq_srupp.bench.quality import parse_args as quality_args
        quality_args(["--skip-wall-clock-runs"])


def test_sweep_reuses_only_runs_with_the_same_arguments(tmp_path, monkeypatch):
    """Per model: a run is reused when its fairseq-train arguments and FLOPs per token are exactly those it
    would be trained with, on the same corpus; so an SRU++ ablation retrains SRU++ only."""
    from fairseq_srupp.bench import quality
    from fairseq_srupp.bench.quality_sweep import earlier_runs

    trained = []

    def fake_training(name, train_args, recorder, log_path, threads):
        trained.append(name)
        recorder.points, recorder.params = [{"seconds": 1.0, "tokens": 1, "flops": 1.0, "loss": 2.0, "updates": 1}], 9
        return 1.0

    monkeypatch.setattr(quality, "run_training", fake_training)
    base = ["--data", "c.txt", "--lr", "0.002", "--flops", "1e12", "--skip-wall-clock-runs"]

    def train(extra, earlier):
        trained.clear()
        qargs = quality.parse_args(base + ["--out", str(tmp_path / "new" / "lr_0.002")] + extra)
        runs = quality.train_pair(qargs, "bin", tmp_path, quality.model_specs(qargs, 70),
                                  {"kind": "flops", "value": qargs.flops}, earlier)
        return qargs, runs, list(trained)

    qargs, runs, first = train([], None)
    assert first == ["srupp_lm", "transformer_lm"]
    assert earlier_runs(qargs, [tmp_path / "new", tmp_path / "old"]) == {}  # nothing there yet
    (tmp_path / "old" / "lr_0.002").mkdir(parents=True)
    (tmp_path / "old" / "lr_0.002" / "results.json").write_text(
        json.dumps({"setup": {"corpus": "c.txt"}, "runs": {"equal_flops": runs}}))
    earlier = earlier_runs(qargs, [tmp_path / "new", tmp_path / "old"])
    assert earlier == json.loads(json.dumps(runs))
    assert train([], earlier)[2] == []  # the same arguments: nothing trained again
    for extra, retrained in ((["--srupp", "128,64,4"], ["srupp_lm"]), (["--srupp-attention-every", "2"], ["srupp_lm"]),
                             (["--transformer", "64,128,2,2"], ["transformer_lm"]),
                             (["--flops", "2e12"], ["srupp_lm", "transformer_lm"]),
                             (["--batch-size", "8"], ["srupp_lm", "transformer_lm"]),
                             (["--dropout", "0.2"], ["srupp_lm", "transformer_lm"]),
                             (["--seed", "2"], ["srupp_lm", "transformer_lm"])):
        assert train(extra, earlier)[2] == retrained, extra
    # another rate or corpus finds nothing to reuse
    for extra in (["--lr", "0.004"], ["--data", "d.txt"]):
        assert earlier_runs(quality.parse_args(base + extra), [tmp_path / "old"]) == {}, extra
    # a run whose FLOPs per token were counted otherwise (its FLOPs axis) is trained again
    earlier["srupp_lm"]["flops_per_token"] *= 1.2
    assert train([], earlier)[2] == ["srupp_lm"]
