"""What every converter of the paper's ``Model`` state dicts (spec §5) shares.

* :func:`strip_wrappers` unwraps ``{'model': ...}`` / ``{'state_dict': ...}`` and DDP's ``module.``.
* :func:`infer_rnn_config` reads the SRU++ stack's sizes and flags off the ``rnn.rnn_lst.{i}.*`` keys
  (the names of ``sru.SRUpp``, which are also ``decoder.srupp.rnn_lst.{i}.*`` in ``srupp_lm``).
* :func:`check_against_model` builds the converted ``srupp_lm`` on the meta device (no memory, no
  initialisation) and compares names and shapes, so a converted checkpoint that would not load is
  reported at conversion time, in the paper's key names.
"""
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor

from fairseq_srupp.data.vocab import first_dictionary_problem
from fairseq_srupp.errors import SRUppUserError

# exp(-1e4) underflows to 0 in fp32, and -1e4 still fits in fp16: the output bias of symbols the
# paper model has no row for, so that they take no probability mass.
NO_PROBABILITY = -10000.0

RNN_PREFIX = "rnn."
FAIRSEQ_RNN_PREFIX = "decoder.srupp."


def strip_wrappers(state: Dict) -> Dict[str, Tensor]:
    """Accept a bare state dict, {'model': sd} / {'state_dict': sd}, and DDP's 'module.' prefixes."""
    for key in ("model", "state_dict"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


PAPER_TOP_LEVEL = ("embedding_layer.", "rnn.", "output_layer.")
EXPECTED = ("expected the state dict the paper's train_*.py saves (tensors named embedding_layer.*, "
            "rnn.rnn_lst.{i}.*, output_layer.*)")


def _refused_load(path: Path, err: Exception) -> SRUppUserError:
    """Say what a file torch.load(weights_only=True) cannot read is, without unpickling it."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            legacy = f.read(2) == b"\x80\x02"  # torch.save's format before 1.6: a bare pickle
        if legacy:
            return SRUppUserError("{} (an old-format torch file) holds Python objects besides tensors or is "
                                  "damaged; torch.load(weights_only=True) refused it: {}".format(path, EXPECTED))
        return SRUppUserError("{} is not a file torch.save wrote (torch.load cannot read it): {}".format(
            path, EXPECTED))
    with zipfile.ZipFile(path) as zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        record = zf.read(pickles[0]) if pickles else b""
    if b"optimizer_history" in record:  # every checkpoint fairseq's trainer writes holds it
        return SRUppUserError("{} is a fairseq training checkpoint, not the paper's state dict: it needs no "
                              "conversion (give it to fairseq's tools with --path); {}".format(path, EXPECTED))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return SRUppUserError("{} holds Python objects besides tensors ({}), which are not loaded for safety: {}".format(
        path, found.group(1) if found else "torch.load(weights_only=True) refused it", EXPECTED))


def load_paper_state(path) -> Dict[str, Tensor]:
    """``torch.load`` a paper state dict on the CPU (tensors only) and unwrap it.

    Anything else (a fairseq checkpoint, a file of other tensors, a text file) is refused with a
    :class:`SRUppUserError` saying what was expected and what was found.
    """
    path = Path(path)
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError) as err:
        raise _refused_load(path, err) from None
    if not isinstance(loaded, dict):
        raise SRUppUserError("{} holds a {}, not a dict of tensors: {}".format(path, type(loaded).__name__, EXPECTED))
    if "model" in loaded and ("cfg" in loaded or "args" in loaded):
        raise SRUppUserError("{} is a fairseq checkpoint (keys {}), not the paper's state dict: it needs no "
                             "conversion (give it to fairseq's tools with --path); {}".format(
                                 path, ", ".join(sorted(loaded)[:6]), EXPECTED))
    state = strip_wrappers(loaded)
    ours = [k for k in state if k.startswith(PAPER_TOP_LEVEL)]
    if not ours or not all(isinstance(state[k], Tensor) for k in ours):
        names = sorted(state)
        if names and all(k.startswith("decoder.") for k in names):
            raise SRUppUserError("{} is the state dict of a fairseq model (keys decoder.*), not the paper's: {}".format(
                path, EXPECTED))
        shown = ", ".join(names[:5]) + (", ... ({} keys)".format(len(names)) if len(names) > 5 else "")
        raise SRUppUserError("{} holds no tensor of the paper's Model (its keys: {}): {}".format(
            path, shown or "none", EXPECTED))
    return state


def infer_rnn_config(paper_state: Mapping[str, Tensor]) -> Dict[str, object]:
    """Sizes and flags of the SRU++ stack under ``rnn.``: the ``srupp_lm`` options they set.

    ``hidden_size`` is read from the first layer's ``weight_c`` (2·d values); the language models
    need input size == hidden size, which :func:`check_against_model` verifies.
    """
    layers = sorted({int(k.split(".")[2]) for k in paper_state if k.startswith("rnn.rnn_lst.")})
    if layers != list(range(len(layers))) or not layers:
        raise ValueError("state dict has no consecutive rnn.rnn_lst.{i} layers")
    attention = [("rnn.rnn_lst.{}.transform_module.linear3.weight".format(i) in paper_state) for i in layers]
    every = attention.index(True) + 1 if any(attention) else len(layers) + 1
    expected = [(i + 1) % every == 0 for i in layers]
    if attention != expected:
        raise ValueError(
            "attention layers {} do not follow an every-n-layers pattern".format(
                [i for i, a in enumerate(attention) if a]
            )
        )
    for key in ("rnn.rnn_lst.0.transform_module.linear1.weight", "rnn.rnn_lst.0.weight_c"):
        if key not in paper_state:
            raise ValueError("missing key in the paper state dict: {}".format(key))
    return dict(
        hidden_size=paper_state["rnn.rnn_lst.0.weight_c"].shape[0] // 2,
        proj_size=paper_state["rnn.rnn_lst.0.transform_module.linear1.weight"].shape[0],
        num_layers=len(layers),
        attention_every_n_layers=every,
        no_layer_norm="rnn.rnn_lst.0.layer_norm.weight" not in paper_state,
        no_attn_layer_norm="rnn.rnn_lst.0.transform_module.layer_norm.weight" not in paper_state,
    )


def rename_rnn_key(key: str) -> str:
    """``rnn.X`` → ``decoder.srupp.X`` (the layers' own names are the same)."""
    return FAIRSEQ_RNN_PREFIX + key[len(RNN_PREFIX):]


def paper_name(fairseq_key: str, origins: Optional[Mapping[str, str]] = None) -> str:
    """The paper key a converted key came from (for error messages)."""
    if origins is not None and fairseq_key in origins:
        return origins[fairseq_key]
    if fairseq_key.startswith(FAIRSEQ_RNN_PREFIX):
        return RNN_PREFIX + fairseq_key[len(FAIRSEQ_RNN_PREFIX):]
    return fairseq_key


def check_against_model(
    cfg, symbols: Sequence[str], state: Mapping[str, Tensor], origins: Optional[Mapping[str, str]] = None
) -> None:
    """Raise ValueError unless ``state`` loads strictly into the ``srupp_lm`` that ``cfg`` builds.

    The model is built on the meta device, so this costs neither memory nor time at full size.
    ``origins`` maps converted keys to the paper keys they came from, for the messages.
    """
    from fairseq.data import Dictionary

    from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLanguageModel

    dictionary = Dictionary()
    for symbol in symbols[dictionary.nspecial:]:
        dictionary.add_symbol(symbol)
    if dictionary.symbols != list(symbols):
        raise ValueError("internal error: the converted vocabulary does not start with fairseq's special symbols")
    with torch.device("meta"):
        expected = SRUppLanguageModel(SRUppDecoder(cfg.model, dictionary)).state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(
            "missing key(s) in the paper state dict: {} (is it a complete checkpoint of the paper's Model?)".format(
                ", ".join(paper_name(k, origins) for k in missing[:10])
            )
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ValueError(
            "unexpected key(s) in the paper state dict: {}".format(
                ", ".join(paper_name(k, origins) for k in unexpected[:10])
            )
        )
    wrong = [
        "{} {} (expected {})".format(paper_name(k, origins), tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError("shape mismatch: {}".format("; ".join(wrong[:10])))


def check_num_heads(num_heads: int, proj_size: int) -> None:
    """The converter's ``--num-heads`` against the attention width read off the state dict.

    The model's own check names ``--proj-size``, a training flag the converter does not have: here
    the width is the checkpoint's, and only ``--num-heads`` can change.
    """
    if num_heads < 1:
        raise SRUppUserError("--num-heads must be a positive integer, got {}".format(num_heads))
    if proj_size % num_heads:
        divisors = [h for h in range(1, proj_size + 1) if proj_size % h == 0]
        raise SRUppUserError(
            "--num-heads {} does not divide the checkpoint's attention width {} (the rows of "
            "rnn.rnn_lst.0.transform_module.linear1.weight): pass a --num-heads among {} (the paper's models "
            "use 1, the default)".format(num_heads, proj_size, ", ".join(map(str, divisors))))


def load_fairseq_dictionary(path, option: str = "--dict"):
    """``fairseq.data.Dictionary.load(path)``, with a malformed file refused in one line naming
    ``option``, the file and its first bad line (fairseq's own message spans lines and names
    neither, or is a bare ``Exception`` / ``RuntimeError`` with a traceback)."""
    from fairseq.data import Dictionary

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise SRUppUserError("{} {} is not UTF-8 text (byte 0x{:02x} on line {}): give the dict.txt of the "
                             "fairseq-binarized data".format(option, path, err.object[err.start], line)) from None
    bad = first_dictionary_problem(io.StringIO(text, newline=None).readlines())  # fairseq's line splitting
    if bad is not None:
        number, line, why = bad
        line = line.rstrip("\n")
        shown = line if len(line) <= 60 else line[:57] + "..."
        raise SRUppUserError("{} {} line {} ({!r}): {}: give the dict.txt of the fairseq-binarized data".format(
            option, path, number, shown, why))
    return Dictionary.load(str(path))
