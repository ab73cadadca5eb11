"""Configurations fairseq-train cannot run, refused before any data is read.

fairseq reports these as a traceback (an ``AssertionError``, a ``KeyError`` at the first forward) or not
at all (a missing ``--restore-file`` silently trains from scratch). :func:`check_train_config`, called by
the plugin's wrapper of fairseq's ``call_main`` (:mod:`fairseq_srupp.fairseq_fixes`), checks the batch
size (and a ``--max-tokens`` that ``srupp_language_modeling`` would ignore), batch and block sizes below
1, ``--num-workers`` below 0, a ``--seed`` numpy cannot take, log, validation and save intervals below 1,
``--fp16`` or ``--amp`` without a GPU, ``--distributed-world-size`` beyond the local GPUs without a way to
start the other ranks, PyTorch's DDP on the CPU, a ``--distributed-rank`` outside the world (it would wait
forever at the rendezvous), ``--update-freq``, a negative ``--lr``, ``--max-update``, ``--max-epoch``,
weight decay or epsilon, betas outside [0, 1) (``--adam-betas``: fairseq's Adam ends in a math domain
error), learning-rate scheduler settings fairseq's schedulers fail on
(:mod:`fairseq_srupp.lr_scheduler_checks`), ``--save-dir``, the ``--log-file``'s folder and a
``--tensorboard-logdir`` that cannot be a folder, the ``--restore-file`` / ``--finetune-from-model``
(missing, or a checkpoint of another architecture), a ``--best-checkpoint-metric`` validation does not
report, ``language_modeling``'s other targets and truncated output dictionary with ``srupp_lm``, whether
the criterion fits ``srupp_lm`` (``cross_entropy`` with its adaptive softmax is allowed,
with a warning: it builds the full softmax) and, for fairseq's ``language_modeling`` task, the data
directory and its splits.
Each refusal is an :class:`~fairseq_srupp.errors.SRUppUserError`: one ``error:`` line.
"""
import logging
import os

import torch

from fairseq_srupp.errors import SRUppUserError, not_a_file
from fairseq_srupp.lr_scheduler_checks import check_lr_scheduler

logger = logging.getLogger(__name__)


def component_name(section):
    """The registered name of a config section (``cfg.task``, ``cfg.model``, ...), or None."""
    # a DictConfig, or an argparse Namespace for components without a dataclass (fairseq's conversion)
    return getattr(section, "_name", None)


def _model_class(cfg):
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    name = component_name(cfg)
    return MODEL_REGISTRY.get(name) or ARCH_MODEL_REGISTRY.get(name)


def check_no_max_tokens(dataset, task) -> None:
    """``srupp_language_modeling`` batches ``--batch-size`` streams of one segment each: a ``--max-tokens``
    cap would be silently ignored (batches larger than the user allowed, e.g. to fit memory), so it is
    refused as it is without ``--batch-size``."""
    if component_name(task) != "srupp_language_modeling":
        return
    if dataset.batch_size is None:
        raise SRUppUserError("srupp_language_modeling needs --batch-size (streams per worker){}".format(
            "; --max-tokens does not set it" if dataset.max_tokens is not None else ""))
    # --max-tokens-valid defaults to --max-tokens: name the one the user gave
    given = "--max-tokens" if dataset.max_tokens is not None else (
        "--max-tokens-valid" if dataset.get("max_tokens_valid") is not None else None)
    if given is not None:
        raise SRUppUserError(
            "{} does not apply to srupp_language_modeling: a batch is --batch-size ({}) streams of one segment "
            "(--tokens-per-sample tokens in training, the model's --eval-window in evaluation); drop {} and lower "
            "--batch-size or those lengths to make batches smaller".format(given, dataset.batch_size, given))


BATCH_LIMITS = (("--batch-size", "batch_size"), ("--batch-size-valid", "batch_size_valid"),
                ("--max-tokens", "max_tokens"), ("--max-tokens-valid", "max_tokens_valid"))


def check_batch_limits(dataset, task) -> None:
    """Batch and block sizes below 1. fairseq's batcher reads a ``--batch-size`` or ``--max-tokens`` of 0 or
    less as no limit, so a whole split becomes one batch (fairseq-train can exhaust the memory before its
    first update); its block builder divides by ``--tokens-per-sample`` (a ``ZeroDivisionError`` traceback)
    or allocates a negative size. (``srupp_language_modeling`` checks its own sizes, in its words: streams.)"""
    if component_name(task) == "srupp_language_modeling":
        return
    for flag, key in BATCH_LIMITS:
        value = dataset.get(key)
        if value is not None and value < 1:
            raise SRUppUserError("{} must be >= 1, got {}: fairseq would read it as no limit and put a whole split "
                                 "in one batch".format(flag, value))
    tokens_per_sample = getattr(task, "tokens_per_sample", None)
    if tokens_per_sample is not None and tokens_per_sample < 1:
        raise SRUppUserError("--tokens-per-sample must be >= 1 (tokens per block), got {}".format(tokens_per_sample))


NUMPY_SEED_MAX = 2 ** 32 - 1


def check_num_workers(dataset) -> None:
    """``--num-workers`` below 0: torch's DataLoader raises a ``ValueError`` traceback once the model is built."""
    workers = dataset.get("num_workers")
    if workers is not None and workers < 0:
        raise SRUppUserError("--num-workers must be >= 0 (data-loading processes; 0 loads in the main process), "
                             "got {}".format(workers))


def check_seed(common) -> None:
    """A ``--seed`` numpy cannot take (fairseq seeds numpy with it: a ``ValueError`` traceback)."""
    seed = common.get("seed")
    if seed is not None and not 0 <= seed <= NUMPY_SEED_MAX:
        raise SRUppUserError("--seed must be an integer from 0 to 2**32 - 1 (fairseq seeds numpy with it), "
                             "got {}".format(seed))


def check_log_interval(common) -> None:
    """``--log-interval`` below 1: fairseq's progress bars take the update number modulo it (ZeroDivisionError)."""
    interval = common.get("log_interval")
    if interval is not None and interval < 1:
        raise SRUppUserError("--log-interval must be >= 1 (updates between log lines), got {}".format(interval))


def _check_intervals(cfg):
    # fairseq takes the epoch number modulo each at the end of every epoch, validating and saving or not: a
    # ZeroDivisionError after a whole epoch of training, before its checkpoint is written
    check_log_interval(cfg.common)
    for flag, section, key, what in (("--validate-interval", "dataset", "validate_interval",
                                      "epochs between validations; --disable-validation for none"),
                                     ("--save-interval", "checkpoint", "save_interval",
                                      "epochs between checkpoints; --no-save for none")):
        value = (cfg.get(section) or {}).get(key)
        if value is not None and value < 1:
            raise SRUppUserError("{} must be >= 1 ({}), got {}: fairseq-train would fail at the end of the first "
                                 "epoch, before saving it".format(flag, what, value))


def _check_batch_size(cfg):
    dataset = cfg.dataset
    check_batch_limits(dataset, cfg.task)
    check_no_max_tokens(dataset, cfg.task)
    if dataset.batch_size is None and dataset.max_tokens is None:
        raise SRUppUserError("give --batch-size (sentences per batch) or --max-tokens (tokens per batch)")


def _check_devices(cfg):
    common, dist = cfg.common, cfg.distributed_training
    gpus = torch.cuda.device_count()
    no_gpu = " and --cpu was given" if common.cpu else ", and this machine has none"
    # fairseq's --amp is torch.cuda.amp's autocast and GradScaler: both switch themselves off without CUDA
    amp = " (without one fairseq's autocast and loss scaling are off: it would train in fp32 unchanged)"
    for flag, why in (("memory_efficient_fp16", ""), ("fp16", ""), ("amp", amp)):  # the first sets fp16 too
        if common.get(flag) and (common.cpu or gpus == 0):
            raise SRUppUserError("--{} needs a CUDA GPU{}{}: drop it (on CPU, --bf16 trains in bfloat16)".format(
                flag.replace("_", "-"), no_gpu, why))
    # fairseq's single-node launch (no init method, torchrun or Slurm) starts one process per local GPU,
    # --cpu or not
    launched = all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")) or (
        "SLURM_STEP_NODELIST" in os.environ and dist.distributed_port > 0)
    if (dist.distributed_world_size > 1 and dist.distributed_init_method is None and not launched
            and not common.tpu and not dist.pipeline_model_parallel and dist.distributed_world_size > gpus):
        raise SRUppUserError(
            "--distributed-world-size {} starts one process per GPU, but {} GPU(s) are available: on CPU "
            "start each rank yourself with --distributed-rank R --distributed-init-method tcp://HOST:PORT "
            "--distributed-no-spawn --distributed-backend gloo (see the README)".format(
                dist.distributed_world_size, gpus))
    _check_distributed_rank(dist, launched)
    # fairseq hands PyTorch's DDP the device id of a GPU whatever --cpu says: a ValueError traceback per rank
    if dist.distributed_world_size > 1 and (common.cpu or gpus == 0) and dist.ddp_backend in ("pytorch_ddp", "c10d"):
        raise SRUppUserError("--ddp-backend {} (fairseq's default) needs GPUs: on the CPU add --ddp-backend legacy_ddp "
                             "(see the README)".format(dist.ddp_backend))


def _check_distributed_rank(dist, launched):
    # fairseq takes the rank (or, when it spawns one process per GPU, the node's first rank) as given
    # unless torchrun's or Slurm's environment sets it; a rank outside the world never joins the
    # rendezvous, which waits forever
    if launched and dist.distributed_init_method is None:
        return
    rank, world = dist.distributed_rank, dist.distributed_world_size
    if rank is not None and not 0 <= rank < world:
        raise SRUppUserError("--distributed-rank {} is outside --distributed-world-size {}: give a rank from 0 to "
                             "{}{}".format(rank, world, world - 1, " (a rank outside the world waits forever at the "
                                           "rendezvous)" if world > 1 else ""))


def _check_update_freq(cfg):
    for freq in cfg.optimization.update_freq:
        if freq < 1:
            raise SRUppUserError("--update-freq must be >= 1 (batches accumulated per update; one value, or one per "
                                 "epoch separated by commas), got {}".format(
                                     ",".join(map(str, cfg.optimization.update_freq))))


def _optimizer_settings(optimizer):
    """{key: value} of the optimizer's config: a DictConfig, or a Namespace for optimizers without a dataclass."""
    if optimizer is None:
        return {}
    return dict(optimizer.items()) if hasattr(optimizer, "items") else dict(vars(optimizer))


def _check_optimization(cfg):
    # fairseq takes each of these without a word: a negative rate climbs the loss, a negative --max-update or
    # --max-epoch stops before the first update (exit status 0), a negative weight decay grows the weights,
    # and fairseq's Adam ends in a math domain error mid-update with a beta of 1 or more
    # here: the optim package registers with fairseq
    from fairseq_srupp.optim.config_values import check_non_negative, parse_betas

    optimization = cfg.optimization
    if not all(lr >= 0 for lr in optimization.lr):  # NaN too
        raise SRUppUserError("--lr must be >= 0 (the learning rate; one value, or one per epoch separated by commas), "
                             "got {}".format(",".join(map(str, optimization.lr))))
    clip_norm = optimization.get("clip_norm")
    if clip_norm is not None and clip_norm != clip_norm:  # NaN: fairseq clips only above 0, so it would not clip
        raise SRUppUserError("--clip-norm must be a number (the gradient norm clipped to; 0: no clipping), got nan")
    for flag, key in (("--max-update", "max_update"), ("--max-epoch", "max_epoch")):
        if optimization.get(key) is not None and optimization[key] < 0:
            raise SRUppUserError("{} must be >= 0 (0: no limit), got {}: fairseq-train would stop before its first "
                                 "update".format(flag, optimization[key]))
    for key, value in _optimizer_settings(cfg.get("optimizer")).items():
        flag = "--" + key.replace("_", "-")
        if key.endswith("_betas"):
            parse_betas(value, flag)
        elif (key == "weight_decay" or key.endswith("_eps")) and value is not None:
            check_non_negative(flag, value)


def existing_non_folder(path):
    """The first existing part of ``path``, walking up from it, when that is not a folder (so no folder
    can be made at ``path``); else None."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None if os.path.isdir(path) else path


def not_a_folder(path):
    """Why no folder can be made at ``path`` ("is a file", "is inside F, a file"), for a message; None
    when one can."""
    blocking = existing_non_folder(path)
    if blocking is None:
        return None
    return "is a file" if blocking == os.path.abspath(path) else "is inside {}, a file".format(blocking)


def _check_output_paths(cfg):
    save_dir = cfg.checkpoint.save_dir
    why = not_a_folder(save_dir)
    if why is not None:
        raise SRUppUserError("--save-dir {} {}: give a folder for the checkpoints (it is created if missing)".format(
            save_dir, why))
    tensorboard = cfg.common.get("tensorboard_logdir")
    why = not_a_folder(tensorboard) if tensorboard else None
    if why is not None:  # fairseq's KeyError at the first log line
        raise SRUppUserError("--tensorboard-logdir {} {}: give a folder for the event files (it is created if "
                             "missing)".format(tensorboard, why))
    log_file = cfg.common.log_file
    if log_file is None:
        return
    if os.path.isdir(log_file):
        raise SRUppUserError("--log-file {} is a directory: give the path of a file to write".format(log_file))
    # fairseq opens the log before it creates --save-dir; like the README, ask for the folder rather
    # than create one from a mistyped path
    folder = os.path.dirname(os.path.abspath(log_file))
    shown = os.path.dirname(log_file) or folder
    blocking = existing_non_folder(folder)
    if blocking is not None:
        raise SRUppUserError("--log-file {}: {} is a file, not a folder: give a path in an existing folder".format(
            log_file, blocking))
    if not os.path.isdir(folder):
        raise SRUppUserError("--log-file {}: its folder {} does not exist: create it first (mkdir -p {})".format(
            log_file, shown, shown))


# fairseq's --dataset-impl values whose splits are split.idx + split.bin (None: inferred), or raw text;
# fasta and huffman keep other files and are left to fairseq
INDEX_FORMATS = (None, "mmap", "lazy", "cached", "raw")


def check_lm_data(cfg, splits, train_split=None) -> None:
    """For fairseq's own ``language_modeling`` task (``srupp_language_modeling`` checks its data itself):
    the data directory, its dictionary and each of ``splits`` in it, and ``train_split`` in every
    directory of the ``dir1:dir2`` list (epoch e trains on directory (e - 1) % n), before fairseq's
    ``FileNotFoundError`` traceback or its mmap of an empty split."""
    if component_name(cfg.task) != "language_modeling" or cfg.dataset.dataset_impl not in INDEX_FORMATS:
        return
    from fairseq_srupp.tasks.split_files import check_data_dir, check_split

    first, raw = check_data_dir(cfg.task.data, "language_modeling"), cfg.dataset.dataset_impl == "raw"
    for split in splits:
        check_split(first, split, raw=raw)
    for data_dir in cfg.task.data.split(os.pathsep) if train_split is not None else ():
        check_split(data_dir, train_split, raw=raw)


def _check_data(cfg):
    dataset = cfg.dataset
    valid = [] if dataset.disable_validation else [s for s in dataset.valid_subset.split(",") if s]
    check_lm_data(cfg, valid, train_split=dataset.train_subset)


def _sharded(cfg) -> bool:
    """Whether fairseq adds a shard suffix to checkpoint names (only then are the paths not as given)."""
    return bool(cfg.checkpoint.checkpoint_suffix or cfg.common.model_parallel_size > 1
                or cfg.distributed_training.ddp_backend == "fully_sharded")


def _check_finetune_from_model(cfg):
    ckpt = cfg.checkpoint
    if ckpt.finetune_from_model is None:
        return
    # fairseq's own ValueErrors (a traceback), raised in the same order
    resets = [flag for flag in ("reset_optimizer", "reset_lr_scheduler", "reset_meters", "reset_dataloader")
              if ckpt.get(flag)]
    if resets:
        raise SRUppUserError("--finetune-from-model resets the optimizer, lr scheduler, meters and data loader "
                             "itself: drop {}".format(", ".join("--" + f.replace("_", "-") for f in resets)))
    if ckpt.restore_file != "checkpoint_last.pt":
        raise SRUppUserError("--finetune-from-model and --restore-file both name the checkpoint to start from: give "
                             "one of them")
    # read only on a first launch: a --save-dir with checkpoint_last.pt resumes from that
    if os.path.exists(os.path.join(ckpt.save_dir, "checkpoint_last.pt")) or _sharded(cfg):
        return
    if not os.path.isfile(ckpt.finetune_from_model):
        raise SRUppUserError("--finetune-from-model {} {}: give the checkpoint to start from".format(
            ckpt.finetune_from_model, not_a_file(ckpt.finetune_from_model)))


def _starting_checkpoint(cfg):
    """(path, the flag that chose it) of the checkpoint fairseq-train will load, or (None, None)."""
    ckpt = cfg.checkpoint
    if ckpt.restore_file != "checkpoint_last.pt":
        return ckpt.restore_file, "--restore-file"
    last = os.path.join(ckpt.save_dir, "checkpoint_last.pt")
    if os.path.isfile(last):
        return last, "--save-dir"
    if ckpt.finetune_from_model is not None:
        return ckpt.finetune_from_model, "--finetune-from-model"
    return None, None


def _check_checkpoint_architecture(cfg):
    """A checkpoint of another architecture cannot be loaded whatever the sizes: say so, rather than
    listing its parameters as "of another size"."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    from fairseq_srupp.models.srupp_lm import checkpoint_model_name

    path, flag = _starting_checkpoint(cfg)
    model = _model_class(cfg.model)
    if path is None or model is None or _sharded(cfg) or not os.path.isfile(path):
        return
    try:
        name = checkpoint_model_name(path)
    except SRUppUserError:
        return  # not a (complete) checkpoint: the loader's own message names that
    found = MODEL_REGISTRY.get(name) or ARCH_MODEL_REGISTRY.get(name)
    if found is None or issubclass(found, model) or issubclass(model, found):
        return
    arch = component_name(cfg.model)
    if flag == "--save-dir":
        named = "{}, which fairseq-train resumes from,".format(path)
        hint = "use another --save-dir, or --arch {} to continue that run".format(name)
    else:
        named = "{} {}".format(flag, path)
        hint = "give a checkpoint of a {} model, or train --arch {}".format(arch, name)
    raise SRUppUserError("{} holds a '{}' model ({}), another architecture than the {} ({}) being trained: {}".format(
        named, name, found.__name__, arch, model.__name__, hint))


def _check_restore_file(cfg):
    from fairseq.file_io import PathManager

    ckpt = cfg.checkpoint
    restore = ckpt.restore_file
    # Non-default paths are used as given (fairseq adds no shard suffix without model parallelism).
    if restore == "checkpoint_last.pt" or _sharded(cfg):
        return
    if not PathManager.isfile(restore):
        in_save_dir = os.path.join(ckpt.save_dir, restore)
        hint = ("give an existing checkpoint, or leave --restore-file out to resume from --save-dir's "
                "checkpoint_last.pt (fairseq would silently train from scratch)")
        if not os.path.isabs(restore) and os.path.isfile(in_save_dir):
            hint = "it is read from the current directory, not --save-dir: pass {}".format(in_save_dir)
        raise SRUppUserError("--restore-file {} {}: {}".format(restore, not_a_file(restore), hint))


# What validation reports with the criteria srupp_lm and fairseq's language models train with (the criterion's
# metrics and the trainer's); nll_loss only where the loss is averaged over sentences (--sentence-avg).
VALID_STATS = ("loss", "ppl", "wps", "wpb", "bsz", "num_updates")
VALID_STATS_KNOWN_FOR = ("cross_entropy", "adaptive_loss", "srupp_adaptive_loss")


def _check_best_checkpoint_metric(cfg):
    # fairseq looks the metric up in the first validation's results: a KeyError after the first epoch (or
    # --validate-interval-updates) of training, before its checkpoint is written
    criterion = cfg.get("criterion")
    name = component_name(criterion)
    if name not in VALID_STATS_KNOWN_FOR or cfg.dataset.get("disable_validation"):
        return
    reported = VALID_STATS + (("nll_loss",) if getattr(criterion, "sentence_avg", False) else ())
    metric = cfg.checkpoint.best_checkpoint_metric
    if metric not in reported:
        raise SRUppUserError("--best-checkpoint-metric {} is not among what validation reports with --criterion {} "
                             "({}): fairseq-train would fail at its first validation, before saving".format(
                                 metric, name, ", ".join(reported)))


def _check_criterion(cfg):
    from fairseq_srupp.models.srupp_lm import SRUppLanguageModel

    criterion = component_name(cfg.criterion)
    model = _model_class(cfg.model)
    if model is None:
        return
    srupp = issubclass(model, SRUppLanguageModel)
    if criterion == "adaptive_loss" and srupp:
        raise SRUppUserError("--criterion adaptive_loss needs fairseq's own adaptive softmax; srupp_lm's projected "
                             "one (and its Linear head) trains with --criterion srupp_adaptive_loss")
    if criterion == "cross_entropy" and srupp and getattr(cfg.model, "adaptive_softmax_cutoff", None):
        logger.warning("--criterion cross_entropy with srupp_lm's adaptive softmax computes the full (batch, length, "
                       "vocabulary) log-softmax; --criterion srupp_adaptive_loss gives the same loss without it")
    if criterion == "srupp_adaptive_loss" and not srupp:
        raise SRUppUserError("--criterion srupp_adaptive_loss needs a srupp_lm model (--arch srupp_lm...), got "
                             "{}: use --criterion cross_entropy or adaptive_loss".format(model.__name__))


def _check_language_modeling_targets(cfg):
    """fairseq's ``language_modeling`` options srupp_lm cannot serve: other targets than the next token (fairseq's
    ``ValueError`` traceback once the model is built) and a truncated output dictionary (srupp_lm embeds and predicts
    over one dictionary: an ``IndexError`` at the first forward)."""
    from fairseq_srupp.models.srupp_lm import SRUppLanguageModel

    model = _model_class(cfg.model)
    if component_name(cfg.task) != "language_modeling" or model is None or not issubclass(model, SRUppLanguageModel):
        return
    other = [flag for flag, key in (("--self-target", "self_target"), ("--past-target", "past_target"))
             if cfg.task.get(key)]
    if other:
        raise SRUppUserError("{} asks for other targets than the next token, which is all srupp_lm predicts: drop "
                             "{}".format(" and ".join(other), "them" if len(other) > 1 else "it"))
    size = cfg.task.get("output_dictionary_size", -1)
    if size is not None and size >= 0:
        raise SRUppUserError("--output-dictionary-size {}: srupp_lm reads and predicts over the whole dictionary: drop "
                             "it (--adaptive-softmax-cutoff makes a large vocabulary cheap)".format(size))


def check_train_config(cfg) -> None:
    """Reject, before any data is read, a fairseq-train configuration that cannot run (see the
    module docstring)."""
    if cfg.get("dataset") is not None:
        _check_batch_size(cfg)
        check_num_workers(cfg.dataset)
    check_seed(cfg.common)
    _check_intervals(cfg)
    _check_devices(cfg)
    if cfg.get("optimization") is not None:
        _check_update_freq(cfg)
        _check_optimization(cfg)
        check_lr_scheduler(cfg)
    _check_output_paths(cfg)
    _check_restore_file(cfg)
    _check_finetune_from_model(cfg)
    _check_criterion(cfg)
    if cfg.get("task") is not None and cfg.get("model") is not None:
        _check_language_modeling_targets(cfg)
    _check_best_checkpoint_metric(cfg)
    _check_checkpoint_architecture(cfg)
    if cfg.get("dataset") is not None and cfg.get("task") is not None:
        _check_data(cfg)
