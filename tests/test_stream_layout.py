"""The stream layout of srupp_language_modeling: disjoint streams, every token predicted once."""
import numpy as np
import pytest

from fairseq_srupp.tasks.stream_layout import num_segments, reorder_sentences, stream_blocks

BOS, PAD = 2, 1


def test_worked_example_of_the_docstring():
    tokens = np.arange(100, 111)  # t0 … t10
    src0, tgt0 = stream_blocks(tokens, 2, 2, 0, BOS, PAD)
    src1, tgt1 = stream_blocks(tokens, 2, 2, 1, BOS, PAD)
    assert tgt0.tolist() == [[100, 101, 102], [103, 104, 105]]
    assert tgt1.tolist() == [[106, 107, 108], [109, 110, PAD]]
    assert src0.tolist() == [[BOS, 100, 101], [102, 103, 104]]
    assert src1.tolist() == [[105, 106, 107], [108, 109, PAD]]
    assert num_segments(3, 2) == 2


@pytest.mark.parametrize("n_tokens", [16, 97, 1000])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("streams", [1, 2, 5])
def test_every_token_is_predicted_exactly_once(n_tokens, workers, streams):
    tokens = np.arange(10, 10 + n_tokens)  # distinct values, so each target names its position
    seen = []
    for worker in range(workers):
        src, tgt = stream_blocks(tokens, streams, workers, worker, BOS, PAD)
        assert src.shape == tgt.shape and src.shape[0] == streams
        real = tgt != PAD
        seen.extend(tgt[real].tolist())
        # the input of every target is the token before it (BOS before the first one)
        expected_src = np.where(tgt[real] == 10, BOS, tgt[real] - 1)
        assert (src[real] == expected_src).all()
        # padding only at the end of a stream: a stream is a contiguous run of the split
        for row in tgt:
            values = row[row != PAD]
            assert (row[: len(values)] == values).all() and (np.diff(values) == 1).all()
    assert sorted(seen) == tokens.tolist()


def test_workers_share_the_number_of_segments():
    tokens = np.arange(10, 10 + 101)
    lengths = {stream_blocks(tokens, 3, 4, w, BOS, PAD)[0].shape[1] for w in range(4)}
    assert len(lengths) == 1


def test_too_many_streams_is_an_actionable_error():
    with pytest.raises(ValueError, match="lower --batch-size"):
        stream_blocks(np.arange(5), 4, 2, 0, BOS, PAD)


def test_sentence_reordering_keeps_sentences_whole():
    sizes = np.array([3, 1, 4, 2])
    tokens = np.arange(10)  # sentences: [0 1 2] [3] [4 5 6 7] [8 9]
    assert reorder_sentences(tokens, sizes, np.array([2, 0, 3, 1])).tolist() == [4, 5, 6, 7, 0, 1, 2, 8, 9, 3]
    assert reorder_sentences(tokens, sizes, np.arange(4)).tolist() == tokens.tolist()
