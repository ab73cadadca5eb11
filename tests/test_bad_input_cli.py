"""User mistakes with the real commands (fairseq-train, fairseq-eval-lm, fairseq-generate, srupp-sample):
each ends in exactly one ``error:`` line naming the flag or file, exit status 1, no traceback, and the
data and checkpoints it was pointed at are left as they were.

One tiny checkpoint (one update) is shared by every case; the training cases run in its --save-dir,
so a run that got as far as saving would show up as a changed checkpoint_last.pt. A command costs
~2 s (mostly imports), so there is one per way an error reaches the terminal; the variants of each
check (other flags, fairseq-interactive's --path, ...) run in process at the end of the file.
"""
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import fork_server
from cli_utils import BIN, STATEFUL_TRAIN_ARGS, TINY_TRAIN_ARGS, USER_DIR, make_char_data, run_tool
from omegaconf import OmegaConf
from test_bad_input_task import LOG_RECORD, snapshot

from fairseq_srupp.errors import SRUppUserError

TRAIN_ARGS = [*STATEFUL_TRAIN_ARGS, "--max-update", 1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data, a one-update checkpoint and broken copies of both (paths in a namespace)."""
    root = tmp_path_factory.mktemp("bad_cli")
    data = make_char_data(root, n_train=3000, n_valid=800)
    save_dir = root / "ckpt"
    run_tool("fairseq-train", data, *TRAIN_ARGS, "--batch-size", 2, "--save-dir", save_dir)
    ckpt = save_dir / "checkpoint_last.pt"

    truncated = root / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:4000])  # a copy cut short, as by a full disk
    text = root / "notes.pt"
    text.write_text("not a checkpoint\n")

    # A dictionary with more symbols than the checkpoint's (every token id still in range).
    other_dict = root / "other-dict"
    shutil.copytree(data, other_dict)
    with open(other_dict / "dict.txt", "a") as f:
        f.write("".join("extra{} 1\n".format(i) for i in range(5)))

    # An empty valid split, as fairseq-preprocess writes it for an empty text.
    empty_valid = root / "empty-valid"
    shutil.copytree(data, empty_valid)
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(str(empty_valid / "valid.bin"), impl="mmap", vocab_size=300)
    builder.finalize(str(empty_valid / "valid.idx"))
    return SimpleNamespace(root=root, data=data, save_dir=save_dir, ckpt=ckpt, truncated=truncated, text=text,
                           other_dict=other_dict, empty_valid=empty_valid)


def train(e, *args, data=None):
    return [BIN / "fairseq-train", data or e.data, *TRAIN_ARGS, "--save-dir", e.save_dir, *args]


def train_lm(e, *args):
    """fairseq's own language_modeling task (the srupp task checks its data itself), with a model of other sizes
    than the shared checkpoint's: in a --save-dir of its own."""
    return [BIN / "fairseq-train", e.data, *TINY_TRAIN_ARGS, "--max-update", 1, "--save-dir", e.root / "lm-ckpt", *args]


def interactive(e, *args):
    return [BIN / "fairseq-interactive", e.data, "--user-dir", USER_DIR, "--task", "language_modeling", "--path", e.ckpt,
            "--cpu", *args]


def eval_lm(e, *args, path=None):
    return [BIN / "fairseq-eval-lm", e.data, "--user-dir", USER_DIR, "--task", "srupp_language_modeling",
            "--path", path or e.ckpt, "--cpu", "--gen-subset", "valid", "--batch-size", 2, "--num-workers", 0, *args]


def generate(e, path, *args):
    return [BIN / "fairseq-generate", e.data, "--user-dir", USER_DIR, "--task", "language_modeling", "--path", path,
            "--gen-subset", "test", "--sample-break-mode", "eos", "--prefix-size", 3, "--max-len-b", 10,
            "--batch-size", 8, "--cpu", "--num-workers", 0, *args]


def sample(e, *args):
    return [sys.executable, "-m", "fairseq_srupp.sample_cli", "--path", e.ckpt, "--prompt", "the", "-n", 5, "--cpu",
            *args]


# (id, command, the error line's start): each names the flag or file to fix.
CASES = [
    # configurations fairseq-train cannot run, caught before any data is read
    ("no-batch-size", lambda e: train(e), "error: srupp_language_modeling needs --batch-size (streams per worker)"),
    ("restore-file-missing", lambda e: train(e, "--batch-size", 2, "--restore-file", e.root / "nope.pt"),
     "error: --restore-file {root}/nope.pt does not exist: give an existing checkpoint"),
    # model flags (the optimizer's and scheduler's reach the terminal the same way)
    ("heads-not-dividing-proj", lambda e: train(e, "--batch-size", 2, "--num-heads", 5),
     "error: --proj-size (24) must be divisible by --num-heads (5)"),
    # data
    ("empty-valid-split", lambda e: train(e, "--batch-size", 2, data=e.empty_valid),
     "error: split 'valid' is empty ({root}/empty-valid/valid.bin has no tokens)"),
    # checkpoints that do not fit: resumed in the same --save-dir, or given to the other commands
    ("resume-with-other-sizes", lambda e: train(e, "--batch-size", 2, "--hidden-size", 32),
     "error: the checkpoint's parameters do not fit this srupp_lm (14 of another size: decoder.embed_tokens.weight "
     "(32, 48) (here (32, 32))"),
    ("eval-lm-path-missing", lambda e: eval_lm(e, path=e.root / "nope.pt"),
     "error: checkpoint {root}/nope.pt does not exist (--path)"),
    ("generate-truncated", lambda e: generate(e, e.truncated),
     "error: {root}/truncated.pt is not a complete PyTorch checkpoint (4000 bytes;"),
    ("sample-other-dictionary", lambda e: sample(e, "--data", e.other_dict),
     "error: the checkpoint was trained with a dictionary of 32 symbols but the task's dictionary has 37"),
    # fairseq's own task, and models it cannot configure
    ("lm-valid-subset-missing", lambda e: train_lm(e, "--valid-subset", "valid,valid1"),
     "error: split 'valid1' not found: expected {root}/data-bin/valid1.bin/.idx from fairseq-preprocess (splits in "
     "{root}/data-bin: test, train, valid)"),
    ("lm-samples-longer-than-max-tokens", lambda e: train_lm(e, "--max-tokens", 16),
     "error: no sample left to batch: fairseq skipped every one as too long (longer than --max-tokens 16"),
    ("srupp-task-transformer-arch", lambda e: [BIN / "fairseq-train", e.data, "--user-dir", USER_DIR, "--task",
                                               "srupp_language_modeling", "--arch", "transformer_lm", "--cpu",
                                               "--batch-size", 2, "--tokens-per-sample", 32, "--optimizer", "adam",
                                               "--lr", 0.001, "--max-update", 1, "--save-dir", e.save_dir],
     "error: --arch transformer_lm takes task.max_target_positions from its task, which --task "
     "srupp_language_modeling does not have: srupp_language_modeling trains models that carry their state"),
    # search settings, checked before the checkpoint is read (fairseq-generate is not run through call_main)
    ("interactive-beam-0", lambda e: interactive(e, "--beam", 0), "error: --beam must be >= 1"),
    ("generate-sampling-nbest", lambda e: generate(e, e.ckpt, "--sampling"),
     "error: --sampling draws --beam (5) samples per input and fairseq needs --nbest (1) equal to it"),
    ("generate-sample-over-max-tokens", lambda e: generate(e, e.ckpt, "--max-tokens", 3),
     "error: a sample has "),
    ("eval-lm-context-window-too-wide", lambda e: eval_lm(e, "--task", "language_modeling", "--tokens-per-sample", 8,
                                                          "--context-window", 8),
     "error: --context-window 8 must be below --tokens-per-sample 8"),
    # a rank that can never join: refused before the rendezvous (it waited forever)
    ("distributed-rank-outside-world", lambda e: train(e, "--batch-size", 2, "--distributed-world-size", 2,
                                                       "--distributed-rank", 3, "--distributed-no-spawn",
                                                       "--distributed-init-method", "tcp://127.0.0.1:29598",
                                                       "--distributed-backend", "gloo"),
     "error: --distributed-rank 3 is outside --distributed-world-size 2: give a rank from 0 to 1"),
    ("eval-lm-model-overrides-not-a-dict", lambda e: eval_lm(e, "--model-overrides", "{bad"),
     "error: --model-overrides {{bad is not a Python dict literal ('{{' was never closed)"),  # {{: str.format
    # fairseq-preprocess run again into the same --destdir: refused before it touches the folder (fairseq made
    # preprocess.log there, then raised FileExistsError)
    ("preprocess-into-existing-data", lambda e: [BIN / "fairseq-preprocess", "--user-dir", USER_DIR, "--only-source",
                                                 "--trainpref", e.root / "train.txt", "--destdir", e.data],
     "error: {root}/data-bin/dict.txt exists already (from an earlier run) and fairseq-preprocess will not overwrite "
     "it: give another --destdir, delete that folder's dictionary and splits, or reuse it with --srcdict "
     "{root}/data-bin/dict.txt"),
    # the commands run as `python -m fairseq_cli.X` (as the demo and the quality benchmark run fairseq-train): the
    # same checks (call_main's command, fairseq-train's included, and the wrapped mains were looked up under their
    # module names only)
    ("generate-as-module", lambda e: [sys.executable, "-m", "fairseq_cli.generate", *generate(e, e.ckpt, "--beam", 0)[1:]],
     "error: --beam must be >= 1"),
    ("eval-lm-as-module", lambda e: [sys.executable, "-m", "fairseq_cli.eval_lm", *eval_lm(e, "--softmax-batch", -3)[1:]],
     "error: --softmax-batch must be >= 0"),
    # fairseq-validate has no default --task: fairseq's parser failed with KeyError: None before any check; the
    # checkpoint's task is named
    ("validate-without-task", lambda e: [BIN / "fairseq-validate", e.data, "--user-dir", USER_DIR, "--path", e.ckpt,
                                         "--cpu", "--batch-size", 2],
     "error: fairseq-validate needs --task: give the task the checkpoint was trained with (--task "
     "srupp_language_modeling)"),
    ("validate-without-batch-size", lambda e: [BIN / "fairseq-validate", e.data, "--user-dir", USER_DIR, "--task",
                                               "srupp_language_modeling", "--path", e.ckpt, "--cpu"],
     "error: srupp_language_modeling needs --batch-size (streams per worker)"),
    # already one line before this audit: pinned
    ("eval-lm-context-window", lambda e: eval_lm(e, "--context-window", 5),
     "error: --context-window does not apply to srupp_language_modeling"),
]


@pytest.mark.parametrize("make_cmd,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_error_line_and_nothing_lost(env, make_cmd, expected):
    before = {d: snapshot(d) for d in (env.data, env.save_dir)}
    proc = fork_server.run(make_cmd(env), env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
                           stderr_apart=True, timeout=300)
    # set aside log records that reach stderr (fairseq's own, where the plugin is not loaded yet): the rest is the
    # one error line
    lines = [line for line in proc.stderr.strip().splitlines() if not LOG_RECORD.match(line)]
    print(lines)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(expected.format(root=env.root)), proc.stderr[-3000:]
    assert {d: snapshot(d) for d in before} == before


# ------------------------------------------------------------------------- variants, in process
@pytest.mark.parametrize("betas,ok", [("(0.9, 0.999)", (0.9, 0.999)), ([0.8, 0.9], (0.8, 0.9)), ("(0.9)", None),
                                      ("abc", None), ("(0.9, 1.0)", None), ("(0.9, 0.99, 0.999)", None),
                                      ("__import__('os')", None)])
def test_radam_betas(betas, ok):
    from fairseq_srupp.optim.config_values import parse_betas

    if ok is not None:
        assert parse_betas(betas) == ok
    else:
        message = "--radam-betas {!r} must be two numbers in [0, 1)".format(betas)
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            parse_betas(betas)


@pytest.mark.parametrize("key,value,flag", [("lr", [-0.1], "--lr must be >= 0"), ("radam_eps", -1.0, "--radam-eps"),
                                            ("weight_decay", float("nan"), "--weight-decay must be >= 0, got nan")])
def test_radam_rejects_negative_settings(key, value, flag):
    from fairseq_srupp.optim.radam import FairseqRAdam

    cfg = OmegaConf.create({"_name": "radam", "lr": [0.01], "weight_decay": 0.0, "radam_betas": "(0.9, 0.999)",
                            "radam_eps": 1e-8})
    cfg[key] = value
    with pytest.raises(SRUppUserError, match=re.escape(flag)):
        FairseqRAdam(cfg, [torch.nn.Parameter(torch.zeros(2))])


def test_train_config_checks_in_process(tmp_path, caplog):
    """What the wrapper of call_main checks, on fairseq-train's own parsed configuration."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_srupp.train_checks import check_train_config

    def config(*args, task="srupp_language_modeling", arch="srupp_lm_tiny"):
        parser = options.get_training_parser()
        cmd = [str(tmp_path), "--user-dir", USER_DIR, "--task", task, "--arch", arch, "--cpu", *map(str, args)]
        return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, cmd))

    check_train_config(config("--batch-size", 2))  # a good one passes
    assert "full (batch, length, vocabulary) log-softmax" not in caplog.text
    check_train_config(config("--batch-size", 2, "--adaptive-softmax-cutoff", "10"))  # allowed, with a warning
    assert "--criterion srupp_adaptive_loss gives the same loss without it" in caplog.text
    existing = tmp_path / "pretrained.pt"
    existing.write_bytes(b"")
    check_train_config(config("--batch-size", 2, "--restore-file", existing))
    gpus = torch.cuda.device_count()
    save_dir = tmp_path / "ckpt"
    save_dir.mkdir()
    (save_dir / "checkpoint_best.pt").write_bytes(b"")
    for args, message in [
        (("--batch-size", 2, "--save-dir", save_dir, "--restore-file", "checkpoint_best.pt"),
         "--restore-file checkpoint_best.pt does not exist: it is read from the current directory, not --save-dir: "
         "pass {}".format(save_dir / "checkpoint_best.pt")),
        (("--max-tokens", 512), "needs --batch-size (streams per worker); --max-tokens does not set it"),
        (("--batch-size", 2, "--fp16"), "--fp16 needs a CUDA GPU and --cpu was given: drop it"),
        (("--batch-size", 2, "--distributed-world-size", max(gpus + 1, 2)),
         "--distributed-world-size {} starts one process per GPU, but {} GPU(s) are available: on CPU start each "
         "rank yourself with --distributed-rank R".format(max(gpus + 1, 2), gpus)),
        (("--batch-size", 2, "--criterion", "adaptive_loss"),
         "--criterion adaptive_loss needs fairseq's own adaptive softmax; srupp_lm's projected one"),
        (("--batch-size", 2, "--memory-efficient-fp16"), "--memory-efficient-fp16 needs a CUDA GPU"),
        (("--batch-size", 2, "--amp"), "--amp needs a CUDA GPU and --cpu was given (without one fairseq's autocast "
         "and loss scaling are off: it would train in fp32 unchanged): drop it (on CPU, --bf16 trains in bfloat16)"),
        (("--batch-size", 2, "--restore-file", tmp_path), "--restore-file {} is a directory".format(tmp_path)),
        (("--batch-size", 2, "--distributed-world-size", 2, "--distributed-rank", 1, "--distributed-no-spawn",
          "--distributed-init-method", "tcp://127.0.0.1:29999", "--distributed-backend", "gloo"),
         "--ddp-backend pytorch_ddp (fairseq's default) needs GPUs: on the CPU add --ddp-backend legacy_ddp"),
    ]:
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            check_train_config(config(*args))
    for args, message in [(("--batch-size", 0), "--batch-size must be >= 1, got 0"),
                          (("--max-tokens", 0), "--max-tokens must be >= 1, got 0"),
                          (("--batch-size", 2, "--batch-size-valid", 0), "--batch-size-valid must be >= 1, got 0"),
                          (("--batch-size", 2, "--seed", 2 ** 32), "--seed must be an integer from 0 to 2**32 - 1"),
                          (("--batch-size", 2, "--num-workers", -1), "--num-workers must be >= 0"),
                          (("--batch-size", 2, "--tokens-per-sample", -5),
                           "--tokens-per-sample must be >= 1 (tokens per block), got -5")]:
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            check_train_config(config(*args, task="language_modeling"))
    message = ("--criterion srupp_adaptive_loss needs a srupp_lm model (--arch srupp_lm...), got "
               "TransformerLanguageModel")
    with pytest.raises(SRUppUserError, match=re.escape(message)):
        check_train_config(config("--batch-size", 2, "--criterion", "srupp_adaptive_loss", task="language_modeling",
                                  arch="transformer_lm"))


def _fake_checkpoint(path, model_name):
    """A file that reads as a fairseq checkpoint of ``model_name`` (what the architecture check reads)."""
    torch.save({"cfg": {"model": {"_name": model_name}}, "model": {}}, str(path))
    return path


def test_train_config_checks_of_paths_and_schedules(tmp_path):
    """More of what the wrapper of call_main checks: settings fairseq fails on with a traceback (or a hang, or
    silently), each refused in one line; and the configurations next to them that run. Two parsed command
    lines, varied by config key (parsing one costs ~1 s)."""
    import copy

    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_srupp.train_checks import check_train_config

    def config(*args):
        parser = options.get_training_parser()
        cmd = [str(tmp_path), "--user-dir", USER_DIR, "--task", "srupp_language_modeling", "--arch", "srupp_lm_tiny",
               "--cpu", "--batch-size", "2", "--save-dir", str(tmp_path / "ckpt"), *map(str, args)]
        return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, cmd))

    plain, cosine = config(), config("--lr-scheduler", "cosine")
    lm_task = config("--task", "language_modeling")
    adam, adamax = config("--optimizer", "adam"), config("--optimizer", "adamax")

    def varied(base, **keys):  # section__key=value, e.g. checkpoint__save_dir="..."
        cfg = copy.deepcopy(base)
        for key, value in keys.items():
            OmegaConf.update(cfg, key.replace("__", "."), str(value) if isinstance(value, Path) else value)
        return cfg

    a_file = tmp_path / "corpus.txt"
    a_file.write_text("the cat\n")
    transformer = _fake_checkpoint(tmp_path / "transformer.pt", "transformer_lm")
    srupp = _fake_checkpoint(tmp_path / "srupp.pt", "srupp_lm_tiny")
    other_run = tmp_path / "other-run"
    other_run.mkdir()
    _fake_checkpoint(other_run / "checkpoint_last.pt", "transformer_lm")
    rank = dict(distributed_training__distributed_init_method="tcp://127.0.0.1:29598",
                distributed_training__distributed_no_spawn=True, distributed_training__distributed_world_size=2,
                distributed_training__ddp_backend="legacy_ddp")
    for cfg in [varied(cosine, optimization__max_update=5, lr_scheduler__warmup_updates=4),
                varied(cosine, optimization__max_update=30, lr_scheduler__warmup_updates=100),  # as the demo's test
                varied(cosine, lr_scheduler__lr_period_updates=5), varied(plain, optimization__update_freq=[1, 2]),
                varied(plain, common__log_file=tmp_path / "train.log"),
                varied(plain, checkpoint__finetune_from_model=srupp), varied(plain, checkpoint__restore_file=srupp),
                varied(plain, **rank, distributed_training__distributed_rank=1),
                varied(adam, optimizer__adam_betas="(0.9, 0.98)", optimizer__weight_decay=0.01, optimization__lr=[0.0]),
                varied(adamax, optimization__max_update=0, optimization__max_epoch=0),
                varied(plain, checkpoint__best_checkpoint_metric="ppl", common__tensorboard_logdir=tmp_path / "tb"),
                varied(plain, checkpoint__best_checkpoint_metric="accuracy", dataset__disable_validation=True),
                varied(plain, checkpoint__best_checkpoint_metric="nll_loss", criterion__sentence_avg=True)]:
        check_train_config(cfg)
    for cfg, message in [
        (config("--max-tokens", 10), "--max-tokens does not apply to srupp_language_modeling: a batch is --batch-size "
                                     "(2) streams of one segment"),
        (varied(plain, dataset__max_tokens_valid=10), "drop --max-tokens-valid and lower --batch-size"),
        (varied(plain, **rank, distributed_training__distributed_rank=2),
         "--distributed-rank 2 is outside --distributed-world-size 2: give a rank from 0 to 1 (a rank outside the "
         "world waits forever at the rendezvous)"),
        (varied(plain, distributed_training__distributed_rank=1),
         "--distributed-rank 1 is outside --distributed-world-size 1"),
        (varied(plain, optimization__update_freq=[0]), "--update-freq must be >= 1 (batches accumulated per update"),
        (varied(plain, optimization__update_freq=[2, 0]), "got 2,0"),
        (varied(plain, optimization__lr=[-0.5]),
         "--lr must be >= 0 (the learning rate; one value, or one per epoch separated by commas), got -0.5"),
        (varied(plain, optimization__lr=[1e-3, float("nan")]), "--lr must be >= 0 (the learning rate; one value, or "
                                                               "one per epoch separated by commas), got 0.001,nan"),
        (varied(plain, optimization__clip_norm=float("nan")),
         "--clip-norm must be a number (the gradient norm clipped to; 0: no clipping), got nan"),
        (varied(plain, optimization__max_update=-1),
         "--max-update must be >= 0 (0: no limit), got -1: fairseq-train would stop before its first update"),
        (varied(plain, optimization__max_epoch=-2), "--max-epoch must be >= 0 (0: no limit), got -2"),
        (varied(plain, common__log_interval=0), "--log-interval must be >= 1 (updates between log lines), got 0"),
        (varied(plain, checkpoint__best_checkpoint_metric="accuracy"),
         "--best-checkpoint-metric accuracy is not among what validation reports with --criterion cross_entropy "
         "(loss, ppl, wps, wpb, bsz, num_updates): fairseq-train would fail at its first validation, before saving"),
        (varied(plain, checkpoint__best_checkpoint_metric="nll_loss"), "--best-checkpoint-metric nll_loss is not"),
        (varied(plain, common__tensorboard_logdir=a_file),
         "--tensorboard-logdir {} is a file: give a folder for the event files".format(a_file)),
        (varied(plain, dataset__validate_interval=0),
         "--validate-interval must be >= 1 (epochs between validations; --disable-validation for none), got 0: "
         "fairseq-train would fail at the end of the first epoch, before saving it"),
        (varied(plain, checkpoint__save_interval=-1, dataset__disable_validation=True),
         "--save-interval must be >= 1 (epochs between checkpoints; --no-save for none), got -1"),
        (varied(adam, optimizer__adam_betas="(0.9, 1.0)"),
         "--adam-betas '(0.9, 1.0)' must be two numbers in [0, 1), e.g. '(0.9, 0.999)'"),
        (varied(adam, optimizer__adam_eps=-1.0), "--adam-eps must be >= 0, got -1.0"),
        (varied(adam, optimizer__weight_decay=-0.1), "--weight-decay must be >= 0, got -0.1"),
        (config("--optimizer", "adamax", "--adamax-betas", "(2, 0)"), "--adamax-betas '(2, 0)' must be two numbers"),
        (cosine, "--lr-scheduler cosine needs --max-update (its period is --max-update minus --warmup-updates) or "
                 "--lr-period-updates"),
        (varied(cosine, optimization__max_update=5, lr_scheduler__warmup_updates=5),
         "--warmup-updates 5 equals --max-update 5: --lr-scheduler cosine's period (--max-update minus "
         "--warmup-updates) would be 0"),
        (varied(lm_task, task__self_target=True, task__future_target=True),
         "--self-target asks for other targets than the next token, which is all srupp_lm predicts: drop it"),
        (varied(lm_task, task__output_dictionary_size=5),
         "--output-dictionary-size 5: srupp_lm reads and predicts over the whole dictionary: drop it"),
        (varied(plain, checkpoint__save_dir=a_file),
         "--save-dir {} is a file: give a folder for the checkpoints".format(a_file)),
        (varied(plain, checkpoint__save_dir=a_file / "sub"),
         "--save-dir {} is inside {}, a file".format(a_file / "sub", a_file)),
        (varied(plain, common__log_file=tmp_path / "nodir" / "train.log"),
         "--log-file {}: its folder {} does not exist: create it first (mkdir -p {})".format(
             tmp_path / "nodir" / "train.log", tmp_path / "nodir", tmp_path / "nodir")),
        (varied(plain, common__log_file=a_file / "train.log"), "{} is a file, not a folder".format(a_file)),
        (varied(plain, common__log_file=tmp_path), "--log-file {} is a directory".format(tmp_path)),
        (varied(plain, checkpoint__finetune_from_model=tmp_path / "nope.pt"),
         "--finetune-from-model {} does not exist: give the checkpoint to start from".format(tmp_path / "nope.pt")),
        (varied(plain, checkpoint__finetune_from_model=srupp, checkpoint__reset_optimizer=True),
         "itself: drop --reset-optimizer"),
        (varied(plain, checkpoint__finetune_from_model=srupp, checkpoint__restore_file=srupp),
         "--finetune-from-model and --restore-file both name the checkpoint to start from"),
        (varied(plain, checkpoint__restore_file=transformer),
         "--restore-file {} holds a 'transformer_lm' model (TransformerLanguageModel), another architecture than the "
         "srupp_lm_tiny (SRUppLanguageModel) being trained: give a checkpoint of a srupp_lm_tiny model, or train "
         "--arch transformer_lm".format(transformer)),
        (varied(plain, checkpoint__finetune_from_model=transformer),
         "--finetune-from-model {} holds a 'transformer_lm' model".format(transformer)),
        (varied(plain, checkpoint__save_dir=other_run),
         "{}, which fairseq-train resumes from, holds a 'transformer_lm' model".format(
             other_run / "checkpoint_last.pt")),
    ]:
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            check_train_config(cfg)


@pytest.mark.parametrize("args,message", [
    (("--workers", 0), "--workers must be >= 1 (processes that binarize), got 0"),
    (("--destdir", "{text}"), "--destdir {text} is a file: give a folder for the binarized data"),
    (("--trainpref", "{root}/none.txt"), "--trainpref {root}/none.txt: {root}/none.txt does not exist"),
    (("--validpref", "{text},{root}/none.txt"), "--validpref {text},{root}/none.txt: {root}/none.txt does not exist"),
    (("--testpref", "{root}"), "--testpref {root}: {root} is a folder: give the text file's path"),
    (("--source-lang", "de"), "--trainpref {text}: {text}.de does not exist (with --source-lang L, fairseq reads "
                              "PREFIX.L)"),
    (("--srcdict", "{root}/none.txt"), "--srcdict {root}/none.txt does not exist"),
    (("--trainpref", ""), "give --trainpref (the text the dictionary is built from) or --srcdict"),
    (("--destdir", "{data}"), "{data}/dict.txt exists already (from an earlier run)"),
])
def test_preprocess_args(env, tmp_path, args, message):
    """What the wrapper of fairseq-preprocess's main checks (its run through the console script is a CASE above)."""
    from fairseq import options

    from fairseq_srupp.preprocess_checks import check_preprocess_args

    paths = dict(root=tmp_path, text=env.root / "train.txt", data=env.data)
    fmt = [str(a).format(**paths) for a in args]
    parsed = options.get_preprocessing_parser().parse_args(
        ["--only-source", "--trainpref", str(paths["text"]), "--destdir", str(tmp_path / "out"), *fmt])
    check_preprocess_args(options.get_preprocessing_parser().parse_args(
        ["--only-source", "--trainpref", str(paths["text"]), "--destdir", str(tmp_path / "out")]))  # the base runs
    with pytest.raises(SRUppUserError, match=re.escape(message.format(**paths))):
        check_preprocess_args(parsed)
    assert not (tmp_path / "out").exists()


def _parsed(parser_name, *args, data, path=None):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = getattr(options, parser_name)()
    cmd = [str(data), "--user-dir", USER_DIR, "--task", "language_modeling", "--cpu", *map(str, args)]
    if path is not None:
        cmd += ["--path", str(path)]
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, cmd))


@pytest.mark.parametrize("command,args,message", [
    ("fairseq-generate", ("--beam", -1), "--beam must be >= 1 (hypotheses kept per sentence; 1 = greedy), got -1"),
    ("fairseq-generate", ("--beam", 2, "--nbest", 3), "--nbest must be between 1 and --beam (2)"),
    ("fairseq-interactive", ("--nbest", 0), "--nbest must be between 1 and --beam (5): it is how many of the beam's "
                                            "hypotheses are printed, got 0"),
    ("fairseq-interactive", ("--sampling", "--beam", 3), "add --beam 1 for 1 sample(s), or --nbest 3"),
    ("fairseq-generate", ("--sampling-topk", 5), "--sampling-topk applies to sampling only: add --sampling"),
    ("fairseq-generate", ("--sampling", "--beam", 1, "--sampling-topk", 0), "--sampling-topk must be >= 1 (or -1"),
    ("fairseq-generate", ("--sampling", "--beam", 1, "--sampling-topp", 0), "--sampling-topp must be in (0, 1]"),
    ("fairseq-generate", ("--sampling", "--beam", 1, "--sampling-topp", 1.5), "--sampling-topp must be in (0, 1]"),
    ("fairseq-interactive", ("--temperature", -1), "--temperature must be > 0 (1 = the model's distribution)"),
    ("fairseq-generate", ("--sampling", "--beam", 1, "--diverse-beam-groups", 2),
     "--sampling and --diverse-beam-groups choose different search strategies"),
    ("fairseq-generate", ("--min-len", 0), "--min-len must be >= 1, got 0"),
    ("fairseq-generate", ("--log-interval", 0), "--log-interval must be >= 1 (updates between log lines), got 0"),
    ("fairseq-interactive", ("--constraints",), "--constraints applies to translation models, not to --task "
                                                "language_modeling: drop it (a language model has no source sentence)"),
    ("fairseq-generate", ("--print-alignment", "soft"), "--print-alignment applies to translation models"),
    ("fairseq-generate", ("--print-step",), "--print-step applies to iterative refinement (non-autoregressive) "
                                            "translation models, not to --task language_modeling: drop it"),
    ("fairseq-generate", ("--beam", 2, "--match-source-len"), "--match-source-len makes a translation as long as its "
     "source; a language model's source is its prompt"),
    ("fairseq-generate", ("--lenpen", "nan"), "--lenpen must be a finite number (scores are divided by length ** "
                                              "lenpen; 1 = none), got nan"),
    ("fairseq-interactive", ("--unkpen", "inf"), "--unkpen must be a finite number"),
    ("fairseq-generate", ("--diverse-beam-groups", 2, "--beam", 4, "--diverse-beam-strength", "nan"),
     "--diverse-beam-strength must be a finite number"),
    ("fairseq-generate", ("--max-len-a", -1), "--max-len-a must be >= 0 (output tokens allowed per source token, "
                                              "for a language model per prompt token, besides --max-len-b), got -1"),
    ("fairseq-interactive", ("--max-len-b", 4, "--min-len", 5), "--max-len-b 4 is below --min-len 5"),
    ("fairseq-interactive", ("--batch-size", 4, "--buffer-size", 2), "--batch-size 4 is larger than --buffer-size 2"),
    ("fairseq-generate", ("--replace-unk",), "--replace-unk needs the raw text (--dataset-impl raw)"),
    ("fairseq-generate", ("--gen-subset", "dev"), "split 'dev' not found"),
    ("fairseq-generate", ("--prefix-size", -1), "--prefix-size must be >= 0 (reference tokens forced as the prompt; "
                                                "0 = none), got -1"),
    ("fairseq-generate", ("--sampling", "--beam", 1, "--sampling-topk", 1000),
     "--sampling-topk 1000 is larger than the dictionary (32 symbols): give at most 32 (or -1: no limit)"),
    ("fairseq-interactive", ("--model-overrides", "{'beam': 2"), "--model-overrides {'beam': 2 is not a Python dict "
                                                                 "literal ('{' was never closed)"),
    ("fairseq-generate", ("--model-overrides", "{'a': b}"), "is not a Python dict literal (not a literal)"),
    ("fairseq-generate", ("--model-overrides", "[1]"), "--model-overrides [1] is a list, not a dict"),
    ("fairseq-generate", ("--max-tokens", -1), "--max-tokens must be >= 1, got -1: fairseq would read it as no limit"),
    ("fairseq-interactive", ("--batch-size", 0), "--batch-size must be >= 1, got 0"),
    ("fairseq-interactive", ("--seed", -1), "--seed must be an integer from 0 to 2**32 - 1 (fairseq seeds numpy with "
                                            "it), got -1"),
    ("fairseq-interactive", ("--lm-path", "{ckpt}", "--lm-weight", 0.5),
     "--lm-path applies to fairseq-generate only (fairseq-interactive does not load it): drop it"),
    ("fairseq-generate", ("--lm-weight", 0.5), "--lm-weight 0.5 needs --lm-path: give the checkpoint of the language "
                                               "model to fuse, or drop --lm-weight"),
    ("fairseq-generate", ("--lm-path", "{root}/lm.pt", "--lm-weight", 0.5),
     "--lm-path {root}/lm.pt does not exist: give the checkpoint of a language model trained with the same dict.txt"),
    ("fairseq-generate", ("--num-workers", -1), "--num-workers must be >= 0 (data-loading processes; 0 loads in the "
                                                "main process), got -1"),
])
def test_generation_config_variants(env, command, args, message):
    from fairseq_srupp.inference_checks import check_generation_config

    parser = "get_interactive_generation_parser" if command == "fairseq-interactive" else "get_generation_parser"
    def fill(text):  # not str.format: other cases' arguments hold braces
        return str(text).replace("{root}", str(env.root)).replace("{ckpt}", str(env.ckpt))

    args = [fill(a) for a in args]
    with pytest.raises(SRUppUserError, match=re.escape(fill(message))):
        check_generation_config(_parsed(parser, *args, data=env.data, path=env.ckpt), command)


def test_generation_output_and_input_files(env):
    """Files fairseq-generate and fairseq-interactive open only after loading the model."""
    from fairseq_srupp.inference_checks import check_generation_config

    for args, command, message in [
        (("--results-path", env.text), "fairseq-generate",
         "--results-path {} is a file: give a folder (it is created if missing".format(env.text)),
        (("--results-path", env.text / "out"), "fairseq-generate", "is inside {}, a file".format(env.text)),
        (("--input", env.root / "nofile.txt"), "fairseq-interactive",
         "--input {} does not exist: give a text file of prompts, one per line, or - (the default) for standard "
         "input".format(env.root / "nofile.txt")),
        (("--input", env.root), "fairseq-interactive", "--input {} is a directory".format(env.root)),
    ]:
        parser = "get_interactive_generation_parser" if command == "fairseq-interactive" else "get_generation_parser"
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            check_generation_config(_parsed(parser, *args, data=env.data, path=env.ckpt), command)
    assert env.text.read_text() == "not a checkpoint\n"


def test_generation_and_eval_lm_configs_that_run_pass(env):
    from fairseq_srupp.inference_checks import check_eval_lm_config, check_generation_config, check_validate_config

    for args in [(), ("--sampling", "--beam", 1, "--sampling-topk", 10, "--sampling-topp", 0.9, "--temperature", 0.7),
                 ("--beam", 3, "--nbest", 3, "--max-len-a", 1, "--max-len-b", 0),
                 ("--diverse-beam-groups", 2, "--beam", 4), ("--lm-path", env.ckpt, "--lm-weight", 0.5)]:
        check_generation_config(_parsed("get_generation_parser", *args, data=env.data, path=env.ckpt),
                                "fairseq-generate")
    check_generation_config(_parsed("get_interactive_generation_parser", "--batch-size", 4, "--buffer-size", 4,
                                    "--input", env.text, data=env.data, path=env.ckpt), "fairseq-interactive")
    check_generation_config(_parsed("get_generation_parser", "--sampling", "--beam", 1, "--sampling-topk", 32,
                                    "--results-path", env.root / "results", data=env.data, path=env.ckpt),
                            "fairseq-generate")
    check_eval_lm_config(_parsed("get_eval_lm_parser", "--model-overrides", "{'eval_window': 2 ** 3}",
                                 data=env.data, path=env.ckpt))  # fairseq-eval-lm eval()s it
    check_eval_lm_config(_parsed("get_eval_lm_parser", "--tokens-per-sample", 16, "--context-window", 15,
                                 data=env.data, path=env.ckpt))
    # fairseq-validate eval()s --model-overrides, as fairseq-eval-lm does
    check_validate_config(_parsed("get_validation_parser", "--task", "srupp_language_modeling", "--batch-size", 2,
                                  "--valid-subset", "valid,test", "--model-overrides", "{'eval_window': 2 ** 3}",
                                  data=env.data, path=env.ckpt))


@pytest.mark.parametrize("args,message,path", [
    (("--context-window", -1), "--context-window must be >= 0 (0 = score independent blocks), got -1", True),
    (("--tokens-per-sample", 16, "--context-window", 20), "--context-window 20 must be below --tokens-per-sample 16",
     True),
    (("--gen-subset", "dev"), "split 'dev' not found", True),
    ((), "fairseq-eval-lm needs --path CHECKPOINT", False),
    (("--model-overrides", "{'eval_window': 8"), "--model-overrides {'eval_window': 8 is not a Python dict literal",
     True),
    (("--task", "srupp_language_modeling", "--batch-size", 2, "--max-tokens", 64),
     "--max-tokens does not apply to srupp_language_modeling", True),
    (("--task", "language_modeling", "--batch-size", 0),
     "--batch-size must be >= 1, got 0: fairseq would read it as no limit and put a whole split in one batch", True),
    (("--task", "language_modeling", "--tokens-per-sample", 0),
     "--tokens-per-sample must be >= 1 (tokens per block), got 0", True),
    (("--num-workers", -2), "--num-workers must be >= 0", True),
    (("--softmax-batch", -3), "--softmax-batch must be >= 0 (positions per softmax call; 0: all at once), got -3",
     True),
])
def test_eval_lm_config_variants(env, args, message, path):
    from fairseq_srupp.inference_checks import check_eval_lm_config

    with pytest.raises(SRUppUserError, match=re.escape(message)):
        check_eval_lm_config(_parsed("get_eval_lm_parser", *args, data=env.data, path=env.ckpt if path else None))


@pytest.mark.parametrize("args,message,path", [
    ((), "fairseq-validate needs --batch-size (sentences per batch) or --max-tokens (tokens per batch)", "lm"),
    (("--batch-size", 2), "fairseq-validate needs --path CHECKPOINT", None),
    (("--batch-size", 2, "--valid-subset", "valid,dev"), "split 'dev' not found", "lm"),
    (("--max-tokens", -5), "--max-tokens must be >= 1, got -5", "lm"),
    (("--task", "srupp_language_modeling", "--max-tokens", 64), "srupp_language_modeling needs --batch-size", "lm"),
    (("--batch-size", 2, "--model-overrides", "{'eval_window': 8"), "is not a Python dict literal", "lm"),
    (("--batch-size", 2, "--num-workers", -1), "--num-workers must be >= 0", "lm"),
    (("--batch-size", 2, "--log-interval", 0), "--log-interval must be >= 1", "lm"),
    # fairseq-validate evaluates with the checkpoint's task whatever --task says
    (("--batch-size", 2), "--task language_modeling is not the task {ckpt} was trained with: fairseq-validate "
                          "evaluates with that one, so give --task srupp_language_modeling", "srupp"),
])
def test_validate_config_variants(env, args, message, path):
    from fairseq_srupp.inference_checks import check_validate_config

    paths = {"lm": _lm_task_checkpoint(env), "srupp": env.ckpt, None: None}
    with pytest.raises(SRUppUserError, match=re.escape(message.format(ckpt=env.ckpt))):
        check_validate_config(_parsed("get_validation_parser", *args, data=env.data, path=paths[path]))


def _lm_task_checkpoint(env):
    """A file that reads as a checkpoint trained with --task language_modeling (what fairseq-validate's task
    check reads)."""
    path = env.root / "lm-task.pt"
    torch.save({"cfg": {"task": {"_name": "language_modeling"}, "model": {"_name": "srupp_lm_tiny"}}}, str(path))
    return path


@pytest.mark.parametrize("overrides,message", [
    (dict(num_layers=0), "--num-layers must be a positive integer, got 0"),
    (dict(adaptive_softmax_cutoff="5", adaptive_div_value=0.0), "--adaptive-div-value must be > 0, got 0.0"),
    (dict(adaptive_softmax_cutoff="5,a"), "--adaptive-softmax-cutoff must be comma-separated integers"),
    (dict(highway_bias=float("nan")), "--highway-bias must be a number (the reset gate's initial bias, e.g. -2), "
                                      "got nan"),
    (dict(weight_c_init=-1.0), "--weight-c-init must be a finite number >= 0 (v_f, v_r ~ U(-x, x) at init), got -1.0"),
    (dict(weight_c_init=float("nan")), "--weight-c-init must be a finite number >= 0"),
    (dict(weight_c_init=float("inf")), "--weight-c-init must be a finite number >= 0"),
    (dict(adaptive_softmax_cutoff="5,40"),
     "--adaptive-softmax-cutoff 5,40: the last cutoff must be smaller than the dictionary size (20 symbols): fit the "
     "cutoffs to this dict.txt or, for a trained checkpoint, give the data directory it was trained with"),
])
def test_model_config_variants_are_user_errors(overrides, message):
    """One line through the excepthook (test_model checks the other messages as ValueErrors)."""
    from test_model import preset_config

    from fairseq_srupp.models.srupp_lm import check_config

    with pytest.raises(SRUppUserError, match=re.escape(message)):
        check_config(preset_config("srupp_lm_tiny", **overrides), vocab_size=20)


def test_task_and_schedule_variants(env):
    from fairseq_srupp.optim.radam import FairseqRAdam
    from fairseq_srupp.optim.warmup_cosine import SRUppCosineSchedule
    from fairseq_srupp.tasks.srupp_language_modeling import SRUppLanguageModelingTask

    task_cfg = OmegaConf.create({"data": str(env.data), "tokens_per_sample": 8, "eval_unroll_size": 0,
                                 "batch_size": 2, "batch_size_valid": 2})
    SRUppLanguageModelingTask.setup_task(task_cfg)  # a good one passes
    for key, value, message in [("batch_size", -2, "--batch-size must be >= 1 (streams per worker), got -2"),
                                ("batch_size_valid", 0, "--batch-size-valid must be >= 1 (streams per worker), got 0"),
                                ("data", str(env.ckpt), "the data directory {} is a file".format(env.ckpt))]:
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            SRUppLanguageModelingTask.setup_task(OmegaConf.merge(task_cfg, {key: value}))

    optimizer = FairseqRAdam(OmegaConf.create({"lr": [0.01], "weight_decay": 0.0, "radam_betas": "(0.9, 0.999)",
                                               "radam_eps": 1e-8}), [torch.nn.Parameter(torch.zeros(2))])
    for max_update, warmup, message in [(0, 0, "--lr-scheduler srupp_cosine needs --max-update"),
                                        (1, 5, "--warmup-updates 5 must be in [0, --max-update 1)")]:
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            SRUppCosineSchedule(OmegaConf.create({"warmup_updates": warmup, "lr": [0.01], "max_update": max_update}),
                                optimizer)


def test_checkpoint_loaders(env, tmp_path):
    """fairseq's loaders as fairseq-interactive, -generate, -eval-lm and the hub call them."""
    from fairseq import checkpoint_utils

    models, _ = checkpoint_utils.load_model_ensemble([str(env.ckpt)])  # a good one loads
    assert len(models) == 1
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"embedding_layer.weight": torch.zeros(2)}, str(tmp_path / "paper.pt"))
    side = tmp_path / "checkpoint_last.pt.carried-rank0"  # srupp_language_modeling's carried state, beside it
    torch.save({"format": 1, "num_updates": 3, "state": {}, "streams": 2, "rank": 0}, str(side))
    for path, message in [
        (tmp_path / "nope.pt", "checkpoint {} does not exist (--path)".format(tmp_path / "nope.pt")),
        (tmp_path, "checkpoint {} is a directory (--path)".format(tmp_path)),
        (env.text, "{} is not a complete PyTorch checkpoint (17 bytes;".format(env.text)),
        (tmp_path / "empty.pt", "{} is not a complete PyTorch checkpoint (0 bytes;".format(tmp_path / "empty.pt")),
        (env.truncated, "{} is not a complete PyTorch checkpoint (4000 bytes;".format(env.truncated)),
        (tmp_path / "paper.pt", "{} is not a fairseq checkpoint (no 'cfg' or 'args'; top-level keys: "
                                "['embedding_layer.weight']); the paper's released checkpoints must be converted "
                                "first".format(tmp_path / "paper.pt")),
        (side, "{} is the carried recurrent state saved beside the checkpoint {} (read when training resumes from "
               "it), not a checkpoint: give {}".format(side, tmp_path / "checkpoint_last.pt",
                                                      tmp_path / "checkpoint_last.pt")),
    ]:
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            checkpoint_utils.load_model_ensemble([str(path)])
    # sizes changed in fairseq-eval-lm's --model-overrides: no advice to start a new run in another --save-dir
    message = ("--model-overrides changes hidden_size (48 -> 64), which the checkpoint's parameters were trained with, "
               "so they do not fit: drop it from --model-overrides")
    with pytest.raises(SRUppUserError, match=re.escape(message)):
        checkpoint_utils.load_model_ensemble([str(env.ckpt)], arg_overrides={"hidden_size": 64, "dropout": 0.2})
    # --model-overrides values arrive untyped (a TypeError inside the model's checks before)
    for overrides, message in [({"eval_window": "big"}, "--eval-window (eval_window) must be an integer, got 'big' "
                                                        "(a str; --model-overrides values are taken as written)"),
                               ({"dropout": "0.1"}, "--dropout (dropout) must be a number, got '0.1' (a str;"),
                               ({"eval_window": 8.5}, "--eval-window (eval_window) must be an integer, got 8.5")]:
        with pytest.raises(SRUppUserError, match=re.escape(message)):
            checkpoint_utils.load_model_ensemble([str(env.ckpt)], arg_overrides=overrides)
    models, _ = checkpoint_utils.load_model_ensemble([str(env.ckpt)], arg_overrides={"eval_window": 8, "dropout": 0})
    assert models[0].decoder.cfg.eval_window == 8


@pytest.mark.parametrize("overrides,expected,keys", [
    (["checkpoint.restore_file={root}/nope.pt"], "error: --restore-file {root}/nope.pt does not exist",
     "(Hydra keys: --restore-file = checkpoint.restore_file, --save-dir = checkpoint.save_dir)"),
    (["dataset.batch_size=null"], "error: srupp_language_modeling needs --batch-size (streams per worker)",
     "(Hydra keys: --batch-size = dataset.batch_size)"),
    (["model.hidden_size=abc"], "error: hidden_size: Value 'abc' of type 'str' could not be converted to "
     "Integer", "give a value of the option's type"),
])
def test_hydra_train_one_error_line(env, overrides, expected, keys):
    """fairseq-hydra-train loads the plugin only inside fairseq_cli.train.main, and Hydra prints an
    exception as a trimmed traceback: the checks still run, the error is still one line, and it names
    the Hydra keys of the flags it mentions."""
    repo = Path(USER_DIR).parent
    before = {d: snapshot(d) for d in (env.data, env.save_dir)}
    args = ["--config-dir", repo / "configs", "--config-name", "srupp_lm", "task.data={}".format(env.data),
            "common.cpu=true", "common.fp16=false", "distributed_training.distributed_world_size=1",
            "checkpoint.save_dir={}".format(env.root / "hydra-ckpt"),
            *(o.format(root=env.root) for o in overrides)]
    proc = fork_server.run([BIN / "fairseq-hydra-train", *args], cwd=repo, stderr_apart=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected.format(root=env.root)), proc.stderr[-3000:]
    assert errors[0].endswith(keys), errors[0]
    assert not list((env.root / "hydra-ckpt").glob("*.pt"))
    assert {d: snapshot(d) for d in before} == before


@pytest.mark.parametrize("bpe,args,module,message", [
    ("sentencepiece", {"sentencepiece_model": "{tmp}/m.model"}, "sentencepiece",
     "--bpe sentencepiece: Please install sentencepiece with: pip install sentencepiece"),
    ("gpt2", {}, "requests", "--bpe gpt2: a Python package it imports is not installed: pip install requests"),
])
def test_a_missing_bpe_package_is_one_line_naming_the_flag(monkeypatch, tmp_path, bpe, args, module, message):
    """fairseq imports a --bpe's package when a command builds it (gpt2 downloads its vocabulary with requests):
    the plugin's excepthook prints the ImportError as one line naming the flag."""
    from argparse import Namespace

    from fairseq.data import encoders

    import fairseq_srupp  # noqa: F401  (registers the recogniser)
    from fairseq_srupp.errors import _user_error

    (tmp_path / "m.model").write_bytes(b"")
    monkeypatch.setitem(sys.modules, module, None)  # its import fails, whether or not it is installed
    with pytest.raises(ImportError) as raised:
        encoders.build_bpe(Namespace(bpe=bpe, **{k: v.format(tmp=tmp_path) for k, v in args.items()}))
    assert str(_user_error(raised.value)) == message
    assert _user_error(ImportError("elsewhere")) is None  # only fairseq's encoders' imports


@pytest.mark.parametrize("bpe", ["bytes", "characters"])
def test_a_bpe_fairseq_registered_without_a_config_is_one_line(env, bpe):
    """fairseq's --bpe bytes / characters have no config, so its Hydra composition fails (MissingConfigException,
    a traceback and the list of every config group's options)."""
    message = ("--bpe {} cannot run from fairseq's command line: fairseq registers it without a config, which its "
               "Hydra set-up needs: for the text of a char-level model use --bpe srupp_bytes".format(bpe))
    with pytest.raises(SRUppUserError, match=re.escape(message)):
        _parsed("get_interactive_generation_parser", "--bpe", bpe, data=env.data, path=env.ckpt)
    _parsed("get_interactive_generation_parser", "--bpe", "srupp_bytes", data=env.data, path=env.ckpt)
