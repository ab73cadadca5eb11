"""Bad input to the data scripts, the byte BPE and the converter: one clear line, nothing lost.

Each case is what a new user would try; the data scripts run in this process through the same
``cli()`` their command line uses (``test_data_scripts.run_fails`` asserts one ``error:`` line on
stderr and no traceback), the rest as real commands in subprocesses.
"""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import fork_server
from cli_utils import BIN, USER_DIR
from test_data_scripts import (REPO, SCRIPTS, assert_no_output, decode, files_under, mtimes, run, run_fails,
                               run_ok, script, wikitext_zip)

from fairseq_srupp.data.files import TMP_MARK, check_utf8_text
from fairseq_srupp.data.prep import PrepError
from fairseq_srupp.data.vocab import read_vocab_lines

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# A directory where a file is expected (and a file where a directory is)
# ---------------------------------------------------------------------------------------------


def test_a_directory_given_for_a_file_is_named_as_such(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "enwik8.zip").write_bytes(b"")
    out = tmp_path / "out"
    line = run_fails("prepare_text", "--text", folder, "--out", out / "a",
                     expect="--text {} is a directory: give the path of a file inside it".format(folder))
    assert "not found" not in line
    run_fails("prepare_text", "--level", "word", "--train", folder, "--valid", folder, "--test", folder,
              "--out", out / "b", expect="--train {} is a directory".format(folder))
    run_fails("prepare_enwik8", "--archive", folder, "--out", out / "c", expect="--archive {} is a directory".format(folder))
    run_fails("prepare_wikitext103", "--archive", folder, "--out", out / "d",
              expect="--archive {} is a directory".format(folder))
    archive = wikitext_zip(tmp_path / "wikitext-103-v1.zip")
    run_fails("prepare_wikitext103", "--archive", archive, "--srcdict", folder, "--out", out / "e", "--skip-checksum",
              expect="--srcdict {} is a directory".format(folder))
    run_fails("prepare_lm1b", "--raw-dir", tmp_path, "--vocab-file", folder, "--out", out / "f",
              expect="--vocab-file {} is a directory".format(folder))
    # ... and the opposite slip: the unzipped file given where its directory is expected.
    run_fails("prepare_wikitext103", "--raw-dir", archive, "--out", out / "g",
              expect="--raw-dir {} is a file, not a directory".format(archive))
    (tmp_path / "enwik8").write_bytes(b"x")
    run_fails("prepare_enwik8", "--raw-dir", tmp_path / "enwik8", "--out", out / "h",
              expect="--raw-dir {} is a file, not a directory".format(tmp_path / "enwik8"))
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# --out and the inputs: what is already there is not replaced unasked
# ---------------------------------------------------------------------------------------------


def small_corpus(path, lines=120):
    path.write_text("".join("the cat {} sees a dog .\n".format(i % 7) for i in range(lines)))
    return path


def contents(path):
    return {p: p.read_bytes() for p in mtimes(path)}


def test_an_out_dir_the_scripts_did_not_make_is_not_replaced(tmp_path):
    corpus = small_corpus(tmp_path / "corpus.txt")
    theirs = tmp_path / "theirs"
    run_ok("prepare_text", "--text", corpus, "--out", tmp_path / "made")
    (theirs / "data-bin").mkdir(parents=True)
    for name in ("dict.txt", "train.bin", "train.idx"):
        (theirs / "data-bin" / name).write_bytes((tmp_path / "made" / "data-bin" / name).read_bytes())
    (theirs / "train.tokens").write_text("my notes\n")
    before = contents(theirs)
    for level in ("char", "word"):
        run_fails("prepare_text", "--level", level, "--text", corpus, "--out", theirs,
                  expect="--out {} already holds train.tokens, data-bin, which this script did not make".format(theirs))
    run_fails("prepare_enwik8", "--raw-dir", tmp_path, "--out", theirs, expect="which this script did not make")
    assert contents(theirs) == before
    # A folder holding other things is fine, and --force replaces what the user asks to be replaced.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine\n")
    run_ok("prepare_text", "--text", corpus, "--out", tmp_path / "notes")
    assert (tmp_path / "notes" / "readme.txt").read_text() == "mine\n"
    run_ok("prepare_text", "--text", corpus, "--out", theirs, "--force")
    assert decode(theirs / "data-bin", "train")[0][0][:3] == ["116", "104", "101"]  # "the" as byte tokens


def test_a_first_run_interrupted_in_its_first_step_resumes(tmp_path, monkeypatch):
    from fairseq_srupp.data import char_level

    corpus = small_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    real = char_level.write_byte_tokens

    def interrupted_after_train(part, dest):  # train.tokens is in place, no stamp yet: then Ctrl-C
        if "valid" in dest.name:
            raise KeyboardInterrupt
        return real(part, dest)

    monkeypatch.setattr(char_level, "write_byte_tokens", interrupted_after_train)
    code, _, err = run("prepare_text", "--text", corpus, "--out", out)
    assert code == 130 and (out / "train.tokens").exists() and not list((out / ".stamps").iterdir()), err
    monkeypatch.setattr(char_level, "write_byte_tokens", real)
    log = run_ok("prepare_text", "--text", corpus, "--out", out)  # .stamps/, made first, marks out as ours
    assert "running tokenize" in log and "running binarize" in log


def test_an_input_among_the_outputs_is_refused(tmp_path):
    selfout = tmp_path / "selfout"
    selfout.mkdir()
    small_corpus(selfout / "train.tokens")
    before = contents(selfout)
    run_fails("prepare_text", "--text", selfout / "train.tokens", "--out", selfout,
              expect="--text {} is among the outputs this script writes into --out {} (train.tokens): it would be "
                     "overwritten".format(selfout / "train.tokens", selfout))
    assert contents(selfout) == before
    # ... also in a folder the script made (the previous run's valid split as the next corpus)
    out = tmp_path / "out"
    run_ok("prepare_text", "--text", small_corpus(tmp_path / "corpus.txt", lines=200), "--out", out)
    before = contents(out)
    run_fails("prepare_text", "--level", "word", "--text", out / "valid.tokens", "--out", out,
              expect="--text {} is among the outputs".format(out / "valid.tokens"))
    splits = [a for s in ("train", "valid", "test") for a in ("--" + s, out / "data-bin" / "{}.bin".format(s))]
    run_fails("prepare_text", *splits, "--out", out, expect="--train {} is among the outputs".format(
        out / "data-bin" / "train.bin"))
    assert contents(out) == before


def test_out_naming_a_file_says_it_must_be_a_directory(tmp_path):
    corpus = small_corpus(tmp_path / "corpus.txt")
    before = corpus.read_bytes()
    run_fails("prepare_text", "--text", corpus, "--out", corpus,
              expect="--out {} is a file, not a directory: --out names the directory".format(corpus))
    run_fails("prepare_enwik8", "--raw-dir", tmp_path, "--out", corpus, expect="is a file, not a directory")
    assert corpus.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_an_input_that_is_not_a_regular_file_is_named_as_such(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    for path, kind in ((os.devnull, "a device"), (fifo, "a named pipe")):
        line = run_fails("prepare_text", "--text", path, "--out", tmp_path / "out",
                         expect="--text {} is not a regular file ({})".format(path, kind))
        assert "not found" not in line
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("name", ["prepare_text", "prepare_enwik8", "prepare_wikitext103", "prepare_lm1b"])
@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_workers_must_be_a_positive_integer(name, workers, capsys):
    with pytest.raises(SystemExit) as exit:
        script(name).parse_args(["--text", "corpus.txt"] * (name == "prepare_text") + ["--workers", workers])
    assert exit.value.code == 2
    why = "expected an integer >= 1, got 'two'" if workers == "two" else "must be >= 1, got {}".format(workers)
    assert "error: argument --workers: " + why in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --srcdict: a malformed file, or one of the other level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lines, problem", [
    ("the 5\nfoo bar baz\n", "line 2: expected '<symbol> <count>', and 'baz' is not a count"),
    ("the 5\n\nof 3\n", "line 2: an empty line"),
    ("the 5\nof 3\nthe 2\n", "line 3: 'the' is already on line 1"),
    ("<unk> 5\n", "line 1: '<unk>' is a fairseq special symbol"),
])
def test_a_malformed_srcdict_names_the_file_and_the_line(tmp_path, lines, problem):
    corpus = small_corpus(tmp_path / "corpus.txt")
    srcdict = tmp_path / "dict.txt"
    srcdict.write_text(lines)
    run_fails("prepare_text", "--level", "word", "--text", corpus, "--srcdict", srcdict, "--out", tmp_path / "a",
              expect="--srcdict {}, {}".format(srcdict, problem))
    run_fails("prepare_wikitext103", "--raw-dir", tmp_path, "--srcdict", srcdict, "--out", tmp_path / "b",
              expect="--srcdict {}, {}".format(srcdict, problem))
    assert_no_output(tmp_path / "a")
    assert_no_output(tmp_path / "b")


def test_a_srcdict_of_the_other_level_is_refused(tmp_path):
    corpus = small_corpus(tmp_path / "corpus.txt")
    words = tmp_path / "words.txt"
    words.write_text("the 5\ncat 3\n")
    out = tmp_path / "out"
    line = run_fails("prepare_text", "--text", corpus, "--srcdict", words, "--out", out,
                     expect="--srcdict {} does not fit the data: ".format(words))
    assert "% of the tokens would become <unk>" in line and "other level" in line
    assert not (out / "data-bin").exists()  # no useless data-bin
    run_ok("prepare_text", "--text", corpus, "--out", out)  # the first run's own outputs: not "foreign"
    byte_dict = out / "data-bin" / "dict.txt"
    run_fails("prepare_text", "--level", "word", "--text", corpus, "--srcdict", byte_dict, "--out", tmp_path / "w",
              expect="--srcdict {} does not fit the data".format(byte_dict))
    assert not (tmp_path / "w" / "data-bin").exists()


# ---------------------------------------------------------------------------------------------
# Non-UTF-8 and binary input at word level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_utf8_check_names_the_first_bad_byte_across_chunk_boundaries(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(["a", "é", "日本", " ", "\n", "—"]) for _ in range(300)).encode()
    bad = text[:rng.randrange(len(text))]
    bad = bad[:len(bad.decode("utf-8", "ignore").encode())]  # cut at a character boundary
    data = bad + rng.choice([b"\xff", b"\xe6\x97", b"\x80x"]) + text
    cuts = sorted(rng.sample(range(1, len(text)), 7))  # chunks that split multi-byte characters
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [None])]
    check_utf8_text([text[a:b] for a, b in zip([0] + cuts, cuts + [None])], "fine")  # valid text, cut anywhere
    with pytest.raises(UnicodeDecodeError) as expected:
        data.decode("utf-8")
    with pytest.raises(PrepError) as err:
        check_utf8_text(chunks, "f.txt")
    start = expected.value.start
    assert "(byte 0x{:02x} at offset {:,}, line {:,})".format(data[start], start, data[:start].count(b"\n") + 1) \
        in str(err.value), (str(err.value), start)


def test_word_level_refuses_text_that_is_not_utf8(tmp_path):
    latin1 = "The café is open .\nA naïve plan .\n".encode("latin-1")
    (tmp_path / "train.txt").write_bytes(b"one line .\n" * 3 + latin1)
    (tmp_path / "valid.txt").write_text("a line .\n")
    (tmp_path / "test.txt").write_text("a line .\n")
    splits = [a for s in ("train", "valid", "test") for a in ("--" + s, tmp_path / "{}.txt".format(s))]
    offset = 3 * len(b"one line .\n") + len(b"The caf")
    line = run_fails("prepare_text", "--level", "word", "--out", tmp_path / "a", *splits,
                     expect="train.txt is not UTF-8 text (byte 0xe9 at offset {}, line 4)".format(offset))
    assert "iconv" in line and "--level char" in line
    # Moses tokenization used to decode with replacement: every accented word silently became U+FFFD.
    run_fails("prepare_text", "--level", "word", "--tokenizer", "moses", "--out", tmp_path / "b", *splits,
              expect="is not UTF-8 text (byte 0xe9")
    (tmp_path / "binary").write_bytes(b"text\n" + bytes(range(256)))
    run_fails("prepare_text", "--level", "word", "--text", tmp_path / "binary", "--out", tmp_path / "c",
              expect="holds a NUL byte (offset 5, line 2), so it is binary, not text")
    raw = tmp_path / "wikitext-103"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        (raw / "wiki.{}.tokens".format(split)).write_bytes(latin1 if split == "valid" else b" = A = \n")
    run_fails("prepare_wikitext103", "--raw-dir", raw, "--skip-checksum", "--out", tmp_path / "d",
              expect="wiki.valid.tokens is not UTF-8 text (byte 0xe9 at offset 7, line 1)")
    (tmp_path / "vocab.txt").write_bytes(b"the 10\n" + latin1)
    with pytest.raises(PrepError, match=r"vocab.txt is not UTF-8 text \(byte 0xe9 at offset 14, line 2\)"):
        read_vocab_lines(tmp_path / "vocab.txt")
    for sub in "abcd":
        assert not (tmp_path / sub / "data-bin").exists() and not [
            p for p in files_under(tmp_path / sub) if TMP_MARK in p]


# ---------------------------------------------------------------------------------------------
# fairseq-interactive's stdin with --bpe srupp_bytes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A converted paper-layout enwik8 model over bytes that include 0xff, with its data dir."""
    from test_convert import PaperEnwik8Model

    from fairseq_srupp.convert import convert_enwik8

    root = tmp_path_factory.mktemp("byte_model")
    vocab = sorted(set(b"abcd efgh\n") | {0xFF, 0xC3, 0xA9})
    (root / "dict.txt").write_text("".join("{} 1\n".format(b) for b in vocab if b != 10))
    torch.manual_seed(0)
    torch.save(PaperEnwik8Model(len(vocab), 16, 8, 2, 1).state_dict(), str(root / "paper.pt"))
    model = convert_enwik8(root / "paper.pt", root / "dict.txt", root / "model.pt", vocabulary=vocab,
                           eval_window=32)
    return root, model


def test_interactive_takes_invalid_utf8_on_stdin_as_bytes(byte_model):
    data_dir, model = byte_model
    proc = fork_server.run(
        [BIN / "fairseq-interactive", data_dir, "--user-dir", USER_DIR, "--task", "language_modeling",
         "--path", model, "--bpe", "srupp_bytes", "--beam", 1, "--max-len-b", 12, "--cpu"],
        input=b"ab\xffcd\nh\xc3\xa9\n", stderr_apart=True, text=False, env=ENV, timeout=300)
    out = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    # The 0xff byte reached the model as the byte 255 (not <unk>, not U+FFFD's three bytes), and
    # the valid line after it was read too.
    sources = [line for line in out.splitlines() if line.startswith("S-")]
    assert sources == ["S-0\t97 98 255 99 100", "S-1\t104 195 169"], out
    assert len([line for line in out.splitlines() if line.startswith("H-")]) == 2


# ---------------------------------------------------------------------------------------------
# The converter given a .pt that is not the paper's state dict
# ---------------------------------------------------------------------------------------------


def test_converter_says_what_it_expected_and_what_it_found(byte_model, tmp_path, capsys):
    from fairseq_srupp.convert.__main__ import main as convert_main

    data_dir, converted = byte_model
    # What fairseq-train writes: besides tensors, numpy scalars among its metrics, which
    # torch.load(weights_only=True) refuses.
    trained = dict(torch.load(str(converted), weights_only=True),
                   extra_state={"metrics": {"train": [(0, "loss", "AverageMeter", {"val": np.float64(1.0)})]}})
    torch.save(trained, str(tmp_path / "checkpoint_last.pt"))
    torch.save({"encoder.weight": torch.randn(4, 4), "bias": torch.randn(4)}, str(tmp_path / "random.pt"))
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    torch.save(torch.randn(3), str(tmp_path / "tensor.pt"))
    expected = "expected the state dict the paper's train_*.py saves (tensors named embedding_layer.*"
    cases = {
        converted: "{} is a fairseq checkpoint (keys cfg, ".format(converted),
        tmp_path / "random.pt": "holds no tensor of the paper's Model (its keys: bias, encoder.weight)",
        tmp_path / "tensor.pt": "holds a Tensor, not a dict of tensors",
        tmp_path / "notes.pt": "is not a file torch.save wrote",
        tmp_path / "checkpoint_last.pt": "is a fairseq training checkpoint, not the paper's state dict",
        data_dir: "--paper-checkpoint {} is a directory".format(data_dir),
    }
    args = ["--dict", str(data_dir / "dict.txt"), "--out", str(tmp_path / "out.pt"), "--vocab-bytes", "97,98"]
    in_subprocess = [tmp_path / "checkpoint_last.pt"]  # the others take the same path in process
    procs = {path: fork_server.popen([sys.executable, "-m", "fairseq_srupp.convert", "enwik8", "--paper-checkpoint",
                                      path] + args, stderr_apart=True, env=ENV, cwd=REPO) for path in in_subprocess}
    for path, message in cases.items():
        if path in procs:
            out, err = procs[path].communicate(timeout=300)
            line = one_error_line(subprocess.CompletedProcess([], procs[path].returncode, out, err))
        else:
            assert convert_main(["enwik8", "--paper-checkpoint", str(path)] + args) == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1, lines
            line = lines[0]
        assert message in line, line
        assert path == data_dir or expected in line, line
    assert not (tmp_path / "out.pt").exists()
    assert convert_main(["enwik8", "--paper-checkpoint", str(tmp_path / "random.pt"), "--dict", str(data_dir),
                         "--out", str(tmp_path / "out.pt"), "--vocab-bytes", "97"]) == 2
    assert "--dict {} is a directory".format(data_dir) in capsys.readouterr().err
    assert convert_main(["enwik8", "--paper-checkpoint", str(tmp_path / "random.pt"), "--dict",
                         str(data_dir / "dict.txt"), "--out", str(tmp_path), "--vocab-bytes", "97"]) == 2
    assert "--out {} is a directory".format(tmp_path) in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# SIGTERM
# ---------------------------------------------------------------------------------------------

# Runs a data script with fairseq-preprocess's pool workers made slow: each announces itself in
# MARKER (its pid) and then sleeps, so the test can SIGTERM the script while a child works.
SLOW_WORKERS = """
import os, runpy, sys, time
from fairseq.binarizer import FileBinarizer

def _binarize_chunk_and_finalize(cls, *args, **kwargs):  # the name the pool pickles the task by
    with open(os.environ["MARKER"], "a") as f:
        f.write("%d\\n" % os.getpid())
    time.sleep(120)

FileBinarizer._binarize_chunk_and_finalize = classmethod(_binarize_chunk_and_finalize)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def alive(pid):
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers inherit the patch; /proc")
def test_sigterm_removes_temporaries_and_workers_and_keeps_outputs(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / "{}.txt".format(split)).write_text("".join("w{} w{} .\n".format(i, i % 7) for i in range(400)))
    splits = [a for s in ("train", "valid", "test") for a in ("--" + s, str(tmp_path / "{}.txt".format(s)))]
    out = tmp_path / "out"
    run_ok("prepare_text", "--level", "word", "--out", out, *splits)
    before = {p: p.read_bytes() for p in mtimes(out / "data-bin")}
    with open(tmp_path / "train.txt", "a") as f:
        f.write("a new line .\n")  # the binarize step must run again

    marker = tmp_path / "workers"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WORKERS, str(SCRIPTS / "prepare_text.py"), "--level", "word",
                             "--out", str(out), "--workers", "2", *splits], env=dict(ENV, MARKER=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if not marker.exists():
            proc.kill()
            pytest.fail("no worker started:\n{}".format(proc.communicate(timeout=30)))
        workers = [int(pid) for pid in marker.read_text().split()]
        assert [p for p in files_under(out) if TMP_MARK in p]  # binarizing into a temporary directory
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines()[-1:] == ["terminated: finished steps are kept; rerun the same command to "
                                                "continue"] and "Traceback" not in stdout + stderr, stderr
    time.sleep(0.5)
    assert not [pid for pid in workers if alive(pid)]
    assert not [p for p in files_under(out) if TMP_MARK in p]
    assert {p: p.read_bytes() for p in mtimes(out / "data-bin")} == before  # the earlier data-bin, untouched
    run_ok("prepare_text", "--level", "word", "--out", out, *splits)
    assert decode(out / "data-bin", "train")[0][-1] == ["a", "new", "line", ".", "</s>"]


def test_why_a_path_is_not_a_file(tmp_path):
    """The reason the fairseq-facing checks (--restore-file, --path, --input) give: a device or a pipe exists, so
    "does not exist" misled."""
    from fairseq_srupp.errors import not_a_file

    os.mkfifo(tmp_path / "pipe")
    assert not_a_file(tmp_path / "pipe") == "is not a regular file (a named pipe)"
    assert not_a_file("/dev/null") == "is not a regular file (a device)"
    assert not_a_file(tmp_path) == "is a directory"
    assert not_a_file(tmp_path / "missing.pt") == "does not exist"
