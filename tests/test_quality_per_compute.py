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
    main(["--data", str(text), "--out", str(out), "--seconds", "4", "--validate-every", "20", "--srupp", "32,16,1",
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
