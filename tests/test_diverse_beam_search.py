"""fairseq-generate --diverse-beam-groups: fairseq's DiverseBeamSearch sizes its overlap counts for the batch
but indexed them by the sentences' dataset ids (an IndexError from the second batch on); the plugin's wrapper
(fairseq_srupp.fairseq_fixes, item 8) reads each sentence's own row."""
import pytest
import torch

BATCH, BEAM, GROUPS = 3, 4, 2


def _search(step_fn):
    from fairseq.data import Dictionary
    from fairseq.search import DiverseBeamSearch

    dictionary = Dictionary()
    for word in "abcdefghij":
        dictionary.add_symbol(word)
    search = DiverseBeamSearch(dictionary, GROUPS, diversity_strength=0.5)
    if not hasattr(search, "group_overlap"):
        pytest.skip("this fairseq's DiverseBeamSearch keeps no overlap counts (before fairseq PR #5069)")
    return lambda *args: step_fn(search, *args), len(dictionary)


def _two_steps(step, vocab, first_ids, later_ids):
    """Step 0 over the batch, then steps 1 and 2 after the middle sentence finished."""
    gen = torch.Generator().manual_seed(0)
    out = [step(0, torch.randn(BATCH, BEAM, vocab, generator=gen).log_softmax(-1), None, None, first_ids)]
    kept = torch.tensor([0, 2])
    for i in (1, 2):
        lprobs = torch.randn(len(kept), BEAM, vocab, generator=gen).log_softmax(-1)
        scores = torch.randn(len(kept), BEAM, i, generator=gen)
        out.append(step(i, lprobs, scores, None, later_ids))
    return out


def test_each_sentence_reads_its_own_overlap_whatever_its_dataset_id():
    import fairseq_srupp

    fairseq_srupp.register()
    from fairseq.search import DiverseBeamSearch

    fairseqs_step = DiverseBeamSearch.step.__wrapped__
    step, vocab = _search(fairseqs_step)
    # fairseq's step is right where the ids are the rows (the first batch, no sentence finished before)
    expected = _two_steps(step, vocab, torch.arange(BATCH), torch.tensor([0, 2]))
    step, vocab = _search(DiverseBeamSearch.step)
    got = _two_steps(step, vocab, torch.tensor([30, 31, 32]), torch.tensor([30, 32]))  # a later batch's ids
    for e, g in zip(expected, got):
        for a, b in zip(e, g):
            assert torch.equal(a, b)
    step, vocab = _search(fairseqs_step)
    with pytest.raises(IndexError):  # what fairseq-generate did from its second batch on
        _two_steps(step, vocab, torch.tensor([30, 31, 32]), torch.tensor([30, 32]))


def test_prompts_ended_by_an_empty_line_beside_a_diverse_beam_search():
    """srupp_lm's generator decodes the rows whose forced prompt starts with </s> (an empty line) with one
    beam: a diverse beam search refused that beam (its groups must divide it), so such a batch failed."""
    from fairseq.search import DiverseBeamSearch
    from fairseq.sequence_generator import SequenceGenerator
    from test_incremental_decoding import make_decoder

    from fairseq_srupp.models.srupp_lm import SRUppLanguageModel

    torch.manual_seed(0)
    decoder = make_decoder(adaptive=False)
    model = SRUppLanguageModel(decoder).eval()
    prompts = torch.randint(4, 40, (3, 5))
    prompts[1, 0] = decoder.dictionary.eos()  # the empty line

    def generate(rows):
        search = DiverseBeamSearch(decoder.dictionary, GROUPS, diversity_strength=0.5)
        generator = SequenceGenerator([model], decoder.dictionary, beam_size=BEAM, max_len_b=12, search_strategy=search)
        src = prompts[rows]
        sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((len(rows),), src.shape[1])}}
        return generator.generate([model], sample, prefix_tokens=src)

    together = generate([0, 1, 2])
    alone = generate([0, 2])
    assert [h["tokens"].tolist() for h in together[1]] == [prompts[1, :1].tolist()]  # the line ended there
    for mixed, own in zip((together[0], together[2]), alone):
        assert [h["tokens"].tolist() for h in mixed] == [h["tokens"].tolist() for h in own]
        assert len(mixed) == BEAM
