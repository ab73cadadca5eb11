"""How a split becomes B contiguous streams per data-parallel worker, cut into segments.

Worked example: a split of N = 11 tokens ``t0 … t10``, W = 2 workers, B = 2 streams each, and
segments of T = 2 tokens.

1. The model must predict every token, including ``t0``, so inputs are the tokens shifted right
   by one behind a leading ``</s>`` (the split begins after a line break)::

       source: </s> t0 t1 … t9        target: t0 t1 … t10

2. S = W·B = 4 streams of n = ceil(11 / 4) = 3 positions. Stream s holds positions
   [s·n, (s+1)·n); the tail of the last stream is padding (never a target)::

       stream 0: t0 t1 t2     stream 1: t3 t4 t5     stream 2: t6 t7 t8     stream 3: t9 t10 pad

3. Worker r takes streams r·B … r·B + B − 1 (worker 0: streams 0, 1; worker 1: streams 2, 3), the
   same layout as the paper's ``create_batches``, so every worker sees a disjoint part of the split
   and all workers have the same number of segments (DDP needs equal step counts).

4. Segment i is columns [i·T, (i+1)·T) of the worker's (B, n) block: ceil(3 / 2) = 2 segments,
   the last one shorter (T = 1). Segment i+1 of a stream continues segment i, which is what lets
   the model carry its recurrent state and attention memory from one segment to the next.

Every target position is predicted exactly once per epoch for a given (W, B); padding is marked
with the dictionary's pad index and ignored by the loss.

With ``shuffle_sentences`` (the Billion Word layout) the sentences (dataset items, each ending in
``</s>``) are put in a new random order every epoch before step 1; the task's ``prepend_eos`` then
adds one ``</s>`` in front of the split, so every sentence is wrapped in ``</s>`` on both sides.
"""
import math
from typing import Optional, Tuple

import numpy as np


def sentence_offsets(sizes: np.ndarray) -> np.ndarray:
    """Start offset of each sentence in the flat token array."""
    starts = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return starts


def reorder_sentences(tokens: np.ndarray, sizes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Concatenate sentences (given flat with their ``sizes``) in ``order``; vectorised, so 30M
    sentences take seconds."""
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = sentence_offsets(sizes)[order]
    sizes = sizes[order]
    out_starts = sentence_offsets(sizes)
    total = int(sizes.sum())
    # For every output position: its sentence, then its offset inside that sentence.
    sentence = np.repeat(np.arange(len(sizes)), sizes)
    within = np.arange(total) - out_starts[sentence]
    return tokens[starts[sentence] + within]


def stream_blocks(
    tokens: np.ndarray,
    streams_per_worker: int,
    num_workers: int,
    worker: int,
    bos: int,
    pad: int,
) -> Tuple[np.ndarray, np.ndarray]:
    """(source, target) of shape (B, n) for ``worker``: its B contiguous streams (see module doc)."""
    if not 0 <= worker < num_workers:
        raise ValueError("worker {} is not in [0, {})".format(worker, num_workers))
    if streams_per_worker < 1:
        raise ValueError("need at least one stream per worker, got {}".format(streams_per_worker))
    total_streams = streams_per_worker * num_workers
    n_tokens = len(tokens)
    if n_tokens < total_streams:
        raise ValueError(
            "the split has {} tokens, fewer than the {} streams ({} workers x {} streams): "
            "lower --batch-size".format(n_tokens, total_streams, num_workers, streams_per_worker)
        )
    length = math.ceil(n_tokens / total_streams)
    first = worker * streams_per_worker * length  # first position of this worker's block
    positions = first + np.arange(streams_per_worker * length)
    real = positions < n_tokens
    # int32 keeps a 100M-token split at 0.4 GB per array; segments are widened when batched.
    source = np.full(len(positions), pad, dtype=np.int32)
    target = np.full(len(positions), pad, dtype=np.int32)
    target[real] = tokens[positions[real]]
    shifted = real & (positions > 0)
    source[shifted] = tokens[positions[shifted] - 1]
    source[positions == 0] = bos
    return source.reshape(streams_per_worker, length), target.reshape(streams_per_worker, length)


def num_segments(stream_length: int, segment_length: int) -> int:
    return math.ceil(stream_length / segment_length)
