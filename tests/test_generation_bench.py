"""A reduced generation benchmark: report well-formed, numbers finite and positive, memory behaves."""
import json
import math

from fairseq_srupp.bench.generation import format_report, main, parse_args, run_benchmark

TINY = ["--lengths", "16,64", "--srupp", "32,16,2", "--transformer", "16,32,2,2", "--threads", "1"]


def positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_reduced_benchmark_report_and_json(tmp_path, capsys):
    out = tmp_path / "gen.json"
    argv = TINY + ["--window", "8", "--sequence-generator", "8", "--json", str(out)]
    assert main(argv, tune_malloc=lambda: True) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())

    assert results["setup"]["lengths"] == [16, 64] and results["setup"]["window"] == 8
    assert results["setup"]["malloc_tuned"] is True
    assert set(results["models"]) == {"srupp_lm", "transformer_lm"}
    for name, model in results["models"].items():
        assert "skipped" not in model, model.get("skipped")
        assert model["params"] > 0
        assert [r["length"] for r in model["runs"]] == [16, 64]
        for r in model["runs"]:
            for key in ("seconds", "tokens_per_second", "ms_per_token", "first_span_ms_per_token",
                        "last_span_ms_per_token", "last_over_first", "state_mib"):
                assert positive(r[key]), (name, key, r[key])
            assert r["rss_peak_growth_mib"] is not None and r["rss_peak_growth_mib"] >= 0
            assert r["span"] == r["length"] // 2
            assert math.isclose(r["tokens_per_second"] * r["ms_per_token"], 1000.0, rel_tol=1e-9)
        scaling = results["scaling"][name]
        assert (scaling["from"], scaling["to"]) == (16, 64)
        for key in ("ms_per_token", "last_span_ms_per_token", "state_memory"):
            assert positive(scaling[key]), (name, key, scaling[key])

    # The Transformer caches every position: 4x the tokens, 4x the state. SRU++ keeps c and the
    # last `window` keys/values: once past the window its state no longer grows.
    assert math.isclose(results["scaling"]["transformer_lm"]["state_memory"], 4.0, rel_tol=1e-6)
    assert math.isclose(results["scaling"]["srupp_lm"]["state_memory"], 1.0, rel_tol=1e-6)
    versus = results["srupp_over_transformer"]
    assert set(versus) == {"16", "64"}
    assert all(positive(versus[k]["tokens_per_second"]) and positive(versus[k]["state_memory"]) for k in versus)

    for g in results["sequence_generator"].values():
        assert g["generated"] == 9 and positive(g["tokens_per_second"])  # 8 tokens and the final </s>

    for text in ("srupp_lm", "transformer_lm", "tok/s", "last/first", "state MiB", "SRU++ / Transformer",
                 "SequenceGenerator"):
        assert text in printed
    assert "n/a" not in printed.split("(first/last")[0]  # every table cell measured


def test_sampling_single_model_without_window_override():
    results = run_benchmark(parse_args(TINY + ["--models", "srupp_lm", "--sampling", "--batch", "2"]))
    assert set(results["models"]) == {"srupp_lm"} and results["setup"]["decoding"] == "sampling"
    assert results["setup"]["window"] >= 1  # the architecture's eval_window
    assert results["srupp_over_transformer"] == {}
    assert all(positive(r["tokens_per_second"]) for r in results["models"]["srupp_lm"]["runs"])
    assert "srupp_lm" in format_report(results)


def test_json_holds_each_finished_run_while_later_ones_run(tmp_path, monkeypatch):
    """A run stopped for time (the GPU kit's generation step) keeps what it measured: the JSON is
    rewritten after every timed run, marked partial until the last."""
    import fairseq_srupp.bench.generation as generation

    out = tmp_path / "gen.json"
    seen = []
    one = generation.run_one

    def spying_run_one(model, length, args, device, stepper=None):
        if out.exists():  # the runs finished before this one are on disk
            seen.append((length, json.loads(out.read_text())))
        return one(model, length, args, device, stepper)

    monkeypatch.setattr(generation, "run_one", spying_run_one)
    assert main(TINY + ["--models", "srupp_lm", "--json", str(out)], tune_malloc=lambda: False) == 0
    assert [length for length, _ in seen] == [64]
    partial = seen[0][1]
    assert partial["partial"] is True
    assert [r["length"] for r in partial["models"]["srupp_lm"]["runs"]] == [16]
    final = json.loads(out.read_text())
    assert final["partial"] is False and [r["length"] for r in final["models"]["srupp_lm"]["runs"]] == [16, 64]
    assert not (tmp_path / "gen.json.tmp").exists()


def test_stepper_generates_the_tokens_of_the_incremental_state(tmp_path, capsys, monkeypatch):
    """srupp_lm_stepper (a TokenStepper: the fixed-shape ring on the CPU, a CUDA graph per token on a GPU)
    decodes the same greedy tokens as fairseq's incremental state (its DecodingCache here), run after run
    (ring and graph reused)."""
    import pytest
    import torch

    from fairseq_srupp.bench import generation
    from fairseq_srupp.models.token_stepper import TokenStepper

    args = parse_args(TINY + ["--window", "8"])
    generation.write_dictionary(str(tmp_path), args.vocab)
    model, _ = generation.build_model(tmp_path, generation.model_cli_args(args, 80)["srupp_lm"])
    model.eval()
    stepper = TokenStepper(model, 2, mode="ring")
    cpu = torch.device("cpu")
    monkeypatch.setenv("FAIRSEQ_SRUPP_DECODING", "cache")  # the incremental state's own cache, not a ring
    with torch.no_grad():
        cached, _, _, cache_bytes = generation.generate(model, 40, 2, cpu)
        stepped, _, _, ring_bytes = generation.generate(model, 40, 2, cpu, stepper=stepper)
        again = generation.generate(model, 40, 2, cpu, stepper=stepper)[0]
    assert torch.equal(stepped, cached) and torch.equal(again, cached)
    assert ring_bytes > cache_bytes > 0  # the ring's fp32 c and bias besides the same 9 slots

    results = run_benchmark(parse_args(TINY + ["--models", "srupp_lm_stepper", "--decoding", "ring"]))
    info = results["models"]["srupp_lm_stepper"]
    assert info["decoding"] == {"mode": "ring", "graph_failure": None, "graph_recurrence": None,
                                "capture_failures": []}
    assert "TokenStepper ring" in info["description"]
    assert all(positive(r["tokens_per_second"]) for r in info["runs"])
    with pytest.raises(SystemExit):
        parse_args(TINY + ["--decoding", "graph"])
    assert "--decoding graph replays CUDA graphs: it needs --device cuda" in capsys.readouterr().err
