"""Exact resume: every rank's carried training state saved next to each checkpoint.

fairseq writes ``checkpoint*.pt`` on rank 0 only, but every rank carries its own streams' state
(per layer ``c`` (B, d) and the attention memory (M, B, d)). So each rank r writes a side file
named after each checkpoint the save wrote::

    checkpoint_last.pt      checkpoint_last.pt.carried-rank0     checkpoint_last.pt.carried-rank1
    checkpoint_1_500.pt     checkpoint_1_500.pt.carried-rank0    ...

Side files are written atomically (temporary file, then rename) and removed when fairseq removes
their checkpoint (``--keep-interval-updates``, ``--keep-last-epochs``, ``--keep-best-checkpoints``).
Each holds the update count, iterator position, world size and streams per rank it belongs to; on
load a side file that does not match its checkpoint (a save interrupted between the two, a changed
--batch-size), is unreadable or is missing (a checkpoint of an older version) is ignored with a
one-line warning, and the first segment starts from zero state as before.

fairseq offers no per-rank hook around checkpoints, so :func:`install` wraps
``fairseq.checkpoint_utils.save_checkpoint`` / ``load_checkpoint`` (called by every rank in
``fairseq-train``); the wrappers act only for ``srupp_language_modeling``.
"""
import logging
import os
import re
import shutil

import torch
from fairseq import checkpoint_utils, distributed_utils
from omegaconf import open_dict

logger = logging.getLogger(__name__)

FORMAT = 1


# Not ending in .pt: fairseq's checkpoint patterns and `checkpoint*.pt` globs skip side files.
SIDE_FILE_SUFFIX = ".carried-rank"


def side_file(checkpoint: str, rank: int) -> str:
    return "{}{}{}".format(checkpoint, SIDE_FILE_SUFFIX, rank)


def side_file_checkpoint(path: str):
    """The checkpoint whose side file ``path`` names, or None when it names no side file."""
    match = re.fullmatch(r"(.+){}\d+".format(re.escape(SIDE_FILE_SUFFIX)), str(path))
    return match.group(1) if match else None


def _listing(directory: str):
    """{name: (inode, mtime_ns, size)} of the checkpoints in ``directory``."""
    if not os.path.isdir(directory):
        return {}
    out = {}
    for entry in os.scandir(directory):
        if entry.name.endswith(".pt") and entry.is_file():
            st = entry.stat()
            out[entry.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _applies(trainer) -> bool:
    from .srupp_language_modeling import SRUppLanguageModelingTask

    return isinstance(trainer.task, SRUppLanguageModelingTask) and hasattr(trainer.model, "decoder") \
        and hasattr(trainer.model.decoder, "carried")


def _stamp(trainer, epoch_itr):
    return {"num_updates": trainer.get_num_updates(), "epoch": epoch_itr.epoch,
            "iterations_in_epoch": epoch_itr.iterations_in_epoch}


def save_side_files(cfg, trainer, epoch_itr, written, removed) -> None:
    """Write this rank's side file for every checkpoint in ``written``, drop those of ``removed``."""
    rank = trainer.data_parallel_rank
    key = trainer.task.cfg.train_subset
    payload = {
        "format": FORMAT,
        **_stamp(trainer, epoch_itr),
        "rank": rank,
        "world_size": trainer.data_parallel_world_size,
        "streams": trainer.task.cfg.batch_size,
        "state": trainer.model.decoder.carried.state_dict([key]),
    }
    if written:
        os.makedirs(cfg.save_dir, exist_ok=True)
        first = side_file(os.path.join(cfg.save_dir, written[0]), rank)
        tmp = first + ".tmp"
        torch.save(payload, tmp)
        os.replace(tmp, first)
        for name in written[1:]:
            # The same state for every name of this save: a hard link (a copy where links are not
            # supported). Replacing `first` later makes a new file, so the link keeps its content.
            target = side_file(os.path.join(cfg.save_dir, name), rank)
            tmp = target + ".tmp"
            if os.path.lexists(tmp):
                os.remove(tmp)
            try:
                os.link(first, tmp)
            except OSError:
                shutil.copyfile(first, tmp)
            os.replace(tmp, target)
    for name in removed:
        path = side_file(os.path.join(cfg.save_dir, name), rank)
        if os.path.lexists(path):
            os.remove(path)


def load_side_file(checkpoint: str, trainer, epoch_itr) -> None:
    """Restore this rank's carried state saved with ``checkpoint`` (warn once if unusable)."""
    rank = trainer.data_parallel_rank
    path = side_file(checkpoint, rank)
    if not 0 < epoch_itr.iterations_in_epoch < len(epoch_itr):
        return  # the next segment starts an epoch: its state is reset anyway
    if not os.path.exists(path):
        logger.warning("no carried state saved with %s (%s missing, an older checkpoint?): the first segment "
                       "after resuming starts from zero state", checkpoint, os.path.basename(path))
        return
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers and strings only
    except Exception as exc:
        logger.warning("carried state %s is unreadable (%s: %s): the first segment after resuming starts from "
                       "zero state", path, type(exc).__name__, exc)
        return
    expected = {**_stamp(trainer, epoch_itr), "rank": rank, "world_size": trainer.data_parallel_world_size,
                "streams": trainer.task.cfg.batch_size}
    found = {k: saved.get(k) for k in expected}
    if saved.get("format") != FORMAT or found != expected:
        logger.warning("carried state %s does not belong to %s (saved %s, resuming %s): the first segment "
                       "after resuming starts from zero state", path, checkpoint, found, expected)
        return
    device = next(trainer.model.parameters()).device
    trainer.model.decoder.carried.load_state_dict(saved["state"], device=device)
    logger.info("restored carried state from %s", path)


def _save_checkpoint(original):
    def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
        if cfg.no_save or not _applies(trainer):
            return original(cfg, trainer, epoch_itr, val_loss)
        master = trainer.data_parallel_rank == 0
        before = _listing(cfg.save_dir) if master else None
        result = original(cfg, trainer, epoch_itr, val_loss)
        changes = None
        if master:
            after = _listing(cfg.save_dir)
            changes = ([n for n in after if before.get(n) != after[n]], [n for n in before if n not in after])
        if trainer.data_parallel_world_size > 1:
            changes = distributed_utils.broadcast_object(
                changes, src_rank=0, group=trainer.data_parallel_process_group, dist_device=trainer.device
            )
        save_side_files(cfg, trainer, epoch_itr, *changes)
        return result

    save_checkpoint.srupp_wrapped = original
    return save_checkpoint


def _load_checkpoint(original):
    def load_checkpoint(cfg, trainer, **passthrough_args):
        if not _applies(trainer):
            return original(cfg, trainer, **passthrough_args)
        loaded = []
        trainer_load = trainer.load_checkpoint

        def capture(filename, *args, **kwargs):
            loaded.append(filename)
            if trainer.data_parallel_world_size > 1 and os.path.isfile(filename):
                # fairseq would broadcast rank 0's copy, which torch >= 2.6 refuses to unpickle
                # (weights_only and omegaconf objects); every rank sees the file (fairseq assumes
                # so too), so each reads it.
                with open_dict(trainer.cfg):
                    trainer.cfg.checkpoint.load_checkpoint_on_all_dp_ranks = True
            return trainer_load(filename, *args, **kwargs)

        trainer.load_checkpoint = capture  # fairseq picks the file; this learns which
        try:
            extra_state, epoch_itr = original(cfg, trainer, **passthrough_args)
        finally:
            del trainer.load_checkpoint
        if extra_state is not None and loaded and not cfg.reset_dataloader:
            load_side_file(loaded[-1], trainer, epoch_itr)
        return extra_state, epoch_itr

    load_checkpoint.srupp_wrapped = original
    return load_checkpoint


def install() -> None:
    """Wrap fairseq's checkpoint save/load once (idempotent)."""
    if not hasattr(checkpoint_utils.save_checkpoint, "srupp_wrapped"):
        # fairseq keeps the best loss as an attribute of the module's save_checkpoint, looked up
        # by name everywhere: after this it lives on the wrapper, consistently.
        checkpoint_utils.save_checkpoint = _save_checkpoint(checkpoint_utils.save_checkpoint)
    if not hasattr(checkpoint_utils.load_checkpoint, "srupp_wrapped"):
        checkpoint_utils.load_checkpoint = _load_checkpoint(checkpoint_utils.load_checkpoint)
