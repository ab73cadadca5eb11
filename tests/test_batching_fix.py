"""fairseq's batch_by_size drops the last batch when its size is not a multiple of
--required-batch-size-multiple (fairseq issue #5036); with the plugin loaded every index is batched."""
import numpy as np
import pytest
from fairseq.data import FairseqDataset, data_utils

import fairseq_srupp


class Blocks(FairseqDataset):
    """n blocks of 32 tokens, as fairseq's language_modeling task cuts a split."""

    def __init__(self, n):
        self.sizes = np.full(n, 32, dtype=np.int64)

    def __len__(self):
        return len(self.sizes)

    def num_tokens(self, index):
        return 32

    def num_tokens_vec(self, indices):
        return self.sizes[indices]


@pytest.mark.parametrize("n, batch, expected", [
    (21, 8, [8, 8, 5]), (21, 6, [6, 6, 6, 3]), (21, 5, [5, 5, 5, 5, 1]), (16, 8, [8, 8]), (3, 8, [3]),
])
def test_every_block_is_batched(n, batch, expected):
    fairseq_srupp.register()
    batches = Blocks(n).batch_by_size(np.arange(n), max_sentences=batch, required_batch_size_multiple=8)
    assert [len(b) for b in batches] == expected
    assert np.concatenate(batches).tolist() == list(range(n))


def test_fairseq_alone_drops_the_last_batch():
    """What the wrapper mends (if fairseq stops dropping, the wrapper changes nothing)."""
    fairseq_srupp.register()
    original = data_utils.batch_by_size.__wrapped__
    kept = sum(len(b) for b in original(np.arange(21), lambda i: 32, None, None, 8, 8))
    assert kept == 16
