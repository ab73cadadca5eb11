"""Configurations fairseq-train cannot run, refused before any data is read.

fairseq reports these as a traceback (an ``AssertionError``, a ``KeyError`` at the first forward) or not
at all (a missing ``--restore-file`` silently trains from scratch). :func:`check_train_config`, called by
the plugin's wrapper of fairseq's ``call_main`` (:mod:`fairseq_srupp.fairseq_fixes`), checks the batch
size, ``--fp16`` without a GPU, ``--distributed-world-size`` beyond the local GPUs without a way to
start the other ranks, the ``--restore-file``, whether the criterion fits ``srupp_lm``
(``cross_entropy`` with its adaptive softmax is allowed, with a warning: it builds the full softmax) and,
for fairseq's ``language_modeling`` task, the data directory and its splits.
Each refusal is an :class:`~fairseq_srupp.errors.SRUppUserError`: one ``error:`` line.
"""
import logging
import os

import torch

from fairseq_srupp.errors import SRUppUserError, not_a_file

logger = logging.getLogger(__name__)


def component_name(section):
    """The registered name of a config section (``cfg.task``, ``cfg.model``, ...), or None."""
    # a DictConfig, or an argparse Namespace for components without a dataclass (fairseq's conversion)
    return getattr(section, "_name", None)


def _model_class(cfg):
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    name = component_name(cfg)
    return MODEL_REGISTRY.get(name) or ARCH_MODEL_REGISTRY.get(name)


def _check_batch_size(cfg):
    dataset, task = cfg.dataset, cfg.task
    if component_name(task) == "srupp_language_modeling" and dataset.batch_size is None:
        raise SRUppUserError("srupp_language_modeling needs --batch-size (streams per worker){}".format(
            "; --max-tokens does not set it" if dataset.max_tokens is not None else ""))
    if dataset.batch_size is None and dataset.max_tokens is None:
        raise SRUppUserError("give --batch-size (sentences per batch) or --max-tokens (tokens per batch)")


def _check_devices(cfg):
    common, dist = cfg.common, cfg.distributed_training
    gpus = torch.cuda.device_count()
    for flag in ("memory_efficient_fp16", "fp16"):  # the first sets the second too
        if common.get(flag) and (common.cpu or gpus == 0):
            raise SRUppUserError("--{} needs a CUDA GPU{}: drop it (on CPU, --bf16 trains in bfloat16)".format(
                flag.replace("_", "-"), " and --cpu was given" if common.cpu else ", and this machine has none"))
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


def _check_restore_file(cfg):
    from fairseq.file_io import PathManager

    ckpt = cfg.checkpoint
    restore = ckpt.restore_file
    # Non-default paths are used as given (fairseq adds no shard suffix without model parallelism).
    if (restore == "checkpoint_last.pt" or ckpt.checkpoint_suffix or cfg.common.model_parallel_size > 1
            or cfg.distributed_training.ddp_backend == "fully_sharded"):
        return
    if not PathManager.isfile(restore):
        in_save_dir = os.path.join(ckpt.save_dir, restore)
        hint = ("give an existing checkpoint, or leave --restore-file out to resume from --save-dir's "
                "checkpoint_last.pt (fairseq would silently train from scratch)")
        if not os.path.isabs(restore) and os.path.isfile(in_save_dir):
            hint = "it is read from the current directory, not --save-dir: pass {}".format(in_save_dir)
        raise SRUppUserError("--restore-file {} {}: {}".format(restore, not_a_file(restore), hint))


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


def check_train_config(cfg) -> None:
    """Reject, before any data is read, a fairseq-train configuration that cannot run (see the
    module docstring)."""
    if cfg.get("dataset") is not None:
        _check_batch_size(cfg)
    _check_devices(cfg)
    _check_restore_file(cfg)
    _check_criterion(cfg)
    if cfg.get("dataset") is not None and cfg.get("task") is not None:
        _check_data(cfg)
