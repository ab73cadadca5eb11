"""The GPU kit (benchmarks/gpu/) on a machine without a GPU: its dry run end to end with an injected
failure, the wheelhouse's pip commands and completeness check, and the offline installer on a fake
wheelhouse (no downloads: CI must not depend on the network)."""
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "benchmarks" / "gpu"
sys.path.insert(0, str(KIT))
sys.path.insert(0, str(KIT.parent))

import recurrence_cuda  # noqa: E402
import run_all  # noqa: E402
import wheelhouse  # noqa: E402
from train_bench import peak_bf16_tflops  # noqa: E402


def kit_env(**extra):
    return dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)


# ------------------------------------------------------------------------------------ dry run


def test_dry_run_reports_every_step_and_survives_a_failing_one(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([str(KIT / "run_all.sh"), "--out", str(out), "--dry-run", "--budget-s", "850"],
                          env=kit_env(SRUPP_GPU_KIT_FAIL="environment"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0
    report = json.loads((out / "report.json").read_text())
    steps = {s["key"]: s for s in report["steps"]}
    assert [s["key"] for s in report["steps"]] == ["install"] + [k for k, _, _ in run_all.STEPS]
    assert report["dry_run"] is True
    for s in report["steps"]:
        assert s["status"] in run_all.STATUSES and isinstance(s["seconds"], float), s
    assert report["summary"] == {k: sum(s["status"] == k for s in report["steps"]) for k in run_all.STATUSES}

    # The injected failure is reported with its cause, and every later step still ran.
    assert steps["environment"]["status"] == "failed"
    assert "failed on purpose" in steps["environment"]["reason"]
    assert "RuntimeError: step environment failed on purpose" in (out / "steps.log").read_text()
    assert steps["install"]["status"] == "skipped"

    tests = steps["kernel_tests"]
    assert tests["status"] == "ok", tests
    assert list(tests["results"]["runs"]) == ["tests/test_token_stepper.py", "tests/test_generator_decoding.py",
                                              "tests/test_optim.py tests/test_batched_update.py",
                                              "tests/test_cuda_kernel.py"]
    for counts in tests["results"]["runs"].values():
        assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0

    cli = steps["cli"]
    assert cli["status"] == "ok", cli
    for run in cli["results"]:
        losses = run["train_losses"]
        assert len(losses) >= 2 and losses[-1] < losses[0] and run["eval_loss"] < losses[0]

    for key in ("recurrence", "training"):
        assert steps[key]["status"] == "skipped" and "no CUDA GPU" in steps[key]["reason"]
    sweep = steps["recurrence"]["results"]["smoke"]["prefetch"]  # the prefetch comparison's code, on the CPU
    assert {(r["case"], r["B"], r["prefetch"]) for r in sweep["rows"]} == {
        (case[0], b, p) for case in recurrence_cuda.PREFETCH_CASES for b in (2, 1) for p in (1, 2)}
    assert sweep["fastest_prefetch"] == {
        "{}, B={}".format(case, b): min((r for r in sweep["rows"] if (r["case"], r["B"]) == (case, b)),
                                        key=lambda r: r["ms"])["prefetch"]
        for b in (2, 1) for case, *_ in recurrence_cuda.PREFETCH_CASES}
    uncast, cast_first = (c[0] for c in recurrence_cuda.PREFETCH_CASES[1:])
    for b in (2, 1):
        best = sweep["fastest_prefetch"]["{}, B={}".format(uncast, b)]
        ms = {r["case"]: r["ms"] for r in sweep["rows"] if (r["B"], r["prefetch"]) == (b, best)}
        assert sweep["autocast_uncast_speedup"]["B={}".format(b)] == pytest.approx(ms[cast_first] / ms[uncast])
    l2 = steps["recurrence"]["results"]["smoke"]["l2_ahead"]  # the L2-prefetch comparison's code, on the CPU
    assert [(r["case"], r["l2_ahead"]) for r in l2["rows"]] == [
        (case[0], distance) for distance in (0, 16) for case in recurrence_cuda.PREFETCH_CASES[:2]]
    assert set(l2["fastest_l2_ahead"]) == {"{}, B=2".format(case[0]) for case in recurrence_cuda.PREFETCH_CASES[:2]}
    assert any(line.startswith("Inputs asked of L2 ahead") for line in steps["recurrence"]["markdown"])
    blocks = steps["recurrence"]["results"]["smoke"]["blocks"]  # the block-size comparison's code, on the CPU
    assert [(r["case"], r["block"], r["threads"]) for r in blocks["rows"]] == [
        (case[0], size, threads) for size, threads in (("auto", 32), (256, 256))  # 16 columns over 4 host "SMs"
        for case in recurrence_cuda.PREFETCH_CASES[:2]]
    assert blocks["fastest_block"] == {
        "{}, B=2".format(case): min((r for r in blocks["rows"] if r["case"] == case), key=lambda r: r["ms"])["block"]
        for case, *_ in recurrence_cuda.PREFETCH_CASES[:2]}
    training = steps["training"]["results"]
    assert not training["errors"]
    assert {(r["model"], r["dtype"]) for r in training["rows"]} == {
        (m, d) for m in ("srupp_lm", "sru_reference", "transformer_lm") for d in ("float32", "bfloat16")} | {
        ("srupp_lm_additive", "bfloat16"),  # the A/B of the attention mask: bf16 only
        ("srupp_lm_sdpa", "bfloat16"),  # the A/B of the wide heads' kernel: bf16 only
        ("srupp_lm_half", "bfloat16"),  # fairseq's --bf16 / --fp16 update: half precision only
        ("srupp_lm_half_loops", "bfloat16"),  # the same with fairseq's per-parameter loops
        ("srupp_lm_compiled", "bfloat16")}  # torch.compile (aot_eager on the CPU), last
    assert set(training["ratios"]["bfloat16"]) >= {"structured_over_additive_tokens_per_s",
                                                   "structured_over_additive_peak_memory"}
    assert training["ratios"]["bfloat16"]["compiled_over_eager_tokens_per_s"] > 0
    assert training["ratios"]["bfloat16"]["auto_over_sdpa_tokens_per_s"] > 0
    assert any("all heads through SDPA (srupp_lm_sdpa)" in line for line in steps["training"]["markdown"])
    assert training["ratios"]["bfloat16"]["half_over_reference_tokens_per_s"] > 0
    assert training["ratios"]["bfloat16"]["batched_over_loops_tokens_per_s"] > 0
    assert any("srupp_lm_half / srupp_lm_half_loops" in line for line in steps["training"]["markdown"])
    assert any("srupp_lm_half (fairseq --bf16) / sru reference" in line for line in steps["training"]["markdown"])
    assert any(t["target"] == "enwik8-base training bf16: srupp_lm_half MFU >= 45%" for t in training["targets"])
    assert any("srupp_lm compiled / eager: tokens/s" in line for line in steps["training"]["markdown"])
    assert any("structured / additive causal mask tokens/s" in t["target"] for t in training["targets"])
    for r in training["rows"]:
        assert r["tokens_per_s"] == pytest.approx(training["batch"] * training["length"] / (r["ms_per_step"] / 1000))
    profile = training["profile"]  # where the step's time goes, srupp_lm only on the CPU
    assert not profile["errors"]
    assert [(p["model"], p["dtype"]) for p in profile["profiles"]] == [("srupp_lm", "bfloat16")]
    spent = {c["name"]: c["ms_per_step"] for c in profile["profiles"][0]["categories"]}
    assert spent["matmul"] > 0 and spent["recurrence"] > 0
    assert any(line.startswith("srupp_lm bfloat16: ") for line in steps["training"]["markdown"])
    larger = training["larger_batch"]  # the same models at 4x the batch, beside the targets
    assert not larger["errors"] and larger["batch"] == 4 * training["batch"]
    assert {r["model"] for r in larger["rows"]} == {"srupp_lm_half", "sru_reference"}
    assert "| model | ms/step | tokens/s | peak MiB | MFU |" in steps["training"]["markdown"]

    gen = steps["generation"]
    assert gen["status"] == "ok", gen
    assert set(gen["results"]["summary"]) == {"srupp_lm_stepper", "srupp_lm", "transformer_lm"}
    assert {t["target"] for t in gen["results"]["targets"]} == {
        "generation: {} {} at 16 tokens <= 1.2x at 8".format(name, what)
        for name in ("srupp_lm_stepper", "srupp_lm") for what in ("ms/token", "state memory")}
    assert gen["results"]["models"]["srupp_lm_stepper"]["decoding"] == {
        "mode": "ring", "graph_failure": None, "graph_recurrence": None, "capture_failures": []}
    # fairseq's incremental state holds a ring too (auto on the CPU); on a GPU a graph
    assert gen["results"]["models"]["srupp_lm"]["decoding"]["mode"] == "ring"
    assert set(gen["results"]["sequence_generator"]) == {"srupp_lm", "transformer_lm"}  # merged from two processes

    md = (out / "report.md").read_text()
    assert "DRY RUN" in md and "environment unknown (step 0 failed)" in md
    for s in report["steps"]:
        assert "| {} | {} |".format(s["title"], s["status"].upper() if s["status"] != "ok" else "ok") in md
    assert "## 5. Generation" in md and "| srupp_lm | " in md and "| srupp_lm_stepper | " in md
    assert "srupp_lm fairseq incremental state / TokenStepper ms/token at 16 tokens: " in md
    assert "fairseq's `SequenceGenerator`, beam 1, 8 tokens from `</s>`: srupp_lm " in md


def test_attention_kernel_probe_names_sdpa_backends():
    """The probe train_bench reports per srupp_lm row, run on CPU tensors (no fused CUDA kernel there)."""
    import train_bench

    args = train_bench.parse_args(["--srupp", "32,16,2", "--batch", "2", "--length", "16"])
    for mode in ("auto", "sdpa"):  # auto's score product is for wide heads on CUDA only
        assert train_bench.sdpa_kernel_used(mode, args, torch.float32, "cpu") == "boolean mask (materialised)"
    # CPU's fused kernel has no attention dropout: training (dropout 0.22) falls back to the math one.
    assert train_bench.sdpa_kernel_used("additive", args, torch.float32, "cpu") == "MATH (float mask)"
    args.dropout = 0.0
    assert train_bench.sdpa_kernel_used("additive", args, torch.float32, "cpu") == "FLASH_ATTENTION (float mask)"


def test_report_lists_the_targets_of_measured_steps(tmp_path):
    import steps

    rows = [{"dtype": "bfloat16", "B": 16, "sru_over_ours": 2.5, "of_copy_bandwidth": 0.41},
            {"dtype": "float16", "B": 16, "sru_over_ours": 0.5}]
    row = steps.find(rows, dtype="bfloat16", B=16)
    no_row = steps.find(rows, dtype="float32")
    measured = {"targets": [steps.target("kernel >= 2x sru", row["sru_over_ours"], lambda v: v >= 2),
                            steps.target("copy >= 60%", row["of_copy_bandwidth"], lambda v: v >= 0.6, "{:.1%}"),
                            steps.target("MFU >= 45%", no_row.get("mfu"), lambda v: v >= 0.45)]}
    step = {"key": "recurrence", "title": "3. Recurrence", "status": "ok", "seconds": 1.0, "reason": None,
            "results": measured, "markdown": []}
    skipped = dict(step, key="training", status="skipped", results={"targets": [steps.target("x", 1.0, bool)]})
    report = {"dry_run": False, "budget_s": 470, "started": time.time(), "started_utc": "now", "steps": [step, skipped]}
    run_all.write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert "| kernel >= 2x sru | 2.50 | yes |" in md
    assert "| copy >= 60% | 41.0% | NO |" in md
    assert "| MFU >= 45% | - | - |" in md
    assert "| x |" not in md  # a skipped step's figures are no measurement
    assert json.loads((tmp_path / "report.json").read_text())["targets"] == measured["targets"]


def test_kernel_targets_are_also_read_at_the_fastest_setting_swept():
    """Step 3's table runs the kernels' defaults; the targets are given again for the fastest bf16 setting at B=16
    over the prefetch and staging sweeps, which the training step then runs with."""
    import steps

    case, other = steps.TARGET_CASE, "bf16 U, fp32 x (autocast, U read as bf16)"
    out = {"rows": [{"dtype": "bfloat16", "B": 16, "sru_ms": 4.0}],
           "prefetch": {"rows": [{"case": case, "B": 16, "prefetch": 4, "ms": 2.0, "of_copy_bandwidth": 0.3},
                                 {"case": case, "B": 16, "prefetch": 8, "ms": 1.6, "of_copy_bandwidth": 0.4},
                                 {"case": other, "B": 16, "prefetch": 1, "ms": 0.1},  # another case,
                                 {"case": case, "B": 4, "prefetch": 1, "ms": 0.5}]},  # another batch
           "staging": {"rows": [{"case": case, "B": 16, "stage_steps": 0, "ms": 2.1, "of_copy_bandwidth": 0.29},
                                {"case": case, "B": 16, "stage_steps": 16, "ms": 1.0, "of_copy_bandwidth": 0.62}]}}
    assert steps.fastest_kernel_setting(out)[0] == "shared-memory stages of 16 steps"
    sru, bandwidth = steps.fastest_setting_targets(out)
    assert (sru["value"], sru["met"], bandwidth["value"], bandwidth["met"]) == ("4.00", True, "62.0%", True)
    assert "fastest setting (shared-memory stages of 16 steps)" in sru["target"]
    out["staging"] = None  # its sweep never ran: the ring's fastest depth
    sru, bandwidth = steps.fastest_setting_targets(out)
    assert "(register ring, P=8)" in sru["target"] and (sru["value"], bandwidth["met"]) == ("2.50", False)
    assert steps.fastest_setting_targets({"rows": []}) == []


def test_a_failing_sweep_keeps_its_rows_and_the_next_sweep_still_runs():
    """Step 3 on a GPU where one kernel variant fails (say, the staged kernels do not compile there): that
    sweep's rows so far stay, the step is reported failed with the reason, and the sweeps after it run."""
    import steps

    case = steps.TARGET_CASE
    saved = []

    def failing(keep):
        keep({"rows": [{"case": case, "B": 16, "stage_steps": 0, "ms": 2.0, "of_copy_bandwidth": 0.3}],
              "fastest_stage_steps": {}, "L": 1, "d": 1, "default_stage_steps": 0})
        raise RuntimeError("NVRTC: cp.async unsupported\nmore")

    def fine(keep):
        part = {"rows": [], "fastest_block": {}}
        keep(part)
        return part

    out = {"rows": [{"dtype": "bfloat16", "B": 16, "sru_ms": 4.0}], "sru": "timed", "targets": []}
    sweeps = [("staging", "staging comparison", lambda part: ["staging table"], failing),
              ("blocks", "block-size comparison", lambda part: ["blocks table"], fine)]
    original = steps.save
    steps.save = lambda r: saved.append(r) or r
    try:
        res = steps.run_sweeps(out, ["kernel table"], True, sweeps)
    finally:
        steps.save = original
    assert res["status"] == "failed"
    assert res["reason"] == "staging comparison failed: RuntimeError: NVRTC: cp.async unsupported"
    assert res["markdown"][:5] == ["kernel table", "", "staging table", "", "blocks table"]
    assert out["staging"]["rows"] and out["blocks"] == {"rows": [], "fastest_block": {}}
    assert [t["value"] for t in out["targets"]] == ["2.00", "30.0%"]  # the staging sweep's one row, kept
    assert any(r["reason"] and "block-size comparison unfinished" in r["reason"] for r in saved)


def test_recurrence_bytes_are_counted_per_tensor_moved():
    L, B, d = 3, 2, 5
    per_position = {  # bytes per (t, b, unit): forward reads U, x and writes h, c; backward reads U, x, c,
        # grad_h and writes grad_U, grad_x
        (2, 2, False): (3 * 2 + 2 + 2 + 4) + (3 * 2 + 2 + 4 + 2 + 3 * 2 + 2),
        (2, 4, False): (3 * 2 + 4 + 4 + 4) + (3 * 2 + 4 + 4 + 4 + 3 * 2 + 4),
        # U cast to fp32 (read 2, write 4 per value) and grad_U cast back (read 4, write 2), kernels all fp32
        (2, 4, True): (3 * 4 + 4 + 4 + 4) + (3 * 4 + 4 + 4 + 4 + 3 * 4 + 4) + 2 * 3 * (2 + 4),
    }
    for (u_elem, x_elem, widen), expected in per_position.items():
        assert recurrence_cuda.kernel_bytes(L, B, d, 3, u_elem, x_elem, widen) == L * B * d * expected
    assert recurrence_cuda.kernel_bytes(L, B, d, 3, 2) == L * B * d * per_position[(2, 2, False)]


def test_steps_that_do_not_fit_the_budget_are_skipped(tmp_path):
    run_all.main(["--out", str(tmp_path), "--dry-run", "--started", str(time.time() - 1000), "--budget-s", "100"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["status"] for s in report["steps"][1:]] == ["skipped"] * len(run_all.STEPS)
    assert all(s["reason"] == "time budget used up" for s in report["steps"][1:])


def test_a_step_past_its_limit_is_stopped_and_keeps_its_partial_result(tmp_path, monkeypatch):
    monkeypatch.setenv("SRUPP_GPU_KIT_HANG", "environment")
    start = time.time()
    run_all.main(["--out", str(tmp_path), "--dry-run", "--steps", "environment", "--budget-s", "8"])
    assert time.time() - start < 30
    step = json.loads((tmp_path / "report.json").read_text())["steps"][1]
    assert step["status"] == "timeout" and step["seconds"] < 15
    assert step["reason"].startswith("stopped after its") and step["reason"].endswith("; unfinished on purpose")
    assert step["results"] == {"partial": True} and step["markdown"] == ["partial result"]
    assert "| 0. Environment | TIMEOUT |" in (tmp_path / "report.md").read_text()


def test_stale_build_locks_are_cleared_except_for_a_running_build(tmp_path):
    for name in ("fairseq_srupp_recurrence_cpu_abc", "sru_cuda", "sru_cpu", "other"):
        (tmp_path / "py312_cu130" / name).mkdir(parents=True)
        (tmp_path / "py312_cu130" / name / "lock").write_text("")
    (tmp_path / "other" / "notalock").parent.mkdir()
    (tmp_path / "other" / "notalock").write_text("")
    removed = run_all.clear_stale_build_locks([tmp_path, tmp_path / "missing"], keep_prefixes=("sru",))
    assert sorted(Path(p).parent.name for p in removed) == ["fairseq_srupp_recurrence_cpu_abc", "other"]
    assert sorted(p.parent.name for p in tmp_path.glob("**/lock")) == ["sru_cpu", "sru_cuda"]
    assert (tmp_path / "other" / "notalock").exists()


def test_run_all_sh_needs_an_output_folder():
    proc = subprocess.run([str(KIT / "run_all.sh"), "--dry-run"], env=kit_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: give the report folder")


def test_peak_by_device_name():
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA H200") == 989.0
    assert peak_bf16_tflops("Some Future GPU") is None


# ------------------------------------------------------------------------------------ wheelhouse


def test_wheelhouse_commands_are_well_formed(tmp_path):
    proc = subprocess.run([sys.executable, str(KIT / "wheelhouse.py"), "--print-commands", "--python-version", "3.12",
                           "--dest", str(tmp_path)], stdout=subprocess.PIPE, text=True, check=True)
    commands = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert len(commands) == 4
    download = commands[0]
    assert download[1:4] == ["-m", "pip", "download"]
    for cmd, name in zip(commands[1:], ("wheel", "download", "wheel")):
        assert cmd[3] == name
    assert commands[3][-1] == str(REPO)
    # pip's own parser, in a child: importing pip's internals imports the standard library's distutils,
    # after which setuptools (and so torch's C++ extension builder) no longer imports in this process.
    parse = """
import json, sys
from pip._internal.cli import cmdoptions
from pip._internal.commands import create_command
commands = json.loads(sys.argv[1])
options, args = create_command("download").parse_args(commands[0][4:])
cmdoptions.check_dist_restriction(options)  # raises CommandError on an invalid combination
for cmd in commands[1:]:
    create_command(cmd[3]).parse_args(cmd[4:])
print(json.dumps({"python_version": options.python_version, "ignore_dependencies": options.ignore_dependencies,
                  "args": args, "download_dir": options.download_dir}))
"""
    parsed = json.loads(subprocess.run([sys.executable, "-c", parse, json.dumps(commands)], stdout=subprocess.PIPE,
                                       text=True, check=True).stdout)
    assert parsed["python_version"] == [3, 12] and parsed["ignore_dependencies"]
    assert set(parsed["args"]) == set(wheelhouse.DOWNLOAD) and parsed["download_dir"] == str(tmp_path)
    assert not any(a.split("==")[0].startswith(("torch", "cupy", "numpy")) for a in parsed["args"])


def test_every_requirement_of_the_project_is_in_the_wheelhouse_or_on_the_target():
    assert wheelhouse.missing_project_requirements("3.12") == []
    # Able to fail: a target without torch, and the extras of an older Python.
    assert wheelhouse.missing_project_requirements("3.12", provided=wheelhouse.TARGET_PACKAGES - {"torch"}) == [
        "torch>=2.0"]
    assert "fairseq>=0.12.2; python_version < \"3.11\"" in wheelhouse.missing_project_requirements("3.10")


def fake_wheel(folder, name, version, requires=(), module_source="VALUE = 1\n"):
    """A minimal pure-Python wheel holding module ``name``."""
    path = Path(folder) / "{}-{}-py3-none-any.whl".format(name, version)
    info = "{}-{}.dist-info".format(name, version)
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n".format(name, version)
    meta += "".join("Requires-Dist: {}\n".format(r) for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("{}.py".format(name), module_source)
        zf.writestr(info + "/METADATA", meta)
        zf.writestr(info + "/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(info + "/RECORD", "".join("{},,\n".format(f) for f in (
            name + ".py", info + "/METADATA", info + "/WHEEL", info + "/RECORD")))
    return path


def test_check_folder_finds_missing_mismatched_and_duplicate_packages(tmp_path):
    fake_wheel(tmp_path, "alpha", "1.0", ["beta>=2", "torch", "numpy", "gamma; extra == 'dev'",
                                          "delta; python_version < '3.9'"])
    fake_wheel(tmp_path, "beta", "2.1", ["epsilon==1.*"])
    assert wheelhouse.check_folder(tmp_path, "3.12") == ["beta needs epsilon==1.*: no wheel in the folder and not on "
                                                         "the target"]
    fake_wheel(tmp_path, "epsilon", "2.0")
    assert wheelhouse.check_folder(tmp_path, "3.12") == ["beta needs epsilon==1.* but the folder has 2.0"]
    fake_wheel(tmp_path, "epsilon", "1.5")
    assert wheelhouse.check_folder(tmp_path, "3.12") == [
        "two wheels of epsilon: epsilon-1.5-py3-none-any.whl and epsilon-2.0-py3-none-any.whl (pip refuses to "
        "install both)", "beta needs epsilon==1.* but the folder has 2.0"]
    (tmp_path / "epsilon-2.0-py3-none-any.whl").unlink()
    assert wheelhouse.check_folder(tmp_path, "3.12") == []
    # delta is needed on Python 3.8 only, and torch is not on a bare target.
    assert wheelhouse.check_folder(tmp_path, "3.8", provided=frozenset({"numpy"})) == [
        "alpha needs torch: no wheel in the folder and not on the target",
        "alpha needs delta; python_version < \"3.9\": no wheel in the folder and not on the target"]


# ------------------------------------------------------------------------------------ install


def fake_sdist(folder, name, version, module_source):
    """A setuptools source distribution of module ``name``."""
    root = "{}-{}".format(name, version)
    src = Path(folder) / "sdist_src" / root
    src.mkdir(parents=True)
    (src / "{}.py".format(name)).write_text(module_source)
    (src / "setup.py").write_text("from setuptools import setup\nsetup(name={!r}, version={!r}, py_modules=[{!r}])\n"
                                  .format(name, version, name))
    path = Path(folder) / "{}.tar.gz".format(root)
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname=root)
    return path


def install(folder, target):
    return subprocess.run([sys.executable, str(KIT / "install.py"), str(folder), "--target", str(target)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)


def imported_value(target, module):
    out = subprocess.run([sys.executable, "-c", "import {0}; print({0}.VALUE)".format(module)], cwd=str(target),
                         env=dict(os.environ, PYTHONPATH=str(target)), stdout=subprocess.PIPE, text=True, check=True)
    return out.stdout.strip()


def test_install_offline_rebuilds_a_package_whose_wheel_does_not_import(tmp_path):
    house, target = tmp_path / "house", tmp_path / "site"
    house.mkdir()
    fake_wheel(house, "kitgood", "1.0")
    # Stands in for a compiled module built against another ABI: the wheel's module fails to import.
    fake_wheel(house, "kitnative", "1.0", module_source="raise ImportError('built against another numpy')\n")
    fake_sdist(house, "kitnative", "1.0", "VALUE = 'from source'\n")
    (house / "manifest.json").write_text(json.dumps({"python_version": "3.11", "fallback_sdists": [
        {"requirement": "kitnative==1.0", "sdist": "kitnative-1.0.tar.gz", "import_check": ["kitnative"]}]}))
    proc = install(house, target)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "do not import (ImportError: built against another numpy); building it from kitnative-1.0.tar.gz" \
        in proc.stdout
    assert imported_value(target, "kitgood") == "1"
    assert imported_value(target, "kitnative") == "from source"


def test_install_keeps_a_wheel_that_imports(tmp_path):
    house, target = tmp_path / "house", tmp_path / "site"
    house.mkdir()
    fake_wheel(house, "kitnative", "1.0", module_source="VALUE = 'wheel'\n")
    (house / "manifest.json").write_text(json.dumps({"fallback_sdists": [
        {"requirement": "kitnative==1.0", "sdist": "missing.tar.gz", "import_check": ["kitnative"]}]}))
    proc = install(house, target)
    assert proc.returncode == 0, proc.stderr
    assert imported_value(target, "kitnative") == "wheel"


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_install_refuses_what_is_not_a_wheelhouse(tmp_path, make):
    house = tmp_path / "house"
    if make == "empty":
        house.mkdir()
    proc = install(house, tmp_path / "site")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert ("no wheelhouse folder" if make == "missing" else "not a folder made by `make wheelhouse`") in proc.stderr


# ------------------------------------------------------------------------------------ train_bench pieces


def test_half_precision_update_is_radam_on_an_fp32_master_copy():
    """srupp_lm_half's update (fairseq's FP16Optimizer, as fairseq-train --bf16 drives it) against RAdam run
    on fp32 copies of the half parameters and gradients, the loss a sum divided by its tokens."""
    from train_bench import HalfPrecisionUpdate, radam

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)).to(torch.bfloat16)
    reference = [p.detach().float().clone().requires_grad_(True) for p in model.parameters()]
    update, ref_opt = HalfPrecisionUpdate(model, torch.bfloat16), radam(reference)
    assert update.scale == 1.0 and len(update.master_params()) == 4  # bf16: a copy per parameter, unscaled
    tokens = 4
    for weight in (50.0, 0.5, 0.5):  # large gradients (clipping at 1.0 acts), then small ones (it does not)
        x = torch.randn(tokens, 6, dtype=torch.bfloat16)
        loss = model(x).float().pow(2).mean() * weight
        loss.backward()
        for ref, p in zip(reference, model.parameters()):
            ref.grad = p.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(reference, 1.0)
        assert (norm > 1) == (weight > 1) and norm * tokens > 1  # the sum's gradient, undivided, would be clipped
        ref_opt.step()
        for p in model.parameters():
            p.grad = None
        update(model(x).float().pow(2).mean() * weight * tokens, tokens)  # the same loss, as a sum over tokens
        for ref, master, p in zip(reference, update.master_params(), model.parameters()):
            assert p.dtype == torch.bfloat16 and p.grad is None
            torch.testing.assert_close(master.detach(), ref.detach(), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(p.float(), master.detach().to(torch.bfloat16).float(), rtol=0, atol=0)
        for ref, master in zip(reference, update.master_params()):
            ref.data.copy_(master.detach())  # the next step starts where the update is (rounding aside)


def test_half_precision_update_scales_fp16_and_skips_an_overflow():
    from train_bench import HalfPrecisionUpdate

    model = torch.nn.Linear(4, 2).to(torch.float16)
    update = HalfPrecisionUpdate(model, torch.float16)
    assert update.scale == 128.0
    before = [p.detach().clone() for p in model.parameters()]
    master = [m.detach().clone() for m in update.master_params()]
    x = torch.full((1, 4), 1e4, dtype=torch.float16)
    update(model(x).float().sum() * 1e3, 1)  # 128 x the gradient overflows fp16
    assert update.scale == 64.0
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # the update was skipped
    assert all(torch.equal(a, b) for a, b in zip(master, update.master_params()))
    assert all(p.grad is None for p in model.parameters())
    update(model(torch.ones(1, 4, dtype=torch.float16)).float().sum() * 0.04, 4)  # gradients 0.01: norm < 1
    assert update.scale == 64.0
    assert not all(torch.equal(a, b) for a, b in zip(master, update.master_params()))  # this one stepped


def test_generation_step_reports_the_runs_a_stopped_model_finished():
    """On the H100 both models ran out of their share of the time before 16k tokens: the runs they
    finished (generation.py writes them after each) are reported, and the step fails with the reason."""
    import steps

    run = {"length": 1000, "ms_per_token": 2.5, "last_span_ms_per_token": 2.5, "state_mib": 1.0,
           "cuda_peak_growth_mib": 40.0}
    data = {"setup": {"lengths": [1000, 16000], "device": "cuda", "device_name": "H100", "dtype": "bfloat16",
                      "batch": 1, "window": 3072},
            "models": {"srupp_lm": {"params": 10, "runs": [run]}}}
    out = steps.generation_result(data, {"srupp_lm": "stopped after its share of the time, 64 s"})
    assert out["status"] == "failed" and "srupp_lm: stopped after its share of the time, 64 s" in out["reason"]
    assert "| srupp_lm | 10 | fairseq incremental state: cache | 2.500 | unfinished | | | 40.0 → unfinished | |" in out["markdown"]
    assert [(t["value"], t["met"]) for t in out["results"]["targets"]] == [(None, None)] * 4


def test_compile_flag_reaches_the_training_step(tmp_path, monkeypatch):
    """torch.compile in step 4 is opt-in on a GPU (44 s of compiling on the H100): --compile sets the
    switch the step processes read."""
    import steps

    monkeypatch.setenv(steps.COMPILE_ENV, "")  # restored (unset) after the test, whatever main sets
    monkeypatch.setattr(run_all, "run_step", lambda key, title, limit, dry_run, log: {
        "key": key, "title": title, "status": "ok", "seconds": 0.0, "results": {}, "markdown": [],
        "env": os.environ.get(steps.COMPILE_ENV)})
    run_all.main(["--out", str(tmp_path / "a"), "--dry-run", "--steps", "environment"])
    assert json.loads((tmp_path / "a" / "report.json").read_text())["steps"][1]["env"] == ""
    run_all.main(["--out", str(tmp_path / "b"), "--dry-run", "--steps", "environment", "--compile"])
    assert json.loads((tmp_path / "b" / "report.json").read_text())["steps"][1]["env"] == "1"


def sweep_rows(key, times):
    """Sweep rows at the training batch: {value: (ms of the bf16 case, ms of the autocast case)}."""
    return [{"case": case, "B": batch, key: value, "ms": ms * (1 if batch == run_all.TUNE_BATCH else 0.1)}
            for value, pair in times.items() for case, ms in zip(run_all.TUNE_CASES, pair) for batch in (16, 4)]


def test_steps_after_the_recurrence_sweep_run_with_its_fastest_settings(tmp_path, monkeypatch):
    """Step 3's fastest prefetch depth and L2 distance at the training batch (least time summed over the two
    bf16 cases) reach steps 4 and 5 through the environment, named in the report; --no-tune keeps the defaults."""
    results = {"prefetch": {"rows": sweep_rows("prefetch", {1: (3.0, 3.0), 4: (1.0, 2.0), 8: (1.2, 1.5)})},
               "l2_ahead": {"rows": sweep_rows("l2_ahead", {0: (1.0, 1.0), 16: (0.9, 1.2), 32: (1.0, 0.9)})}}
    assert run_all.tuned_recurrence_env(results) == {"FAIRSEQ_SRUPP_CUDA_PREFETCH": "8",
                                                     "FAIRSEQ_SRUPP_CUDA_L2_AHEAD": "32"}
    unfinished = {"prefetch": {"rows": results["prefetch"]["rows"][:-1]}}  # depth 8's autocast case missing
    assert run_all.tuned_recurrence_env(unfinished) == {}
    assert run_all.tuned_recurrence_env(None) == {}
    # the staged kernels: taken when faster than the ring at its fastest depth (P=8: 2.7 ms summed), not
    # merely faster than the ring at the default depth that the staging sweep times (3.0 ms)
    for staged, expected in [((1.0, 1.0), "8"), ((1.4, 1.4), "0")]:
        results["staging"] = {"rows": sweep_rows("stage_steps", {0: (1.0, 2.0), 4: (2.0, 2.0), 8: staged})}
        assert run_all.tuned_recurrence_env(results)["FAIRSEQ_SRUPP_CUDA_STAGE_STEPS"] == expected
    del results["staging"]

    for name in ("FAIRSEQ_SRUPP_CUDA_PREFETCH", "FAIRSEQ_SRUPP_CUDA_L2_AHEAD"):
        monkeypatch.delenv(name, raising=False)  # restored (unset) after the test

    def fake_step(key, title, limit, dry_run, log):
        seen = {k: os.environ.get(k) for k in ("FAIRSEQ_SRUPP_CUDA_PREFETCH", "FAIRSEQ_SRUPP_CUDA_L2_AHEAD")}
        return {"key": key, "title": title, "status": "ok", "seconds": 0.0, "markdown": [], "env": seen,
                "results": results if key == "recurrence" else {}}

    monkeypatch.setattr(run_all, "run_step", fake_step)
    run_all.main(["--out", str(tmp_path / "a"), "--dry-run", "--steps", "recurrence,training,generation"])
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    envs = {s["key"]: s["env"] for s in report["steps"][1:]}
    assert envs["recurrence"] == {"FAIRSEQ_SRUPP_CUDA_PREFETCH": None, "FAIRSEQ_SRUPP_CUDA_L2_AHEAD": None}
    assert envs["training"] == envs["generation"] == {"FAIRSEQ_SRUPP_CUDA_PREFETCH": "8",
                                                      "FAIRSEQ_SRUPP_CUDA_L2_AHEAD": "32"}
    assert ("Steps after 3 ran with step 3's fastest recurrence settings at B=4 (bf16 U, bf16 x; bf16 U, fp32 x "
            "(autocast, U read as bf16)): `FAIRSEQ_SRUPP_CUDA_PREFETCH=8`, `FAIRSEQ_SRUPP_CUDA_L2_AHEAD=32`."
            ) in (tmp_path / "a" / "report.md").read_text()

    for name in ("FAIRSEQ_SRUPP_CUDA_PREFETCH", "FAIRSEQ_SRUPP_CUDA_L2_AHEAD"):
        monkeypatch.delenv(name, raising=False)
    run_all.main(["--out", str(tmp_path / "b"), "--dry-run", "--steps", "recurrence,training", "--no-tune"])
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["steps"][2]["env"] == {"FAIRSEQ_SRUPP_CUDA_PREFETCH": None, "FAIRSEQ_SRUPP_CUDA_L2_AHEAD": None}
    assert "tuned" not in report


@pytest.mark.parametrize("step1,expected", [
    (None, "8"),  # step 1 not part of this run (a rerun of later steps)
    ({"runs": {run_all.KERNEL_TEST_FILE: {"skipped": 0, "failed": []}}}, "8"),
    ({"runs": {run_all.KERNEL_TEST_FILE: {"skipped": 0, "failed": [{"test": "test_dispatch_choice"}]}}}, "8"),
    ({"runs": {run_all.KERNEL_TEST_FILE: {"skipped": 0, "failed": [
        {"test": "test_staged_kernel_agrees_with_the_ring_on_gpu[bf16]"}]}}}, "0"),
    ({"runs": {run_all.KERNEL_TEST_FILE: {"skipped": 3, "failed": []}}}, "0"),
    ({"runs": {run_all.KERNEL_TEST_FILE: None}}, "0"),  # cut short before its report
])
def test_staged_kernels_are_tuned_in_only_if_step_1_shows_them_right(tmp_path, monkeypatch, step1, expected):
    """Staging fastest in step 3 reaches steps 4 and 5 only if step 1, when it ran, failed none of the staged
    kernels' tests and skipped none; otherwise the ring stays, and the report says why."""
    results = {"staging": {"rows": sweep_rows("stage_steps", {0: (1.0, 1.0), 8: (0.5, 0.5)})}}
    monkeypatch.setenv(run_all.STAGE_ENV, "")  # restored (unset) after the test, whatever main sets

    def fake_step(key, title, limit, dry_run, log):
        found = results if key == "recurrence" else step1
        return {"key": key, "title": title, "status": "ok", "seconds": 0.0, "markdown": [], "results": found,
                "env": os.environ.get(run_all.STAGE_ENV)}

    monkeypatch.setattr(run_all, "run_step", fake_step)
    steps = "recurrence,training" if step1 is None else "kernel_tests,recurrence,training"
    run_all.main(["--out", str(tmp_path), "--dry-run", "--steps", steps])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"][-1]["env"] == expected
    assert ("stayed off for the later steps" in (tmp_path / "report.md").read_text()) == (expected == "0")


FAKE_GENERATION = """
import json, sys, time
args = sys.argv[1:]
name, out = args[args.index("--models") + 1], args[args.index("--json") + 1]
json.dump({"models": {name: {"runs": [{"length": 8}]}}, "partial": True}, open(out, "w"))
print(name, "wrote its first run", flush=True)
time.sleep(30 if name == "slow" else 1)
print(name, "done", flush=True)
"""


def test_generation_processes_run_side_by_side_and_a_stopped_one_keeps_its_runs(monkeypatch, tmp_path):
    import steps

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "generation.py").write_text(FAKE_GENERATION)
    monkeypatch.setattr(steps, "REPO", tmp_path)
    start = time.time()
    runs = steps.run_generation_processes(["slow", "fast"], [], 4.0, tmp_path)
    assert time.time() - start < 10  # side by side, and the slow one stopped at 4 s
    assert runs["fast"] == ({"models": {"fast": {"runs": [{"length": 8}]}}, "partial": True}, None)
    part, failure = runs["slow"]
    assert part["models"]["slow"]["runs"] == [{"length": 8}]
    assert failure == "stopped after its share of the time, 4 s"


def test_kernel_tests_keep_the_first_run_when_the_second_is_stopped(monkeypatch, tmp_path):
    """Step 1's pytest runs are saved one by one: a run stopped at the step's limit loses only itself."""
    import steps

    saved = []
    monkeypatch.setattr(steps, "save", lambda out: saved.append(json.loads(json.dumps(out))) or out)
    counts = {"tests": 20, "failures": 0, "errors": 0, "skipped": 0, "exit_status": 0, "seconds": 9.0, "failed": [],
              "slowest": [{"test": "test_a", "seconds": 1.0}]}
    answers = iter([(counts, None), (counts, None), (counts, None),
                    (None, "tests/test_cuda_kernel.py: stopped at the step's time limit")])

    def one_run(runs, select, tmp):  # on a GPU each call is one run's process
        counts, why = next(answers)
        return ({runs[0]: counts} if counts else None), why

    monkeypatch.setattr(steps, "run_pytest", one_run)
    out = steps.kernel_tests(dry_run=False)
    assert saved[0]["status"] == "failed" and saved[0]["reason"] == (
        "tests/test_generator_decoding.py: not run yet; tests/test_optim.py tests/test_batched_update.py: not run yet; "
        "tests/test_cuda_kernel.py: not run yet")
    assert saved[0]["results"]["runs"] == {"tests/test_token_stepper.py": counts}
    assert saved[2]["reason"] == "tests/test_cuda_kernel.py: not run yet"
    assert set(saved[2]["results"]["runs"]) == {"tests/test_token_stepper.py", "tests/test_generator_decoding.py",
                                                "tests/test_optim.py tests/test_batched_update.py"}
    assert out["status"] == "failed" and out["reason"] == "tests/test_cuda_kernel.py: stopped at the step's time limit"
    assert "- `tests/test_token_stepper.py`: 20 tests, 0 failed, 0 errors, 0 skipped (9 s)" in out["markdown"]


def test_one_pytest_process_is_counted_per_run(monkeypatch, tmp_path):
    """A dry run's one pytest process over every run's files: each testcase counted against the run of its
    file (a collection error's too), with the process's exit status."""
    import steps

    junit = """<testsuites><testsuite tests="5">
      <testcase classname="tests.test_a" name="test_one" time="1.5"/>
      <testcase classname="tests.test_a.TestGroup" name="test_two" time="0.5"><skipped/></testcase>
      <testcase classname="tests.test_b" name="test_three" time="2.0"><failure message="off by one"/></testcase>
      <testcase classname="" name="tests.test_c" time="0.0"><error message="ImportError: no module"/></testcase>
      <testcase classname="elsewhere" name="test_four" time="0.1"/>
    </testsuite></testsuites>"""

    def fake_pytest(cmd, **kwargs):
        Path(cmd[cmd.index("--junitxml") + 1]).write_text(junit)
        return subprocess.CompletedProcess(cmd, 1, stdout="1 failed, 1 error")

    monkeypatch.setattr(steps.subprocess, "run", fake_pytest)
    counted, why = steps.run_pytest(["tests/test_a.py", "tests/test_b.py tests/test_c.py"], "x", tmp_path)
    assert why is None
    a, bc = counted["tests/test_a.py"], counted["tests/test_b.py tests/test_c.py"]
    assert (a["tests"], a["skipped"], a["failures"], a["errors"], a["exit_status"]) == (3, 1, 0, 0, 1)
    assert a["seconds"] == pytest.approx(2.1)  # the unplaceable testcase counts against every run
    assert (bc["tests"], bc["failures"], bc["errors"]) == (3, 1, 1)
    assert [f["test"] for f in bc["failed"]] == ["test_three", "tests.test_c"]
    assert bc["slowest"][0] == {"test": "test_three", "seconds": 2.0}


def test_sass_prefetch_measures_load_cover_around_the_main_loop():
    """benchmarks/gpu/sass_prefetch.py's reading of a listing: the longest loop, and each load's distance
    to the first touch of its register, wrapping around the back edge, in steps of the loop."""
    import sass_prefetch

    listing = """
        code for sm_90
                Function : srupp_forward_x
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   FADD R3, R2, R2 ;
        /*0030*/              @!P1 LDG.E.U16.CONSTANT R5, desc[UR4][R4.64+0x2] ;
        /*0040*/                   NOP ;
        /*0050*/               @P0 BRA 0x10 ;
        /*0060*/                   FADD R6, R5, R5 ;
        /*0070*/                   EXIT ;
    """
    loop = sass_prefetch.main_loop(sass_prefetch.functions(listing)["srupp_forward_x"])
    assert [text for _, text in loop][0] == "LDG.E R2, desc[UR4][R4.64]" and len(loop) == 5
    # R2 is read by the next instruction; R5 first by its own refill, a whole loop (one step) later
    assert sass_prefetch.load_cover(loop, 1) == [pytest.approx(0.2), pytest.approx(1.0)]
    row, = sass_prefetch.summarise(listing, 1)  # no stores: the loop counts as one group of 1 step
    assert (row["loads"], row["loads_under_one_step"], row["instructions_per_step"]) == (2, 1, 5)
    # a forward loop with 4 stores walks 2 steps (h and c each), whatever the depth given
    two_steps = listing.replace("NOP ;", "STG.E desc[UR4][R8.64], R3 ;\n        /*0041*/ STG.E desc[UR4][R9.64], R3 ;")
    two_steps = two_steps.replace("FADD R3, R2, R2 ;", "FADD R3, R2, R2 ;\n        /*0021*/ STG.E desc[UR4][R8.64], R3 ;\n"
                                  "        /*0022*/ @P1 STG.E desc[UR4][R9.64], R3 ;")
    row, = sass_prefetch.summarise(two_steps, 4)
    assert row["loop_steps"] == 2 and row["instructions_per_step"] == 4
