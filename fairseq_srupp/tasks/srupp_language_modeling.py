"""``srupp_language_modeling``: stateful truncated-BPTT language modelling over contiguous streams.

fairseq's ``language_modeling`` shuffles independent blocks, so a recurrent model starts every
block from zero. This task lays each split out as B contiguous streams per worker (see
:mod:`fairseq_srupp.tasks.stream_layout` for a worked example) and yields one batch per step, in
order, so the model carries its per-layer cell state ``c`` and attention memory from one segment
to the next (spec §2–4).

Each batch's ``net_input`` has ``src_tokens`` (B, T) and a ``carry`` dict telling the model
which state to use:

* ``key``: the split (``train``, ``valid``, …): training state and evaluation state are kept apart,
  so a validation run in the middle of an epoch does not disturb training;
* ``reset``: True on the first segment of an epoch or of an evaluation pass;
* ``mask``: ``causal`` (training: each query sees all memory and the current prefix) or
  ``same_length`` (evaluation: each query sees a fixed window of ``eval_unroll_size`` previous
  positions plus itself, as the paper's evaluation);
* ``enabled``: False with ``--no-carry-state`` (every segment starts from zero: an ablation).

Generation and scoring (``fairseq-interactive``, ``fairseq-generate``, the hub interface) work as
with ``language_modeling``: each prompt is prefixed with ``</s>`` and decoded from zero state.

Carried state is **not** saved in checkpoints: a run resumed from ``checkpoint_last.pt`` continues
at the same data position with the state reset to zero for its first segment.
"""
import logging
import os
from dataclasses import dataclass, field
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
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from .stream_layout import num_segments, reorder_sentences, stream_blocks

logger = logging.getLogger(__name__)


@dataclass
class SRUppLanguageModelingConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={"help": "directory with dict.txt and binarized splits"})
    tokens_per_sample: int = field(default=1024, metadata={"help": "training segment (unroll) length"})
    eval_unroll_size: int = field(
        default=0,
        metadata={"help": "evaluation segment length = attention window W (spec: enwik8 3072, wt103 2560, "
                  "lm1b 96); 0 means tokens_per_sample"},
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
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        start = self.starts[index]
        return torch.from_numpy(self.tokens[start:start + self.sizes[index]].astype(np.int64))


class SegmentDataset(FairseqDataset):
    """Item i is the whole batch of segment i for one worker: src/target (B, T)."""

    def __init__(self, split, stream_tokens_fn, streams, num_workers, worker, segment_length, dictionary, carry):
        self.split = split
        self.stream_tokens_fn = stream_tokens_fn  # epoch -> flat token array of the split
        self.streams = streams
        self.num_workers = num_workers
        self.worker = worker
        self.segment_length = segment_length
        self.dictionary = dictionary
        self.carry = carry
        self.epoch = None
        self.set_epoch(1)

    def set_epoch(self, epoch):
        if epoch == self.epoch:
            return
        self.epoch = epoch
        tokens = self.stream_tokens_fn(epoch)
        self.source, self.target = stream_blocks(
            tokens, self.streams, self.num_workers, self.worker, self.dictionary.eos(), self.dictionary.pad()
        )
        self._length = num_segments(self.source.shape[1], self.segment_length)

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        cols = slice(index * self.segment_length, (index + 1) * self.segment_length)
        target = torch.from_numpy(self.target[:, cols].astype(np.int64))
        first_stream = self.worker * self.streams
        return {
            "id": torch.arange(first_stream, first_stream + self.streams) + index * self.streams * self.num_workers,
            "nsentences": self.streams,
            "ntokens": int(target.ne(self.dictionary.pad()).sum()),
            "net_input": {
                "src_tokens": torch.from_numpy(self.source[:, cols].astype(np.int64)),
                "carry": dict(self.carry, reset=index == 0),
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


@register_task("srupp_language_modeling", dataclass=SRUppLanguageModelingConfig)
class SRUppLanguageModelingTask(FairseqTask):
    """Stateful language modelling for SRU++ (see the module docstring)."""

    def __init__(self, cfg: SRUppLanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary

    @classmethod
    def setup_task(cls, cfg: SRUppLanguageModelingConfig, **kwargs):
        if not cfg.data:
            raise ValueError("srupp_language_modeling needs a data directory (the first positional argument)")
        path = os.path.join(cfg.data.split(os.pathsep)[0], "dict.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                "no dictionary at {}: binarize the data with fairseq-preprocess --only-source first".format(path)
            )
        dictionary = Dictionary.load(path)
        logger.info("dictionary: %d types", len(dictionary))
        if cfg.tokens_per_sample < 1 or cfg.eval_unroll_size < 0:
            raise ValueError("--tokens-per-sample must be >= 1 and --eval-unroll-size >= 0")
        return cls(cfg, dictionary)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    @property
    def eval_window(self) -> int:
        return self.cfg.eval_unroll_size or self.cfg.tokens_per_sample

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """Load a split as its flat token array plus sentence sizes (kept for re-ordering)."""
        path = os.path.join(self.cfg.data.split(os.pathsep)[0], split)
        dataset = data_utils.load_indexed_dataset(path, self.dictionary, combine=combine)
        if dataset is None:
            raise FileNotFoundError(
                "split '{}' not found: expected {}.bin/.idx from fairseq-preprocess".format(split, path)
            )
        sizes = np.asarray(dataset.sizes, dtype=np.int64)
        if len(sizes) and hasattr(dataset, "_bin_buffer") and hasattr(dataset, "_index"):
            # mmap datasets store the items back to back: read them in one go.
            flat = np.frombuffer(dataset._bin_buffer, dtype=dataset._index.dtype, count=int(sizes.sum()))
        else:
            flat = np.concatenate([dataset[i].numpy() for i in range(len(dataset))]) if len(sizes) else np.zeros(0)
        self.datasets[split] = TokenStream(split, flat.astype(np.int32), sizes)
        logger.info("%s: %d sentences, %d tokens", split, len(sizes), len(flat))

    def split_tokens(self, split, epoch):
        """The split as one token array, in this epoch's sentence order."""
        tokens, sizes = self.datasets[split].tokens, self.datasets[split].sizes
        if self.cfg.shuffle_sentences and split == self.cfg.train_subset:
            order = np.random.RandomState((self.cfg.seed, epoch)).permutation(len(sizes))
            tokens = reorder_sentences(tokens, sizes, order)
        if self.cfg.prepend_eos:
            # Every sentence already ends with </s>: one more in front wraps each in </s> on both
            # sides with a single </s> between neighbours, as the paper's <S> stream.
            tokens = np.concatenate([np.array([self.dictionary.eos()], dtype=tokens.dtype), tokens])
        return tokens

    def segment_dataset(self, split, streams, num_workers, worker, training):
        carry = {
            "key": split,
            "enabled": not self.cfg.no_carry_state,
            "mask": "causal" if training else "same_length",
            "window": self.eval_window,
        }
        return SegmentDataset(
            split,
            lambda epoch: self.split_tokens(split, epoch),
            streams,
            num_workers,
            worker,
            self.cfg.tokens_per_sample if training else self.eval_window,
            self.dictionary,
            carry,
        )

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, num_shards=1, shard_id=0,
                           num_workers=0, epoch=1, data_buffer_size=0, **kwargs):
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
            raise ValueError("srupp_language_modeling needs --batch-size (streams per worker)")
        segments = self.segment_dataset(split, streams, num_shards, shard_id, training)
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
            raise ValueError(
                "--context-window does not apply to srupp_language_modeling: the model carries its state "
                "across segments; set the attention window with --eval-unroll-size"
            )
        return self.get_batch_iterator(
            dataset, max_sentences=batch_size, num_shards=num_shards, shard_id=shard_id,
            num_workers=num_workers, data_buffer_size=data_buffer_size,
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
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model.decoder, "reset_carried_state"):
            raise ValueError("srupp_language_modeling needs a model that carries state, e.g. --arch srupp_lm")
        return model

    def max_positions(self):
        return None
