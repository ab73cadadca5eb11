"""srupp_language_modeling in process: the paper's evaluation protocol, carried state, resuming."""
import pytest
import sru
import torch
from cli_utils import make_char_data
from conftest import assert_close
from omegaconf import OmegaConf

from fairseq_srupp.models.srupp_lm import SRUppLanguageModel, SRUppLMConfig
from fairseq_srupp.tasks import SRUppLanguageModelingConfig, SRUppLanguageModelingTask
from test_srupp_parity import randomize_

LAYERS, HIDDEN, PROJ = 3, 32, 16


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    return make_char_data(tmp_path_factory.mktemp("stateful"), n_train=6000, n_valid=1500)


def make_task(data_bin, **overrides):
    fields = dict(data=str(data_bin), tokens_per_sample=16, eval_unroll_size=12, batch_size=3,
                  batch_size_valid=2, seed=1, train_subset="train")
    fields.update(overrides)
    task = SRUppLanguageModelingTask.setup_task(OmegaConf.structured(SRUppLanguageModelingConfig(**fields)))
    task.load_dataset("train")
    task.load_dataset("valid")
    return task


def make_model(task, every=1):
    cfg = SRUppLMConfig(hidden_size=HIDDEN, proj_size=PROJ, num_layers=LAYERS, dropout=0.0, attn_dropout=0.0,
                        attention_every_n_layers=every)
    model = SRUppLanguageModel.build_model(cfg, task)
    randomize_(model.decoder.srupp)
    return model


def batches(task, split, streams=None):
    itr = task.get_batch_iterator(task.dataset(split), max_sentences=streams)
    return list(itr.next_epoch_itr(shuffle=True))  # shuffle must be ignored: streams are ordered


def paper_same_length_mask(window):
    """The mask of the paper's eval_model, built as its script builds it."""
    ones = torch.ones(2 * window, 2 * window)
    return (torch.triu(ones, diagonal=1) + torch.tril(ones, diagonal=-1 - window)) * -10000.0


@pytest.mark.parametrize("every", [1, 2])
def test_evaluation_matches_the_paper_procedure_with_sru(data_bin, every):
    window = 12
    task = make_task(data_bin, eval_unroll_size=window)
    model = make_model(task, every).eval()
    ref = sru.SRUpp(HIDDEN, HIDDEN, PROJ, num_layers=LAYERS, layer_norm=True, attn_layer_norm=True,
                    highway_bias=-2, attention_every_n_layers=every).eval()
    ref.load_state_dict(model.decoder.srupp.state_dict())
    embed, output = model.decoder.embed_tokens, model.decoder.output_projection
    full_mask = paper_same_length_mask(window)
    valid = batches(task, "valid")
    assert len(valid) >= 4 and all(b["net_input"]["src_tokens"].shape[1] <= window for b in valid)

    hidden, memory = torch.zeros(LAYERS, 2, HIDDEN), [None] * LAYERS
    pad = task.dictionary.pad()
    with torch.no_grad():
        for i, batch in enumerate(valid):
            src = batch["net_input"]["src_tokens"]
            lprobs = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True)  # (B, T, V)
            x = src.t()  # (T, B)
            mem_len = 0 if memory[0] is None else memory[0].shape[0]
            mask = full_mask[mem_len:mem_len + x.shape[0], :mem_len + x.shape[0]]
            out, hidden, saved = ref(embed(x), hidden, memory=memory, attn_mask=mask)
            memory = saved["saved_inputs"]
            ref_lprobs = torch.log_softmax(output(out), dim=-1).transpose(0, 1)  # (B, T, V)
            real = batch["target"].ne(pad)
            assert_close("segment {} log-probs".format(i), lprobs[real], ref_lprobs[real], 1e-5)


def test_state_is_carried_reset_per_epoch_and_kept_apart_from_validation(data_bin):
    task = make_task(data_bin)
    model = make_model(task).train()
    train = batches(task, "train")
    valid = batches(task, "valid")
    assert train[0]["net_input"]["segment"].reset and not train[1]["net_input"]["segment"].reset

    def train_outputs(validate_after):
        model.decoder.reset_carried_state()
        outs = []
        for i, batch in enumerate(train[:4]):
            with torch.no_grad():
                outs.append(model(**batch["net_input"])[0])
            if i == validate_after:
                model.eval()
                with torch.no_grad():
                    for vb in valid:
                        model(**vb["net_input"])
                model.train()
        return outs

    plain, interrupted = train_outputs(None), train_outputs(1)
    for i, (a, b) in enumerate(zip(plain, interrupted)):
        assert_close("train segment {} with a validation run before it".format(i), a, b, 0.0)
    with torch.no_grad():
        fresh = model(train[2]["net_input"]["src_tokens"])[0]  # the same segment without carried state
    assert (fresh - plain[2]).abs().max() > 1e-3, "the carried state changed nothing"

    # a new epoch starts from zero: its first segment equals a fresh, carry-free forward
    model.decoder.reset_carried_state()
    with torch.no_grad():
        for batch in train:
            model(**batch["net_input"])
        first_of_epoch_2 = model(**train[0]["net_input"])[0]
        no_state = model(train[0]["net_input"]["src_tokens"])[0]
    assert_close("first segment of the next epoch", first_of_epoch_2, no_state, 0.0)


def test_no_carry_state_resets_every_segment(data_bin):
    task = make_task(data_bin, no_carry_state=True)
    model = make_model(task).eval()
    batch = batches(task, "train")[3]
    with torch.no_grad():
        assert_close("--no-carry-state", model(**batch["net_input"])[0], model(batch["net_input"]["src_tokens"])[0], 0.0)
    assert len(model.decoder.carried) == 0


def test_resuming_continues_at_the_same_segment(data_bin):
    task = make_task(data_bin)
    epoch_itr = task.get_batch_iterator(task.dataset("train"))
    itr = epoch_itr.next_epoch_itr(shuffle=True)
    seen = [next(itr) for _ in range(4)]
    state = epoch_itr.state_dict()  # what checkpoint_last.pt stores

    resumed = task.get_batch_iterator(task.dataset("train"))
    resumed.load_state_dict(state)
    following = next(resumed.next_epoch_itr(shuffle=True))
    expected = batches(task, "train")[4]
    assert torch.equal(following["net_input"]["src_tokens"], expected["net_input"]["src_tokens"])
    assert not following["net_input"]["segment"].reset
    assert torch.equal(seen[3]["target"][:, -1], expected["net_input"]["src_tokens"][:, 0])  # contiguous streams


def test_billion_word_layout_shuffles_sentences_once_per_epoch(data_bin):
    task = make_task(data_bin, shuffle_sentences=True, prepend_eos=True)
    eos = task.dictionary.eos()
    epoch1, epoch1_again, epoch2 = task.split_tokens("train", 1), task.split_tokens("train", 1), task.split_tokens("train", 2)
    plain = task.datasets["train"].tokens
    assert (epoch1 == epoch1_again).all() and not (epoch1 == epoch2).all()
    n_sentences = len(task.datasets["train"].sizes)
    assert len(epoch1) == len(plain) + 1
    # </s> on both sides of every sentence, one between neighbours (the paper's <S> stream)
    assert epoch1[0] == eos and epoch1[-1] == eos and (epoch1 == eos).sum() == n_sentences + 1
    assert sorted(epoch1.tolist()) == sorted(plain.tolist() + [eos])
    valid = task.datasets["valid"]
    assert (task.split_tokens("valid", 1) == task.split_tokens("valid", 2)).all()  # evaluation order is fixed
    assert task.split_tokens("valid", 1)[: valid.sizes[0] + 1].tolist() == [eos] + valid.tokens[: valid.sizes[0]].tolist()


def test_evaluation_state_is_released_when_the_evaluation_ends(data_bin):
    task = make_task(data_bin)
    model = make_model(task).eval()
    train, valid = batches(task, "train"), batches(task, "valid")
    contexts = [b["net_input"]["segment"] for b in valid]
    assert [c.release for c in contexts] == [False] * (len(valid) - 1) + [True]
    assert contexts[0].mask == "same_length" and contexts[0].window == 12 and train[0]["net_input"]["segment"].mask == "causal"
    with torch.no_grad():
        model(**train[0]["net_input"])
        for i, batch in enumerate(valid):
            model(**batch["net_input"])
            if i == 0:
                assert sorted(model.decoder.carried.keys()) == ["train", "valid"]
    assert model.decoder.carried.keys() == ["train"]  # validation state freed, training state kept


def test_no_carry_state_passes_only_the_mask(data_bin):
    task = make_task(data_bin, no_carry_state=True)
    segment = batches(task, "valid")[1]["net_input"]["segment"]
    assert (segment.state, segment.reset, segment.release, segment.mask, segment.window) == (None, False, False,
                                                                                            "same_length", 12)


def test_segment_dataset_pickles_and_rebuilds_the_same_batches(data_bin):
    import pickle

    task = make_task(data_bin, shuffle_sentences=True, prepend_eos=True)
    dataset = task.segment_dataset("train", 3, 2, 1, training=True)
    dataset.set_epoch(2)
    blob = pickle.dumps(dataset)
    assert len(blob) < 3 * dataset.source.nbytes  # the stream blocks are rebuilt, not shipped
    copy = pickle.loads(blob)
    for i in (0, len(dataset) - 1):
        a, b = dataset[i], copy[i]
        assert torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
        assert torch.equal(a["target"], b["target"]) and a["net_input"]["segment"] == b["net_input"]["segment"]


def test_token_stream_items_are_the_sentences(data_bin):
    from fairseq.data import data_utils

    task = make_task(data_bin)
    stream = task.datasets["valid"]
    indexed = data_utils.load_indexed_dataset(str(data_bin / "valid"), task.dictionary)
    for i in (0, 1, len(stream) - 1):
        assert torch.equal(stream[i], indexed[i])
