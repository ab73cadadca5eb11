"""``srupp_language_modeling``: stateful truncated-BPTT language modelling over contiguous streams.

fairseq's ``language_modeling`` shuffles independent blocks, so a recurrent model starts every
block from zero. This task lays each split out as B contiguous streams per worker (see
:mod:`fairseq_srupp.tasks.stream_layout` for a worked example) and yields one batch per step, in
order, so the model carries its per-layer cell state ``c`` and attention memory from one segment
to the next (spec §2–4).

Each batch's ``net_input`` has ``src_tokens`` (B, T) and a
:class:`~fairseq_srupp.tasks.carried_state.SegmentContext` ``segment`` (worked example in that
module): the mask (``causal`` for training; ``same_length`` with the model's ``--eval-window`` W
for evaluation, as the paper's), and unless ``--no-carry-state`` which state it continues
(``train``, ``valid``, …: kept apart, so a validation run mid-epoch does not disturb training),
reset on the first segment of an epoch or evaluation and released after an evaluation's last.

Evaluation segments are W tokens long, W being the model's ``--eval-window`` (read when the task
builds the model); the task's ``--eval-unroll-size`` is a deprecated alias that sets it.

Generation and scoring (``fairseq-interactive``, ``fairseq-generate``, the hub interface) work as
with ``language_modeling``: each prompt is prefixed with ``</s>`` and decoded from zero state.

Checkpoints save every rank's carried training state in side files (:mod:`.resume`), so a run
resumed from ``checkpoint_last.pt`` continues exactly.
"""
import contextlib
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch
from fairseq.data import (
    AppendTokenDataset,
    Dictionary,
    FairseqDataset,
    IdDataset,
    ListDataset,
    NestedDictionaryDataset,
    NumelDataset,
    PadDataset,
    PrependTokenDataset,
    StripTokenDataset,
    data_utils,
    iterators,
)
from fairseq import distributed_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, OmegaConf, open_dict

from fairseq_srupp.errors import SRUppUserError

from . import resume
from .carried_state import SegmentContext
from .split_files import check_data_dir, check_split, check_token_range
from .stream_layout import num_segments, reorder_sentences, sentence_offsets, stream_blocks

logger = logging.getLogger(__name__)

CONTEXT_WINDOW_UNSUPPORTED = (
    "--context-window does not apply to srupp_language_modeling: the model carries its state across segments; "
    "its attention window is the model's --eval-window"
)


@dataclass
class SRUppLanguageModelingConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={"help": "directory with dict.txt and binarized splits"})
    tokens_per_sample: int = field(default=1024, metadata={"help": "training segment (unroll) length"})
    eval_unroll_size: int = field(
        default=0,
        metadata={"help": "deprecated alias of the model's --eval-window (evaluation segment = attention "
                  "window W); 0: use the model's"},
    )
    no_carry_state: bool = field(
        default=False, metadata={"help": "reset c and memory every segment (ablation; the paper carries them)"}
    )
    shuffle_sentences: bool = field(
        default=False, metadata={"help": "Billion Word layout: new random sentence order every training epoch"}
    )
    prepend_eos: bool = field(
        default=False,
        metadata={"help": "Billion Word layout: start the split with </s> too, so every sentence is wrapped in </s> "
                  "on both sides (one </s> between neighbours, as the paper's <S> stream)"},
    )
    train_subset: str = II("dataset.train_subset")
    batch_size: Optional[int] = II("dataset.batch_size")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")
    seed: int = II("common.seed")


class TokenStream(FairseqDataset):
    """A loaded split: all its tokens back to back (int32) and the size of each sentence.

    Batches are not drawn from it directly: :meth:`SRUppLanguageModelingTask.get_batch_iterator`
    lays it out as streams (a :class:`SegmentDataset`).
    """

    def __init__(self, split: str, tokens: np.ndarray, sizes: np.ndarray):
        self.split = split
        self.tokens = tokens
        self.sizes = sizes
        self.starts = sentence_offsets(sizes)

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        start = self.starts[index]
        return torch.from_numpy(self.tokens[start:start + self.sizes[index]].astype(np.int64))


class EpochTokens:
    """epoch → the split as one token array in that epoch's sentence order (a plain object rather
    than a closure over the task, so a DataLoader can pickle it into spawned workers)."""

    def __init__(self, tokens: np.ndarray, sizes: np.ndarray, shuffle_seed: Optional[int], prepend: Optional[int]):
        self.tokens, self.sizes = tokens, sizes
        self.shuffle_seed = shuffle_seed  # None: fixed order
        self.prepend = prepend  # token put in front of the split, or None

    def __len__(self):
        return len(self.tokens) + (self.prepend is not None)

    def __call__(self, epoch: int) -> np.ndarray:
        tokens = self.tokens
        if self.shuffle_seed is not None:
            order = np.random.RandomState((self.shuffle_seed, epoch)).permutation(len(self.sizes))
            tokens = reorder_sentences(tokens, self.sizes, order)
        if self.prepend is not None:
            # Every sentence already ends with </s>: one more in front wraps each in </s> on both
            # sides with a single </s> between neighbours, as the paper's <S> stream.
            tokens = np.concatenate([np.array([self.prepend], dtype=tokens.dtype), tokens])
        return tokens


class SegmentDataset(FairseqDataset):
    """Item i is the whole batch of segment i for one worker: src/target (B, T) and its
    :class:`SegmentContext` (``context`` with ``reset`` set on segment 0 and, when ``release_last``,
    ``release`` on the last one)."""

    def __init__(self, split, epoch_tokens: EpochTokens, streams, num_workers, worker, segment_length,
                 dictionary, context: SegmentContext, release_last: bool = False):
        self.split = split
        self.epoch_tokens = epoch_tokens
        self.streams = streams
        self.num_workers = num_workers
        self.worker = worker
        self.segment_length = segment_length
        self.dictionary = dictionary
        self.context = context
        self.release_last = release_last
        self.epoch = None
        self.source = self.target = None
        self.set_epoch(1)

    def set_epoch(self, epoch):
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self.source = self.target = None
        self._blocks()
        self._length = num_segments(self.source.shape[1], self.segment_length)

    def _blocks(self):
        if self.source is None:
            self.source, self.target = stream_blocks(
                self.epoch_tokens(self.epoch), self.streams, self.num_workers, self.worker,
                self.dictionary.eos(), self.dictionary.pad(),
            )
        return self.source, self.target

    def __getstate__(self):
        # Spawned DataLoader workers rebuild the blocks from the split's tokens (forked ones
        # share them): the pickle stays the size of the split, not three times it.
        state = dict(self.__dict__)
        state["source"] = state["target"] = None
        return state

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        source, target = self._blocks()
        cols = slice(index * self.segment_length, (index + 1) * self.segment_length)
        target = torch.from_numpy(target[:, cols].astype(np.int64))
        first_stream = self.worker * self.streams
        context = self.context
        if context.state is not None:
            context = replace(context, reset=index == 0, release=self.release_last and index == len(self) - 1)
        return {
            "id": torch.arange(first_stream, first_stream + self.streams) + index * self.streams * self.num_workers,
            "nsentences": self.streams,
            "ntokens": int(target.ne(self.dictionary.pad()).sum()),
            "net_input": {
                "src_tokens": torch.from_numpy(source[:, cols].astype(np.int64)),
                "segment": context,
            },
            "target": target,
        }

    def collater(self, samples):
        assert len(samples) == 1, "one segment per batch"
        return samples[0]

    def num_tokens(self, index):
        return self.segment_length * self.streams

    def size(self, index):
        return self.segment_length

    def ordered_indices(self):
        return np.arange(len(self))


_warned_eval_unroll_size = False


def _warn_eval_unroll_size_once(value):
    global _warned_eval_unroll_size
    if not _warned_eval_unroll_size:
        _warned_eval_unroll_size = True
        logger.warning("--eval-unroll-size is deprecated: it sets the model's --eval-window (to %d), the one "
                       "evaluation and generation window (in fairseq-eval-lm the checkpoint's window is used "
                       "unless --model-overrides \"{'eval_window': N}\")", value)


@register_task("srupp_language_modeling", dataclass=SRUppLanguageModelingConfig)
class SRUppLanguageModelingTask(FairseqTask):
    """Stateful language modelling for SRU++ (see the module docstring)."""

    def __init__(self, cfg: SRUppLanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.model_eval_window: Optional[int] = None  # the model's --eval-window, set by build_model

    @classmethod
    def setup_task(cls, cfg: SRUppLanguageModelingConfig, **kwargs):
        path = os.path.join(check_data_dir(cfg.data, "srupp_language_modeling"), "dict.txt")
        dictionary = Dictionary.load(path)
        logger.info("dictionary: %d types", len(dictionary))
        if cfg.tokens_per_sample < 1 or cfg.eval_unroll_size < 0:
            raise SRUppUserError("--tokens-per-sample must be >= 1 and --eval-unroll-size >= 0")
        for flag, value in (("--batch-size", cfg.batch_size), ("--batch-size-valid", cfg.batch_size_valid)):
            if value is not None and value < 1:
                raise SRUppUserError("{} must be >= 1 (streams per worker), got {}".format(flag, value))
        if cfg.eval_unroll_size:
            _warn_eval_unroll_size_once(cfg.eval_unroll_size)
        resume.install()
        return cls(cfg, dictionary)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    @property
    def eval_window(self) -> int:
        """Evaluation segment length = attention window W: the model's ``--eval-window``, or the
        deprecated ``--eval-unroll-size`` when given (which also sets the model's)."""
        window = self.cfg.eval_unroll_size or self.model_eval_window
        if not window:
            raise ValueError("the evaluation window is unknown: build the model with task.build_model first "
                             "or set eval_unroll_size")
        return window

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """Load a split as its flat token array plus sentence sizes (kept for re-ordering)."""
        path = os.path.join(self.cfg.data.split(os.pathsep)[0], split)
        check_split(os.path.dirname(path), split)
        dataset = data_utils.load_indexed_dataset(path, self.dictionary, combine=combine)
        sizes = np.asarray(dataset.sizes, dtype=np.int64)
        if len(sizes) and hasattr(dataset, "_bin_buffer") and hasattr(dataset, "_index"):
            # mmap datasets store the items back to back: read them in one go.
            flat = np.frombuffer(dataset._bin_buffer, dtype=dataset._index.dtype, count=int(sizes.sum()))
        else:
            flat = np.concatenate([dataset[i].numpy() for i in range(len(dataset))]) if len(sizes) else np.zeros(0)
        check_token_range(flat, len(self.dictionary), path)
        self.datasets[split] = TokenStream(split, flat.astype(np.int32), sizes)
        logger.info("%s: %d sentences, %d tokens", split, len(sizes), len(flat))

    def epoch_tokens(self, split) -> EpochTokens:
        """The split as one token array per epoch (sentence order, leading </s>)."""
        stream = self.datasets[split]
        shuffle = self.cfg.shuffle_sentences and split == self.cfg.train_subset
        return EpochTokens(stream.tokens, stream.sizes, self.cfg.seed if shuffle else None,
                           self.dictionary.eos() if self.cfg.prepend_eos else None)

    def split_tokens(self, split, epoch):
        """The split as one token array, in this epoch's sentence order."""
        return self.epoch_tokens(split)(epoch)

    def segment_dataset(self, split, streams, num_workers, worker, training, streams_flag=None):
        state = None if self.cfg.no_carry_state else split
        if training:
            context, length = SegmentContext("causal", state=state), self.cfg.tokens_per_sample
        else:
            context, length = SegmentContext("same_length", self.eval_window, state=state), self.eval_window
        epoch_tokens = self.epoch_tokens(split)
        self.check_segment_fits(split, len(epoch_tokens), streams, num_workers, length, training, streams_flag)
        return SegmentDataset(split, epoch_tokens, streams, num_workers, worker, length, self.dictionary,
                              context, release_last=not training)

    def check_segment_fits(self, split, n_tokens, streams, num_workers, length, training, streams_flag=None):
        """Reject, before anything is allocated, a split too small for its streams or a segment
        longer than a stream (which would make one segment of the whole stream, and an attention
        mask of its length squared). ``streams_flag`` names the flag that set ``streams``: by default
        fairseq-train's (``--batch-size`` for training, ``--batch-size-valid`` for validation)."""
        streams_flag = streams_flag or ("--batch-size" if training else "--batch-size-valid")
        total = streams * num_workers
        if n_tokens < total:
            raise SRUppUserError(
                "the split '{}' has {} tokens, fewer than the {} streams ({} workers x {} streams): "
                "lower {}".format(split, n_tokens, total, num_workers, streams, streams_flag)
            )
        stream_length = -(-n_tokens // total)
        if length > stream_length:
            flag = "--tokens-per-sample" if training else (
                "--eval-unroll-size" if self.cfg.eval_unroll_size else "--eval-window")
            raise SRUppUserError(
                "{} {} is longer than each stream of '{}' ({} tokens / ({} workers x {} streams) = {} tokens): "
                "lower {} to at most {} or use fewer streams ({})".format(
                    flag, length, split, n_tokens, num_workers, streams, stream_length, flag, stream_length,
                    streams_flag)
            )

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, num_shards=1, shard_id=0,
                           num_workers=0, epoch=1, data_buffer_size=0, streams_flag=None, **kwargs):
        """fairseq's, for a loaded split laid out as streams (``max_sentences`` of them, else the task's
        batch sizes); ``streams_flag``: the flag that set them, for error messages."""
        if not isinstance(dataset, TokenStream):
            # Prompts for generation / scoring (build_dataset_for_inference): ordinary batching.
            return super().get_batch_iterator(
                dataset, max_tokens=max_tokens, max_sentences=max_sentences, num_shards=num_shards,
                shard_id=shard_id, num_workers=num_workers, epoch=epoch, data_buffer_size=data_buffer_size,
                **kwargs,
            )
        split = dataset.split
        training = split == self.cfg.train_subset
        streams = max_sentences or (self.cfg.batch_size if training else self.cfg.batch_size_valid) or self.cfg.batch_size
        if not streams:
            raise SRUppUserError("srupp_language_modeling needs --batch-size (streams per worker)")
        segments = self.segment_dataset(split, streams, num_shards, shard_id, training, streams_flag)
        return iterators.EpochBatchIterator(
            dataset=segments,
            collate_fn=segments.collater,
            batch_sampler=[[i] for i in range(len(segments))],
            seed=self.cfg.seed,
            num_shards=1,  # the segment dataset already holds only this worker's streams
            shard_id=0,
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            disable_shuffling=True,
        )

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10, context_window=0):
        if context_window > 0:
            raise SRUppUserError(CONTEXT_WINDOW_UNSUPPORTED)
        return self.get_batch_iterator(
            dataset, max_sentences=batch_size, num_shards=num_shards, shard_id=shard_id,
            num_workers=num_workers, data_buffer_size=data_buffer_size, streams_flag="--batch-size",
        ).next_epoch_itr(shuffle=False)

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """Prompts → batches of ``</s> prompt`` inputs with ``prompt <pad>`` targets (one per prompt).

        ``src_tokens``: list of 1-D token tensors, each ending in ``</s>`` as ``encode_line`` makes them.
        """
        eos, pad = self.dictionary.eos(), self.dictionary.pad()
        prompts = StripTokenDataset(ListDataset(src_tokens, np.array(src_lengths)), eos)
        inputs = PrependTokenDataset(prompts, token=eos)
        targets = AppendTokenDataset(prompts, token=pad)
        return NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {
                    "src_tokens": PadDataset(inputs, pad_idx=pad, left_pad=False),
                    "src_lengths": NumelDataset(inputs, reduce=False),
                },
                "target": PadDataset(targets, pad_idx=pad, left_pad=False),
            },
            sizes=[np.array(src_lengths)],
        )

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """Continue each prompt: the prompt (without its leading ``</s>``) is forced as a prefix."""
        if constraints is not None:
            raise NotImplementedError("constrained decoding is not supported for language models")
        eos = self.dictionary.eos()
        with torch.no_grad():
            src_tokens = sample["net_input"]["src_tokens"]
            if prefix_tokens is None and src_tokens.nelement():
                prefix_tokens = src_tokens[:, 1:] if src_tokens[:, 0].eq(eos).all() else src_tokens
            return generator.generate(models, sample, prefix_tokens=prefix_tokens, bos_token=eos)

    def build_model(self, cfg, from_checkpoint=False):
        if self.cfg.eval_unroll_size:
            # The deprecated alias wins over the model's window, so evaluation and generation agree.
            with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.nullcontext():
                cfg.eval_window = self.cfg.eval_unroll_size
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model.decoder, "reset_carried_state"):
            raise SRUppUserError("srupp_language_modeling needs a model that carries state, e.g. --arch srupp_lm")
        self.model_eval_window = model.decoder.cfg.eval_window
        # fairseq-train loads the validation splits before the model but builds their batches only
        # at the first validation: check their window now rather than after an epoch of training.
        streams = self.cfg.batch_size_valid or self.cfg.batch_size
        for split, dataset in self.datasets.items():
            if split != self.cfg.train_subset and isinstance(dataset, TokenStream) and streams:
                self.check_segment_fits(split, len(self.epoch_tokens(split)), streams,
                                        distributed_utils.get_data_parallel_world_size(), self.eval_window, False)
        return model

    def max_positions(self):
        return None
