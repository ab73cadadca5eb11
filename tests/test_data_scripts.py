"""data_scripts/prepare_*.py on tiny archives built here in each dataset's real format.

Most runs call the scripts' ``main`` in this process (fairseq is imported once); a few run them as
the user does, in subprocesses, to check ``--help`` and the one-line error without a traceback.
"""
import contextlib
import functools
import http.server
import importlib.util
import io
import os
import random
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import fork_server

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "data_scripts"
LM1B_TOP = "1-billion-word-language-modeling-benchmark-r13output"


# ---------------------------------------------------------------------------------------------
# Running the scripts and reading their output
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def script(name):
    spec = importlib.util.spec_from_file_location("data_script_" + name, SCRIPTS / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, *args):
    """Run data_scripts/<name>.py's main in this process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = script(name).main([str(a) for a in args] + ["--workers", "1"])
    return code, out.getvalue(), err.getvalue()


def run_ok(name, *args):
    code, out, err = run(name, *args)
    assert code == 0, "{} failed ({}):\n{}\n{}".format(name, code, out[-3000:], err)
    return out


def run_fails(name, *args, expect):
    """The script must exit non-zero with one ``error:`` line containing ``expect``."""
    code, out, err = run(name, *args)
    assert code != 0, out[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else []


def assert_no_output(out_dir):
    """A failed first run leaves no file behind (at most empty directories)."""
    assert files_under(out_dir) == [], files_under(out_dir)


def decode(data_bin, split):
    """The binarized split as lists of dictionary symbols, one list per item."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(Path(data_bin) / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(Path(data_bin) / split), dictionary)
    return [[dictionary[i] for i in dataset[k].tolist()] for k in range(len(dataset))], dictionary


def decode_bytes(data_bin, split):
    items, _ = decode(data_bin, split)
    symbols = [s for item in items for s in item]
    return symbols, b"".join(b"\n" if s == "</s>" else bytes([int(s)]) if s.isdigit() else b"?" for s in symbols)


def words(dictionary):
    """The dictionary's entries besides fairseq's 4 specials and its padding."""
    return [s for s in dictionary.symbols[dictionary.nspecial:] if not s.startswith("madeupword")]


def mtimes(path):
    return {p: p.stat().st_mtime_ns for p in Path(path).rglob("*") if p.is_file()}


def expect_steps(out, ran=(), skipped=()):
    for step in ran:
        assert "running {}\n".format(step) in out, out[-3000:]
    for step in skipped:
        assert "skipping {}:".format(step) in out, out[-3000:]


# ---------------------------------------------------------------------------------------------
# Fixtures in the datasets' real formats
# ---------------------------------------------------------------------------------------------


def enwik8_bytes(seed=0, n=4000):
    """Varied bytes: ASCII, UTF-8 multi-byte characters, tabs, CR, runs of newlines; byte 0xFE only
    in test; train (3000) ends mid-line, valid (500) ends with a newline, the file mid-line."""
    rng = random.Random(seed)
    pieces = [b"<page>", b"[[Link]]", "é".encode(), "—".encode(), "日本".encode(), b"\t", b"\r", b"\n", b"\n\n",
              b"the ", b"of ", b"&amp;", b"\x00", b"{{", b"}}"]
    data = bytearray()
    while len(data) < n:
        data += rng.choice(pieces)
    data = data[:n]
    data = data.replace(b"\xfe", b"x")
    data[2999:3000] = b"x"
    data[3499:3500] = b"\n"
    data[3700:3701] = b"\xfe"
    data[-1:] = b"y"
    return bytes(data)


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


ENWIK8_SPLIT = ("--split-sizes", "3000,500,500", "--skip-checksum")

WIKI_TRAIN = (" \n = Valkyria Chronicles = \n \n The game , released in 2011 , sold 1 @,@ 000 copies . \n"
              " It is a <unk> role @-@ playing game . \n \n = = Gameplay = = \n \n The game is played in turns . \n")
WIKI_VALID = " \n = Homarus = \n \n The zebra is a game . \n"
WIKI_TEST = " \n The game sold copies in Japan . \n"


def wikitext_zip(path, train=WIKI_TRAIN, valid=WIKI_VALID, test=WIKI_TEST, skip=()):
    members = {"wikitext-103/wiki.{}.tokens".format(s): t for s, t in
               (("train", train), ("valid", valid), ("test", test)) if s not in skip}
    return write_zip(path, members)


def lm1b_shards(seed=0):
    """99 training shards (3 sentences each, common words; "alpha" 3 times and "beta" twice in
    total) and 50 held-out shards; plus the full held-out shard the real archive also holds."""
    rng = random.Random(seed)
    common = ["the", "a", "of", "to", "and", "in", "is", "it", "was", "on"]
    train = {}
    for i in range(1, 100):
        sentences = [" ".join(rng.choice(common) for _ in range(rng.randint(2, 7))) for _ in range(3)]
        train["news.en-{:05d}-of-00100".format(i)] = sentences
    train["news.en-00007-of-00100"][0] += " alpha"
    train["news.en-00042-of-00100"][1] += " alpha beta"
    train["news.en-00099-of-00100"][2] = "alpha beta ."
    heldout = {"news.en.heldout-{:05d}-of-00050".format(i): ["the alpha beta gamma {} .".format(i), "a the"]
               for i in range(50)}
    return train, heldout


def lm1b_tar(path, drop=(), seed=0):
    train, heldout = lm1b_shards(seed)
    entries = {"{}/training-monolingual.tokenized.shuffled/{}".format(LM1B_TOP, k): v for k, v in train.items()}
    entries.update({"{}/heldout-monolingual.tokenized.shuffled/{}".format(LM1B_TOP, k): v for k, v in heldout.items()})
    entries["{}/heldout-monolingual.tokenized.shuffled/news.en-00000-of-00100".format(LM1B_TOP)] = ["not held out"]
    names = list(entries)
    random.Random(1).shuffle(names)  # the scripts must not rely on the archive's order
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            if any(name.endswith(d) for d in drop):
                continue
            data = "".join(s + "\n" for s in entries[name]).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------------------------------------
# enwik8
# ---------------------------------------------------------------------------------------------


def test_enwik8_every_byte_round_trips_and_a_rerun_does_nothing(tmp_path):
    data = enwik8_bytes()
    archive = write_zip(tmp_path / "enwik8.zip", {"enwik8": data})
    out = tmp_path / "out"
    log = run_ok("prepare_enwik8", "--archive", archive, "--out", out, *ENWIK8_SPLIT)
    expect_steps(log, ran=("verify", "tokenize", "binarize"))
    data_bin = out / "data-bin"
    parts = {"train": data[:3000], "valid": data[3000:3500], "test": data[3500:]}
    for split, part in parts.items():
        symbols, decoded = decode_bytes(data_bin, split)
        assert decoded == part, split
        assert len(symbols) == len(part)  # no </s> beyond the file's own newlines
    # The paper's vocabulary: every distinct byte of the whole file (0xFE only occurs in test).
    _, dictionary = decode(data_bin, "train")
    assert sorted(words(dictionary)) == sorted(str(b) for b in set(data) if b != 10)
    assert "254" in words(dictionary) and 0xFE not in parts["train"]
    assert len(dictionary) == 4 + len(set(data)) - 1

    before = mtimes(out)
    log = run_ok("prepare_enwik8", "--archive", archive, "--out", out, *ENWIK8_SPLIT)
    expect_steps(log, skipped=("verify", "tokenize", "binarize"))
    assert "running" not in log and "nothing to do" in log
    assert mtimes(out) == before

    changed = enwik8_bytes(seed=1)
    write_zip(archive, {"enwik8": changed})
    log = run_ok("prepare_enwik8", "--archive", archive, "--out", out, *ENWIK8_SPLIT)
    expect_steps(log, ran=("verify", "tokenize", "binarize"))
    assert decode_bytes(data_bin, "valid")[1] == changed[3000:3500]

    # --vocab train: fairseq's default dictionary; the byte seen only in test becomes <unk>.
    log = run_ok("prepare_enwik8", "--archive", archive, "--out", tmp_path / "train_vocab", "--vocab", "train",
                 *ENWIK8_SPLIT)
    symbols, decoded = decode_bytes(tmp_path / "train_vocab" / "data-bin", "test")
    seen = set(changed[:3000]) | {10}
    assert "<unk>" in symbols and decoded == bytes(b if b in seen else ord("?") for b in changed[3500:])


def test_enwik8_failures_exit_with_one_line_and_leave_nothing(tmp_path):
    data = enwik8_bytes()
    good = write_zip(tmp_path / "enwik8.zip", {"enwik8": data})
    out = tmp_path / "out"

    run_fails("prepare_enwik8", "--archive", tmp_path / "missing.zip", "--out", out, expect="missing.zip not found")
    assert_no_output(out)

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    run_fails("prepare_enwik8", "--archive", truncated, "--out", out, *ENWIK8_SPLIT, expect="truncated or corrupt")
    assert_no_output(out)

    corrupt = bytearray(good.read_bytes())  # flip bytes inside the compressed member: CRC/zlib error
    for k in range(60, 90):
        corrupt[k] ^= 0x5A
    (tmp_path / "corrupt.zip").write_bytes(bytes(corrupt))
    run_fails("prepare_enwik8", "--archive", tmp_path / "corrupt.zip", "--out", out, *ENWIK8_SPLIT,
              expect="truncated or corrupt")
    assert_no_output(out)

    other = write_zip(tmp_path / "other.zip", {"enwik9": data})
    run_fails("prepare_enwik8", "--archive", other, "--out", out, *ENWIK8_SPLIT, expect="has no member enwik8")
    assert_no_output(out)

    # The official checks: the archive's size (then SHA-256) ...
    line = run_fails("prepare_enwik8", "--archive", good, "--out", out, expect="the official enwik8.zip has 36,445,475")
    assert "--skip-checksum" in line
    # ... and, for a custom archive, the standard split's 100,000,000 bytes.
    run_fails("prepare_enwik8", "--archive", good, "--out", out, "--skip-checksum",
              expect="has 4,000 bytes, but the split sizes add up to 100,000,000")
    run_fails("prepare_enwik8", "--archive", good, "--out", out, "--skip-checksum", "--split-sizes", "3000,500,400",
              expect="split sizes add up to 3,900")
    assert_no_output(out)

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "enwik8").write_bytes(data)
    run_fails("prepare_enwik8", "--raw-dir", raw, "--out", out, "--split-sizes", "3000,500,500",
              expect="SHA-1")  # the published SHA-1 of enwik8
    assert_no_output(out)

    line = run_fails("prepare_enwik8", "--url", "http://127.0.0.1:9/enwik8.zip", "--out", out, *ENWIK8_SPLIT,
                     expect="no network: download http://127.0.0.1:9/enwik8.zip yourself and pass --archive PATH")
    assert_no_output(out)

    with pytest.raises(SystemExit):  # argparse: not three positive sizes
        with contextlib.redirect_stderr(io.StringIO()):
            script("prepare_enwik8").main(["--split-sizes", "3000,0,500"])


def test_enwik8_downloads_once_and_reads_an_extracted_file(tmp_path):
    data = enwik8_bytes()
    served = tmp_path / "served"
    served.mkdir()
    write_zip(served / "enwik8.zip", {"enwik8": data})
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = "http://127.0.0.1:{}/enwik8.zip".format(server.server_address[1])
        out = tmp_path / "out"
        run_ok("prepare_enwik8", "--url", url, "--out", out, *ENWIK8_SPLIT)
        assert (out / "downloads" / "enwik8.zip").read_bytes() == (served / "enwik8.zip").read_bytes()
        server.shutdown()  # a rerun must not need the network
        log = run_ok("prepare_enwik8", "--url", url, "--out", out, *ENWIK8_SPLIT)
        assert "using the earlier download" in log
        expect_steps(log, skipped=("verify", "tokenize", "binarize"))
    finally:
        server.shutdown()
        server.server_close()

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "enwik8").write_bytes(data)
    run_ok("prepare_enwik8", "--raw-dir", raw, "--out", tmp_path / "from_raw", *ENWIK8_SPLIT)
    assert decode_bytes(tmp_path / "from_raw" / "data-bin", "train")[1] == data[:3000]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_an_interrupted_run_keeps_finished_steps_and_loses_nothing(tmp_path, monkeypatch):
    from fairseq_srupp.data import binarize, files

    data = enwik8_bytes()
    archive = write_zip(tmp_path / "enwik8.zip", {"enwik8": data})
    out = tmp_path / "out"
    real = binarize.fairseq_preprocess

    def interrupted(data_bin, files, **kwargs):
        def finish(tmp):
            assert (tmp / "train.bin").exists()  # fairseq wrote its output ... then the user hits Ctrl-C
            raise KeyboardInterrupt

        return real(data_bin, files, **dict(kwargs, finish=finish))

    monkeypatch.setattr(binarize, "fairseq_preprocess", interrupted)
    code, log, err = run("prepare_enwik8", "--archive", archive, "--out", out, *ENWIK8_SPLIT)
    assert code == 130 and "rerun the same command" in err
    assert not (out / "data-bin").exists()
    assert not [p for p in out.rglob("*") if files.TMP_MARK in p.name]
    assert (out / ".stamps" / "tokenize.json").exists() and not (out / ".stamps" / "binarize.json").exists()
    monkeypatch.setattr(binarize, "fairseq_preprocess", real)

    stale = out / ".data-bin{}-99999".format(files.TMP_MARK)  # as if killed: temporaries left behind
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"partial")
    log = run_ok("prepare_enwik8", "--archive", archive, "--out", out, *ENWIK8_SPLIT)
    expect_steps(log, ran=("binarize",), skipped=("verify", "tokenize"))
    assert "removing" in log and not stale.exists()
    assert decode_bytes(out / "data-bin", "test")[1] == data[3500:]

    (out / "data-bin" / "valid.bin").unlink()  # a deleted output is rebuilt
    log = run_ok("prepare_enwik8", "--archive", archive, "--out", out, *ENWIK8_SPLIT)
    expect_steps(log, ran=("binarize",), skipped=("tokenize",))


# ---------------------------------------------------------------------------------------------
# WikiText-103
# ---------------------------------------------------------------------------------------------


def test_wikitext103_train_vocabulary_and_rerun(tmp_path):
    archive = wikitext_zip(tmp_path / "wikitext-103-v1.zip")
    out = tmp_path / "out"
    log = run_ok("prepare_wikitext103", "--archive", archive, "--out", out, "--skip-checksum")
    expect_steps(log, ran=("extract", "binarize"))
    data_bin = out / "data-bin"
    train, dictionary = decode(data_bin, "train")
    # One item per line, each ending with </s>; blank lines are a lone </s>.
    assert train == [line.split() + ["</s>"] for line in WIKI_TRAIN.splitlines()]
    # Every train word (no threshold), "<unk>" being fairseq's own special; nothing else.
    assert sorted(words(dictionary)) == sorted(set(WIKI_TRAIN.split()) - {"<unk>"})
    assert len(dictionary) % 8 == 0
    def expected(text):
        return [[w if w in set(WIKI_TRAIN.split()) else "<unk>" for w in line.split()] + ["</s>"]
                for line in text.splitlines()]

    valid = decode(data_bin, "valid")[0]
    assert valid == expected(WIKI_VALID) and ["The", "<unk>", "is", "a", "game", ".", "</s>"] in valid  # zebra
    assert decode(data_bin, "test")[0] == expected(WIKI_TEST)

    before = mtimes(out)
    log = run_ok("prepare_wikitext103", "--archive", archive, "--out", out, "--skip-checksum")
    expect_steps(log, skipped=("extract", "binarize"))
    assert mtimes(out) == before
    log = run_ok("prepare_wikitext103", "--archive", archive, "--out", out, "--skip-checksum", "--force")
    expect_steps(log, ran=("extract", "binarize"))

    wikitext_zip(archive, train=WIKI_TRAIN + " The zebra game . \n")
    log = run_ok("prepare_wikitext103", "--archive", archive, "--out", out, "--skip-checksum")
    expect_steps(log, ran=("extract", "binarize"))
    assert "zebra" in words(decode(data_bin, "train")[1])

    # --srcdict: the given dictionary verbatim (its order kept), words outside it -> <unk>.
    srcdict = tmp_path / "dict.txt"
    kept = ["game", "The", ".", "is", "a"]
    srcdict.write_text("".join("{} {}\n".format(w, 10 - i) for i, w in enumerate(kept)))
    run_ok("prepare_wikitext103", "--archive", archive, "--out", tmp_path / "given", "--skip-checksum",
           "--srcdict", srcdict)
    test, dictionary = decode(tmp_path / "given" / "data-bin", "test")
    assert words(dictionary) == kept and len(dictionary) == 4 + len(kept)
    assert test[1] == ["The", "game", "<unk>", "<unk>", "<unk>", "<unk>", ".", "</s>"]


def test_wikitext103_raw_dir_and_failures(tmp_path):
    raw = tmp_path / "wikitext-103"
    raw.mkdir()
    for split, text in (("train", WIKI_TRAIN), ("valid", WIKI_VALID), ("test", WIKI_TEST)):
        (raw / "wiki.{}.tokens".format(split)).write_text(text)
    out = tmp_path / "out"
    # Without --skip-checksum the published line counts are checked.
    run_fails("prepare_wikitext103", "--raw-dir", tmp_path, "--out", out,
              expect="has {} lines but WikiText-103's train split has 1,801,350".format(WIKI_TRAIN.count("\n")))
    assert_no_output(out)
    run_ok("prepare_wikitext103", "--raw-dir", tmp_path, "--out", out, "--skip-checksum")
    assert files_under(out / "data-bin") == sorted(["dict.txt", "preprocess.log"] + [
        "{}.{}".format(s, e) for s in ("train", "valid", "test") for e in ("bin", "idx")])
    assert not (out / "raw").exists()  # read in place

    run_fails("prepare_wikitext103", "--archive", tmp_path / "nope.zip", "--out", out / "a", expect="not found")
    missing = wikitext_zip(tmp_path / "missing.zip", skip=("test",))
    run_fails("prepare_wikitext103", "--archive", missing, "--out", out / "b", "--skip-checksum",
              expect="has no member wikitext-103/wiki.test.tokens")
    empty = wikitext_zip(tmp_path / "empty.zip", valid="")
    run_fails("prepare_wikitext103", "--archive", empty, "--out", out / "c", "--skip-checksum",
              expect="the valid split")
    good = wikitext_zip(tmp_path / "good.zip")
    run_fails("prepare_wikitext103", "--archive", good, "--out", out / "d", expect="SHA-256")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-30])
    run_fails("prepare_wikitext103", "--archive", truncated, "--out", out / "e", "--skip-checksum",
              expect="truncated or corrupt")
    for sub in "abcde":
        assert_no_output(out / sub)


# ---------------------------------------------------------------------------------------------
# One Billion Word
# ---------------------------------------------------------------------------------------------


def test_lm1b_sentences_threshold_and_vocabulary_file(tmp_path):
    archive = lm1b_tar(tmp_path / "lm1b.tar.gz")
    out = tmp_path / "out"
    train_shards, heldout = lm1b_shards()
    log = run_ok("prepare_lm1b", "--archive", archive, "--out", out, "--skip-checksum")
    expect_steps(log, ran=("extract", "splits", "binarize"))
    data_bin = out / "data-bin"
    sentences = [s for name in sorted(train_shards) for s in train_shards[name]]
    counts = {}
    for s in sentences:
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    train, dictionary = decode(data_bin, "train")
    # --threshold 3 (the default): kept iff seen at least 3 times in train.
    assert "alpha" in words(dictionary) and counts["alpha"] == 3
    assert "beta" not in words(dictionary) and counts["beta"] == 2
    assert sorted(words(dictionary)) == sorted(w for w, c in counts.items() if c >= 3)
    # One item per sentence, the shards in name order.
    assert len(train) == 99 * 3
    assert train == [[w if counts[w] >= 3 else "<unk>" for w in s.split()] + ["</s>"] for s in sentences]
    # valid = test = held-out shard 0, as Transformer-XL's getdata.sh.
    valid, _ = decode(data_bin, "valid")
    assert valid == [["the", "alpha", "<unk>", "<unk>", "<unk>", "<unk>", "</s>"], ["a", "the", "</s>"]]
    assert decode(data_bin, "test")[0] == valid

    log = run_ok("prepare_lm1b", "--archive", archive, "--out", out, "--skip-checksum")
    expect_steps(log, skipped=("extract", "splits", "binarize"))

    log = run_ok("prepare_lm1b", "--archive", archive, "--out", out, "--skip-checksum", "--threshold", "2",
                 "--valid-shards", "1", "--test-shards", "2,3")
    expect_steps(log, ran=("splits", "binarize"), skipped=("extract",))
    _, dictionary = decode(data_bin, "train")
    assert "beta" in words(dictionary)
    assert decode(data_bin, "valid")[0] == [["the", "alpha", "beta", "<unk>", "<unk>", "<unk>", "</s>"],
                                            ["a", "the", "</s>"]]  # "gamma 1 ." unseen or seen once
    assert len(decode(data_bin, "test")[0]) == 4  # held-out shards 2 and 3

    # The benchmark's vocabulary file: <S> </S> <UNK> become fairseq's specials, order kept.
    vocab = tmp_path / "1b_word_vocab.txt"
    vocab.write_text("the 50\n<S> 40\n</S> 40\na 30\n<UNK> 20\nbeta 2\ngamma 1\nthe 1\n")
    run_ok("prepare_lm1b", "--archive", archive, "--out", tmp_path / "vocab", "--skip-checksum", "--vocab-file", vocab)
    valid, dictionary = decode(tmp_path / "vocab" / "data-bin", "valid")
    assert words(dictionary) == ["the", "a", "beta", "gamma"] and len(dictionary) == 8
    assert valid[0] == ["the", "<unk>", "beta", "gamma", "<unk>", "<unk>", "</s>"]


def test_lm1b_failures(tmp_path):
    good = lm1b_tar(tmp_path / "lm1b.tar.gz")
    out = tmp_path / "out"
    run_fails("prepare_lm1b", "--archive", good, "--out", out / "a", expect="official archive has 1,792,209,805")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    run_fails("prepare_lm1b", "--archive", truncated, "--out", out / "b", "--skip-checksum",
              expect="truncated or corrupt")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(5000)))
    run_fails("prepare_lm1b", "--archive", garbage, "--out", out / "c", "--skip-checksum",
              expect="truncated or corrupt")
    missing = lm1b_tar(tmp_path / "missing.tar.gz", drop=("news.en-00042-of-00100",))
    run_fails("prepare_lm1b", "--archive", missing, "--out", out / "d", "--skip-checksum",
              expect="training-monolingual.tokenized.shuffled/news.en-00042-of-00100")
    # Without --skip-checksum a raw directory is checked by its sentence count.
    with tarfile.open(good) as tar:
        tar.extractall(tmp_path / "raw", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    run_fails("prepare_lm1b", "--raw-dir", tmp_path / "raw", "--out", out / "e",
              expect="hold 297 sentences but the benchmark's hold 30,301,028")
    heldout_dir = tmp_path / "raw" / LM1B_TOP / "heldout-monolingual.tokenized.shuffled"
    (heldout_dir / "news.en.heldout-00000-of-00050").write_text("")
    run_fails("prepare_lm1b", "--raw-dir", tmp_path / "raw", "--out", out / "f", "--skip-checksum",
              expect="the valid split is empty")
    run_fails("prepare_lm1b", "--archive", good, "--out", out / "g", "--skip-checksum", "--vocab-file",
              tmp_path / "nope", expect="--vocab-file")
    for sub in "abcdefg":
        assert_no_output(out / sub)


# ---------------------------------------------------------------------------------------------
# Generic text
# ---------------------------------------------------------------------------------------------


def test_prepare_text_word_and_char_levels(tmp_path):
    files = {"train": "a b c a b a\nd a\n", "valid": "a z\n", "test": "b b\n"}
    for split, text in files.items():
        (tmp_path / split).write_text(text)
    out = tmp_path / "word"
    run_ok("prepare_text", "--level", "word", "--threshold", "2", "--out", out,
           *[a for s in files for a in ("--" + s, tmp_path / s)])
    train, dictionary = decode(out / "data-bin", "train")
    assert words(dictionary) == ["a", "b"]  # a: 4, b: 2, c and d once
    assert train == [["a", "b", "<unk>", "a", "b", "a", "</s>"], ["<unk>", "a", "</s>"]]
    assert decode(out / "data-bin", "valid")[0] == [["a", "<unk>", "</s>"]]

    text = "".join("Line {}, with punctuation: \"quoted\" -- and é!\n".format(i) for i in range(120)).encode()
    (tmp_path / "corpus.txt").write_bytes(text[:-1])  # no final newline
    run_ok("prepare_text", "--text", tmp_path / "corpus.txt", "--out", tmp_path / "char", "--vocab", "corpus")
    decoded = b"".join(decode_bytes(tmp_path / "char" / "data-bin", s)[1] for s in ("train", "valid", "test"))
    assert decoded == text[:-1]

    run_ok("prepare_text", "--text", tmp_path / "corpus.txt", "--out", tmp_path / "moses", "--level", "word",
           "--tokenizer", "moses")
    first = (tmp_path / "moses" / "train.tokens").read_text().splitlines()[0]
    assert first == 'Line 0 , with punctuation : " quoted " -- and é !'
    valid = (tmp_path / "moses" / "valid.tokens").read_text().splitlines()
    assert len(valid) == 6 and valid[0].startswith("Line 108 ,")  # 5% of 120 lines, before the last 5%
    assert len(decode(tmp_path / "moses" / "data-bin", "valid")[0]) == 6

    run_fails("prepare_text", "--text", tmp_path / "nope.txt", "--out", tmp_path / "x", expect="not found")
    (tmp_path / "empty").write_text("")
    run_fails("prepare_text", "--level", "word", "--out", tmp_path / "y", "--train", tmp_path / "train",
              "--valid", tmp_path / "empty", "--test", tmp_path / "test", expect="the valid split")
    run_fails("prepare_text", "--url", "http://127.0.0.1:9/corpus.txt", "--out", tmp_path / "z",
              expect="no network: download http://127.0.0.1:9/corpus.txt yourself and pass --text PATH")
    for sub in "xyz":
        assert_no_output(tmp_path / sub)


# ---------------------------------------------------------------------------------------------
# As the user runs them
# ---------------------------------------------------------------------------------------------


def test_scripts_run_as_commands(tmp_path):
    """--help of every script from the repository root, a failure from elsewhere (one line on
    stderr, no traceback), and the README's prepare_char_text.py command; concurrently."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"".join(b"line %d of a small corpus\n" % i for i in range(200)))
    names = ["prepare_enwik8", "prepare_wikitext103", "prepare_lm1b", "prepare_text", "prepare_char_text"]
    commands = {name: ([sys.executable, "data_scripts/{}.py".format(name), "--help"], REPO) for name in names}
    commands["fail"] = ([sys.executable, str(SCRIPTS / "prepare_wikitext103.py"), "--archive", "nope.zip",
                         "--out", "out"], tmp_path)
    commands["char"] = ([sys.executable, str(SCRIPTS / "prepare_char_text.py"), "--text", str(corpus),
                         "--out", str(tmp_path / "char")], tmp_path)
    procs = {k: fork_server.popen(cmd, cwd=cwd, env=env, stderr_apart=True) for k, (cmd, cwd) in commands.items()}
    results = {}
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[k] = (p.returncode, out, err)
    for name in names:
        code, out, err = results[name]
        assert code == 0, err
        assert "usage:" in out and "--out" in out
    for name in names[:4]:
        assert "OUT then holds" in results[name][1]
    code, out, err = results["fail"]
    assert code == 2 and "Traceback" not in out + err
    assert err.strip().splitlines() == ["error: archive nope.zip not found: download "
                                        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"
                                        " and pass its path with --archive"]
    assert not (tmp_path / "out").exists()
    code, out, err = results["char"]
    assert code == 0, err
    assert "ready for fairseq-train" in out
    decoded = b"".join(decode_bytes(tmp_path / "char" / "data-bin", s)[1] for s in ("train", "valid", "test"))
    assert decoded == corpus.read_bytes()
