"""Check a binarized split (``<split>.idx`` + ``<split>.bin`` from ``fairseq-preprocess``) before
fairseq maps it, so a truncated or corrupted file gives one line naming the file instead of
``ValueError: buffer is smaller than requested size`` deep inside numpy.

The mmap index written by ``fairseq-preprocess`` (``--dataset-impl mmap``, the default) is::

    magic "MMIDIDX\\0\\0" (9 bytes) | version u64 = 1 | dtype code u8 | n u64
    | sizes int32[n] | pointers int64[n]          (pointer i = byte offset of item i in .bin)

and the ``.bin`` holds the items back to back, so its size is sum(sizes) × itemsize.
"""
import os
import struct

import numpy as np
from fairseq.data.indexed_dataset import MMapIndexedDataset, _code_to_dtype

from fairseq_srupp.errors import SRUppUserError

_MAGIC = MMapIndexedDataset.Index._HDR_MAGIC
_HEADER = len(_MAGIC) + 8 + 1 + 8
_LEGACY_MAGIC = b"TNTIDX\x00\x00"  # fairseq's older "cached"/"lazy" index: left to fairseq


def _corrupt(path: str, what: str) -> SRUppUserError:
    return SRUppUserError(
        "{} is truncated or corrupted ({}): re-run fairseq-preprocess for this split".format(path, what)
    )


def check_binarized_split(prefix: str) -> None:
    """Raise :class:`SRUppUserError` naming the file when ``prefix.idx`` / ``prefix.bin`` do not
    agree. Does nothing when the index is missing (the caller reports a missing split)."""
    idx, bin_path = prefix + ".idx", prefix + ".bin"
    if not os.path.exists(idx):
        if os.path.exists(bin_path):
            raise SRUppUserError("{} has no index: {} is missing (re-run fairseq-preprocess)".format(bin_path, idx))
        return
    for path in (idx, bin_path):
        if os.path.isdir(path):
            raise SRUppUserError("{} is a directory, expected a file written by fairseq-preprocess".format(path))
    idx_size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        header = f.read(_HEADER)
        if header.startswith(_LEGACY_MAGIC):
            return
        if len(header) < _HEADER or not header.startswith(_MAGIC):
            raise _corrupt(idx, "no fairseq mmap index header")
        version, code, n = struct.unpack("<QBQ", header[len(_MAGIC):])
        if version != 1 or code not in _code_to_dtype:
            raise _corrupt(idx, "unknown version {} or dtype code {}".format(version, code))
        expected_idx = _HEADER + 12 * n
        if idx_size != expected_idx:
            raise _corrupt(idx, "{} bytes, its header says {} items = {} bytes".format(idx_size, n, expected_idx))
        sizes = np.fromfile(f, dtype=np.int32, count=n).astype(np.int64)
        pointers = np.fromfile(f, dtype=np.int64, count=n)
    itemsize = np.dtype(_code_to_dtype[code]).itemsize
    if (sizes < 0).any() or (n and (pointers[0] != 0 or (np.diff(pointers) != sizes[:-1] * itemsize).any())):
        raise _corrupt(idx, "item sizes and offsets disagree")
    if not os.path.exists(bin_path):
        raise SRUppUserError("{} has no data: {} is missing (re-run fairseq-preprocess)".format(idx, bin_path))
    expected_bin = int(sizes.sum()) * itemsize
    bin_size = os.path.getsize(bin_path)
    if bin_size != expected_bin:
        raise _corrupt(bin_path, "{} bytes, its index {} says {}".format(bin_size, idx, expected_bin))


def check_data_dir(data, task: str) -> str:
    """The first directory of ``data`` (fairseq's ``dir1:dir2`` shard list) after checking that it holds
    a ``dict.txt``; :class:`SRUppUserError` naming what is missing otherwise."""
    if not data:
        raise SRUppUserError("{} needs a data directory (the first positional argument)".format(task))
    first = data.split(os.pathsep)[0]
    if not os.path.isdir(first):
        raise SRUppUserError("the data directory {} {}: give the --destdir of fairseq-preprocess".format(
            first, "is a file" if os.path.exists(first) else "does not exist"))
    path = os.path.join(first, "dict.txt")
    if not os.path.isfile(path):
        raise SRUppUserError(
            "no dictionary at {}: binarize the data with fairseq-preprocess --only-source first".format(path)
        )
    return first


def _splits_in(data_dir: str) -> str:
    names = sorted(f[:-len(".idx")] for f in os.listdir(data_dir) if f.endswith(".idx"))
    return ", ".join(names) if names else "none"


def check_split(data_dir: str, split: str, raw: bool = False) -> None:
    """Raise :class:`SRUppUserError` unless ``data_dir`` holds split ``split`` whole and non-empty:
    ``split.idx`` + ``split.bin`` (checked by :func:`check_binarized_split`), or with ``raw`` (fairseq's
    ``--dataset-impl raw``) the text file ``split``. The message lists the splits that are there."""
    prefix = os.path.join(data_dir, split)
    if raw:
        if not os.path.isfile(prefix):
            raise SRUppUserError("split '{}' not found: --dataset-impl raw reads the text file {}".format(split, prefix))
        return
    check_binarized_split(prefix)
    if not os.path.exists(prefix + ".idx"):
        raise SRUppUserError("split '{}' not found: expected {}.bin/.idx from fairseq-preprocess (splits in {}: "
                             "{})".format(split, prefix, data_dir, _splits_in(data_dir)))
    if os.path.isfile(prefix + ".bin") and os.path.getsize(prefix + ".bin") == 0:
        # fairseq cannot map an empty file (AttributeError deep in MMapIndexedDataset)
        raise SRUppUserError("split '{}' is empty ({}.bin has no tokens): binarize a non-empty text for it "
                             "with fairseq-preprocess".format(split, prefix))


def check_token_range(tokens: np.ndarray, vocab_size: int, prefix: str) -> None:
    """Token ids must index the dictionary, or the embedding lookup fails far from the cause."""
    if len(tokens) and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
        raise SRUppUserError(
            "{}.bin holds token ids in [{}, {}] but dict.txt has {} symbols: the split was binarized "
            "with another dictionary or is corrupted".format(prefix, int(tokens.min()), int(tokens.max()), vocab_size)
        )
