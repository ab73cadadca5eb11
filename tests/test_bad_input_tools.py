"""Bad input to the project's own command-line tools ends in one clear ``error:`` line and loses nothing
(robustness audit V27, V28, V30-V33):

* ``srupp-sample ... | head`` ends quietly with status 0; a --seed outside torch's range is one line;
* the demo refuses an --out that is a file, a missing --data (leaving no --out folder), another --arch
  and impossible sizes before it writes anything, and reports a failed fairseq-train with its own line;
* ``python -m fairseq_srupp.models`` names a missing --config-dir / config / --readme, or a README
  without the preset table, in one line and rewrites nothing when any input is bad;
* the benchmarks refuse impossible sizes, counts and lists through argparse before running;
* quality_per_compute checks --srupp / --transformer before writing into --out, and a failed
  training run is reported with the child's own error line.
"""
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from argparse import Namespace

import pytest
from cli_utils import synthetic_text
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

import fairseq_srupp  # noqa: F401
from fairseq_srupp import demo, sample_cli
from fairseq_srupp.bench import generation, quality
from fairseq_srupp.cli_args import child_error_line
from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.models import presets
from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLanguageModel, SRUppLMConfig

REPO = Path(__file__).resolve().parents[1]


def argparse_error(capsys, parse, argv):
    """The ``error:`` line argparse ends with when ``parse(argv)`` is refused (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------ srupp-sample (V27, V28)
class ClosedAfter(io.StringIO):
    """A stdout whose reader goes away after ``n`` characters (``| head -c n``)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def write(self, text):
        if self.tell() + len(text) > self.n:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def tiny_byte_model():
    dictionary = Dictionary()
    for b in b"abcdefgh th":
        dictionary.add_symbol(str(b))
    args = Namespace(hidden_size=16, proj_size=8, num_layers=1)
    ARCH_CONFIG_REGISTRY["srupp_lm_tiny"](args)
    return SRUppLanguageModel(SRUppDecoder(SRUppLMConfig.from_namespace(args), dictionary)).eval()


def test_sample_into_a_pipe_its_reader_closed_returns_0(monkeypatch):
    monkeypatch.setattr(sample_cli, "load_model", lambda path, data, cpu: (tiny_byte_model(), {}))
    monkeypatch.setattr(sys, "stdout", ClosedAfter(20))
    assert sample_cli.main(["--path", "any.pt", "--cpu", "--seed", "1", "--prompt", "the", "-n", "1000"]) == 0
    assert sys.stdout.getvalue().startswith("the")


def test_stream_into_a_real_pipe_its_reader_closed_ends_quietly():
    """What the shell's ``| head -c 20`` does: after the reader goes, no traceback, no "Exception ignored"
    report from the flush at exit, exit status 0."""
    code = ("import sys; from fairseq_srupp.sample_cli import write_stream; "
            "write_stream(sys.stdout, 'the', iter(range(10 ** 7)), str)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    head = proc.stdout.read(20)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert head.startswith(b"the")
    assert (proc.wait(timeout=120), stderr) == (0, b"")


def test_sample_seed_outside_torchs_range_is_one_line(tmp_path):
    with pytest.raises(SRUppUserError) as err:  # checked before the checkpoint is even looked for
        sample_cli.main(["--path", str(tmp_path / "none.pt"), "--prompt", "x", "-n", "3",
                         "--seed", "99999999999999999999"])
    assert str(err.value) == ("--seed must be an integer from -2**63 to 2**64 - 1 (torch's seed range), "
                              "got 99999999999999999999")


# ------------------------------------------------------------------------------------------------ demo (V30)
def demo_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    return exit_info.value.code


def test_demo_refuses_an_out_that_is_a_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(synthetic_text(3000))
    given = tmp_path / "c2.txt"
    shutil.copy(corpus, given)
    assert demo_error(["--data", str(corpus), "--out", str(given)]) == (
        "error: --out {} is a file: give a directory (created if missing) for the demo's data, checkpoints and "
        "logs".format(given))
    assert given.read_bytes() == corpus.read_bytes()


@pytest.mark.parametrize("argv,message", [
    (["--data", "{tmp}/nope.txt"], "error: --data {tmp}/nope.txt does not exist: give a text file to train on"),
    (["--data", "{tmp}/small.txt"],
     "error: --data {tmp}/small.txt: the corpus has 5 bytes; at least 2000 are needed to split it"),
    # --data nope.txt too: a demo that took the arch would still stop at once
    (["--arch", "transformer_lm", "--data", "{tmp}/nope.txt"], "error: --arch transformer_lm is not an srupp_lm architecture; the demo trains "
                                   "one of: " + ", ".join(presets.BY_NAME)),
], ids=["missing-data", "small-data", "other-arch"])
def test_demo_refuses_bad_input_before_making_out(tmp_path, argv, message):
    (tmp_path / "small.txt").write_text("tiny\n")
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out")]
    assert demo_error(argv) == message.format(tmp=tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value", [("--max-update", "0"), ("--batch-size", "-1"), ("--eval-window", "0"),
                                        ("--lr", "nan"), ("--sample-bytes", "-5")])
def test_demo_refuses_impossible_sizes_up_front(capsys, tmp_path, flag, value):
    # --data nope.txt too: a demo that took the value would still stop at once
    line = argparse_error(capsys, demo.main, [flag, value, "--data", str(tmp_path / "nope.txt"),
                                              "--out", str(tmp_path / "out")])
    assert line.startswith("{}: error: argument {}: ".format(Path(sys.argv[0]).name, flag))
    assert not (tmp_path / "out").exists()


def test_demo_reports_fairseq_trains_own_error_line(monkeypatch, capsys):
    """Whatever fairseq-train still refuses ends in one line that carries its reason."""
    child = "print('usage: train.py ...'); print('train.py: error: unrecognized arguments: --x 1'); raise SystemExit(2)"
    monkeypatch.setattr(demo, "module_command", lambda module, args: [sys.executable, "-c", child])
    with pytest.raises(SystemExit) as exit_info:
        demo.run_training([], 10)
    assert exit_info.value.code == ("error: fairseq-train failed (exit status 2): train.py: error: unrecognized "
                                    "arguments: --x 1")


# -------------------------------------------------------------------------------- python -m fairseq_srupp.models (V31)
@pytest.fixture
def sync_inputs(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    return configs, readme


def test_models_cli_names_each_missing_input(tmp_path, sync_inputs):
    configs, readme = sync_inputs
    (tmp_path / "empty").mkdir()
    configs_named = ", ".join(p.config + ".yaml" for p in presets.PRESETS if p.config)
    cases = [
        (["--config-dir", str(tmp_path / "nodir"), "--readme", str(readme)],
         "--config-dir {} does not exist: give the repository's configs/ folder".format(tmp_path / "nodir")),
        (["--config-dir", str(readme), "--readme", str(readme)],
         "--config-dir {} is not a directory: give the repository's configs/ folder".format(readme)),
        (["--config-dir", str(tmp_path / "empty"), "--readme", str(readme)],
         "--config-dir {} lacks 9 of the preset configs ({}): give the repository's configs/ folder".format(
             tmp_path / "empty", configs_named)),
        (["--config-dir", str(configs), "--readme", str(tmp_path / "nofile.md")],
         "--readme {} does not exist: give the repository's README.md".format(tmp_path / "nofile.md")),
    ]
    for argv, message in cases:
        with pytest.raises(SRUppUserError) as err:
            presets.main(["--check"] + argv)
        assert str(err.value) == message


def test_models_cli_rewrites_nothing_when_the_readme_has_no_table(tmp_path, sync_inputs):
    configs, _ = sync_inputs
    stale = configs / "srupp_lm_wt103_base.yaml"
    stale.write_text(stale.read_text().replace("  proj_size: 768\n", "  proj_size: 512\n", 1))
    before = stale.read_text()
    notes = tmp_path / "notes.md"
    notes.write_text("# notes\n")
    with pytest.raises(SRUppUserError) as err:
        presets.main(["--config-dir", str(configs), "--readme", str(notes)])
    assert str(err.value) == ("{} has no preset table (a line starting with '| `--arch` |'): give the repository's "
                              "README.md with --readme".format(notes))
    assert stale.read_text() == before  # the config was not rewritten either


# ------------------------------------------------------------------------------------------- benchmarks (V32)
def benchmark_script(name, monkeypatch):
    """benchmarks/<name>.py as a module (its main() is not run), importing its neighbours as when run."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_" + name, REPO / "benchmarks" / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECURRENCE = ["--repeats", "1", "--ref-repeats", "1"]
TRAIN = ["--d", "16", "--proj", "8", "--layers", "1", "--length", "8", "--batch", "1", "--no-breakdown"]


@pytest.mark.parametrize("script,argv,line", [
    ("recurrence_cpu", ["--d", "0"] + RECURRENCE, "argument --d: must be >= 1, got 0"),
    ("recurrence_cpu", ["--d", "8", "--length", "0"] + RECURRENCE, "argument --length/-L: must be >= 1, got 0"),
    ("recurrence_cpu", ["--repeats", "0", "--ref-repeats", "1"], "argument --repeats: must be >= 1, got 0"),
    ("recurrence_cpu", RECURRENCE + ["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ("recurrence_cpu", RECURRENCE + ["--batch", "x"], "argument --batch/-B: expected an integer >= 1, got 'x'"),
    ("recurrence_cpu", RECURRENCE + ["--dropout", "1"],
     "--dropout must be in [0, 1) (the kept units are scaled by 1 / (1 - rate)), got 1.0"),
    ("train_cpu", TRAIN[:2] + ["--proj", "0"] + TRAIN[4:], "argument --proj: must be >= 1, got 0"),
    ("train_cpu", TRAIN + ["--heads", "3"], "--heads 3 does not divide --proj 8: each head takes proj / heads features"),
    ("train_cpu", TRAIN + ["--vocab", "0"], "argument --vocab: must be >= 1, got 0"),
    ("train_cpu", TRAIN + ["--sru-repeats", "0"], "argument --sru-repeats: must be >= 1, got 0"),
])
def test_cpu_benchmarks_refuse_impossible_sizes(capsys, monkeypatch, script, argv, line):
    parse = benchmark_script(script, monkeypatch).parse_args
    assert argparse_error(capsys, parse, argv).split(": error: ", 1)[1] == line


@pytest.mark.parametrize("argv,line", [
    (["--lengths", "abc"], "argument --lengths: expected comma-separated integers >= 2, got 'abc'"),
    (["--lengths", "10", "--srupp", "16,8", "--models", "srupp_lm"],
     "argument --srupp: expected hidden,proj,layers: 3 positive integers separated by commas, got '16,8'"),
    (["--srupp", "16,0,1"],
     "argument --srupp: expected hidden,proj,layers: 3 positive integers separated by commas, got '16,0,1'"),
    (["--transformer", "16,32,1"],
     "argument --transformer: expected dim,ffn,layers,heads: 4 positive integers separated by commas, got '16,32,1'"),
    (["--transformer", "16,32,1,3"], "--transformer 16,32,1,3: the heads (3) must divide the dimension (16)"),
    (["--threads", "-1"], "argument --threads: must be >= 0, got -1"),
])
def test_generation_benchmark_refuses_bad_lists(capsys, argv, line):
    assert argparse_error(capsys, generation.parse_args, argv).split(": error: ", 1)[1] == line


def test_generation_benchmark_keeps_its_defaults():
    args = generation.parse_args([])
    assert args.lengths == [1000, 4000, 16000] and args.srupp is None and args.transformer == "128,448,4,4"
    assert generation.parse_args(["--lengths", "64,16,16"]).lengths == [16, 64]


# ------------------------------------------------------------------------------------ quality per compute (V33)
@pytest.mark.parametrize("flag,value,line", [
    ("--srupp", "16,8", "argument --srupp: expected hidden,proj,layers: 3 positive integers separated by commas, "
                        "got '16,8'"),
    ("--srupp", "16,0,1", "argument --srupp: expected hidden,proj,layers: 3 positive integers separated by commas, "
                          "got '16,0,1'"),
    ("--transformer", "16,32,x,2", "argument --transformer: expected dim,ffn,layers,heads: 4 positive integers "
                                   "separated by commas, got '16,32,x,2'"),
    ("--transformer", "16,32,1,3", "--transformer 16,32,1,3: the heads (3) must divide the dimension (16)"),
    ("--dropout", "1.5", "--dropout must be in [0, 1), got 1.5"),
])
def test_quality_checks_model_shapes_before_writing_out(capsys, tmp_path, flag, value, line):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(synthetic_text(3000))
    argv = ["--data", str(corpus), "--out", str(tmp_path / "q"), "--seconds", "2", "--skip-flops-runs", flag, value]
    assert argparse_error(capsys, quality.main, argv).split(": error: ", 1)[1] == line
    assert not (tmp_path / "q").exists()


def test_quality_missing_data_or_small_corpus_leaves_no_out(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "q")])
    assert exit_info.value.code == "error: --data {} is not a file".format(tmp_path / "nope.txt")
    (tmp_path / "small.txt").write_text("tiny\n")
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--data", str(tmp_path / "small.txt"), "--out", str(tmp_path / "q")])
    assert exit_info.value.code == "error: --data {}: the corpus has 5 bytes; at least 2000 are needed to split " \
                                   "it".format(tmp_path / "small.txt")
    assert not (tmp_path / "q").exists()


def test_quality_refuses_an_out_that_is_a_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(synthetic_text(3000))
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--data", str(corpus), "--out", str(corpus)])
    assert exit_info.value.code == "error: --out {} is a file: give a directory (created if missing) for the " \
                                   "results".format(corpus)
    assert corpus.read_bytes() == synthetic_text(3000)


def test_quality_failed_training_shows_the_childs_error_line(monkeypatch, tmp_path, capsys):
    """The plugin's lowercase ``error:`` line of a failing fairseq-train reaches the one-line report."""
    child = ("print('| INFO | fairseq_cli.train | starting'); "
             "print('error: --proj-size must be a positive integer, got 0'); raise SystemExit(1)")
    monkeypatch.setattr(quality, "module_command", lambda module, args: [sys.executable, "-c", child])
    log = tmp_path / "srupp_lm_seconds.log"
    with pytest.raises(SystemExit) as exit_info:
        quality.run_training("srupp_lm", [], quality.CurveRecorder(64, 1.0), log, 1)
    assert exit_info.value.code == ("error: srupp_lm training failed: --proj-size must be a positive integer, "
                                    "got 0 (log: {})".format(log))
    assert "error: --proj-size" in log.read_text()


@pytest.mark.parametrize("lines,found", [
    (["| INFO | x", "error: --proj-size must be a positive integer, got 0"],
     "--proj-size must be a positive integer, got 0"),
    (["usage: train.py [-h]", "train.py: error: unrecognized arguments: --eval-window 512"],
     "train.py: error: unrecognized arguments: --eval-window 512"),
    (["Traceback (most recent call last):", '  raise ValueError("x")', "ValueError: x"], "ValueError: x"),
    (["  File \"x.py\", line 1", "AssertionError"], "AssertionError"),
    (["| INFO | no trouble here", "epoch 001 | loss 2.0"], None),
])
def test_child_error_line(lines, found):
    assert child_error_line(lines) == found
