"""Sample text from a trained ``srupp_lm`` across sentence ends: ``srupp-sample`` and :func:`stream_text`.

fairseq's generators end a hypothesis at the first ``</s>`` — for a byte-level model that is the
newline — so they never write a second line. Here decoding goes on for as many tokens as asked:
each step feeds only the newest token to the decoder, whose incremental state keeps ``c`` and the
last ``W`` keys/values per layer (``W`` = the model's ``eval_window``), so memory and time per step
stay constant however long the output. On a GPU each step replays one CUDA graph
(:class:`~fairseq_srupp.models.token_stepper.TokenStepper`).

The rule for one step, given the log-probabilities ``l`` (V,) of the next token:

* ``<s>``, ``<pad>``, ``<unk>`` and fairseq's ``madeupword`` fillers are never drawn (``</s>`` is);
* ``temperature == 0``: the most probable token (greedy);
* otherwise ``l / temperature``, then :func:`restrict` to the ``top_k`` most probable tokens
  (0: all), then to the nucleus of ``top_p`` (the smallest set of most probable tokens whose
  probability, renormalised after top-k, reaches ``top_p``), then one draw from the renormalised rest.

Text in and out: byte-level dictionaries (every ordinary symbol a decimal byte value, as
``--bpe srupp_bytes`` and ``data_scripts/prepare_char_text.py`` make them) read and write UTF-8 with
newline = ``</s>``; any other dictionary is word level: words separated by spaces, ``</s>`` = newline
(tokenized with the checkpoint's ``--tokenizer`` if it was trained with one, else split on spaces).
"""
import codecs
import logging
import math
from typing import Iterator, List, Optional

import torch

from fairseq_srupp.data.char_level import BYTE_TOKENS, NEWLINE, byte_value
from fairseq_srupp.errors import SRUppUserError
from fairseq_srupp.models.token_stepper import TokenStepper

logger = logging.getLogger(__name__)


def restrict(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scores (..., V) → the same with ``-inf`` outside top-k, then outside the top-p nucleus.

    Ties at the k-th score are all kept. The nucleus is computed on the softmax of the scores left
    after top-k; the token whose probability crosses ``top_p`` is kept.
    """
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # A token is dropped once the more probable tokens already reach top_p.
        dropped = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        scores = scores.masked_fill(dropped, -math.inf)
    return scores


def check_sampling_args(top_k: int, top_p: float, temperature: float) -> None:
    if top_k < 0:
        raise SRUppUserError("--top-k must be >= 0 (0 keeps every token), got {}".format(top_k))
    if not 0.0 < top_p <= 1.0:
        raise SRUppUserError("--top-p must be in (0, 1] (1 keeps every token), got {}".format(top_p))
    if temperature < 0 or not math.isfinite(temperature):
        raise SRUppUserError("--temperature must be >= 0 (0 = greedy), got {}".format(temperature))


def never_sampled(dictionary) -> List[int]:
    """Ids of the special symbols a sample must not contain (everything special but ``</s>``)."""
    specials = {dictionary.bos(), dictionary.pad(), dictionary.unk()}
    return [i for i, sym in enumerate(dictionary.symbols) if i in specials or sym.startswith("madeupword")]


def stream_tokens(model, prompt: List[int], num_tokens: int, top_k: int = 0, top_p: float = 1.0,
                  temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """An iterator over ``num_tokens`` token ids continuing ``prompt`` (ids, without a leading ``</s>``).

    ``model``: an ``SRUppLanguageModel`` (or its decoder) in eval mode. The decoder sees
    ``</s> prompt`` first, as fairseq's generators feed a prompt, then one token per step.
    The arguments and the decoding mode are checked here, before the first token is asked for, so that
    ``srupp-sample`` reports a mistake before it echoes the prompt.
    """
    check_sampling_args(top_k, top_p, temperature)
    decoder = getattr(model, "decoder", model)
    with torch.no_grad():
        stepper = TokenStepper(decoder, 1)  # on a GPU each step replays one CUDA graph
    return _sampled_tokens(decoder, stepper, prompt, num_tokens, top_k, top_p, temperature, generator)


@torch.no_grad()
def _sampled_tokens(decoder, stepper: TokenStepper, prompt: List[int], num_tokens: int, top_k: int, top_p: float,
                    temperature: float, generator: Optional[torch.Generator]) -> Iterator[int]:
    dictionary = decoder.dictionary
    banned = never_sampled(dictionary)
    device = next(decoder.parameters()).device
    output = None
    for _ in range(num_tokens):
        if output is None:
            output = stepper.prompt(torch.tensor([[dictionary.eos()] + list(prompt)], device=device))
        else:
            output = stepper.step(choice.view(1))  # the decoder has seen everything before it
        features = output.unsqueeze(1)  # (1, 1, V or d)
        lprobs = decoder.get_normalized_probs((features, None), log_probs=True)[0, -1].float()  # (V,)
        lprobs[banned] = -math.inf
        if temperature == 0:
            choice = lprobs.argmax().view(1)
        else:
            scores = restrict(lprobs / temperature, top_k, top_p)
            choice = torch.multinomial(scores.softmax(-1), 1, generator=generator)
        yield int(choice.item())


def is_byte_level(dictionary) -> bool:
    """Whether every ordinary symbol is a decimal byte value (a char-level, one-token-per-byte model)."""
    ordinary = [s for s in dictionary.symbols[dictionary.nspecial:] if not s.startswith("madeupword")]
    return bool(ordinary) and all(byte_value(s) is not None for s in ordinary)


class TextCodec:
    """Prompt text → token ids, and token ids → text pieces as they arrive (see the module docstring)."""

    def __init__(self, dictionary, tokenizer=None):
        self.dictionary = dictionary
        self.tokenizer = tokenizer
        self.byte_level = is_byte_level(dictionary)

    def encode(self, text: str) -> List[int]:
        """Prompt text → ids (newline → ``</s>``); warns once with the count of symbols read as ``<unk>``."""
        d = self.dictionary
        if self.byte_level:
            ids = [d.eos() if b == NEWLINE else d.index(BYTE_TOKENS[b]) for b in text.encode("utf-8")]
            unit = "byte"
        else:
            ids = []
            lines = text.split("\n")
            for i, line in enumerate(lines):
                if self.tokenizer is not None and line.strip():
                    line = self.tokenizer.encode(line)
                ids.extend(d.index(word) for word in line.split())
                if i < len(lines) - 1:
                    ids.append(d.eos())
            unit = "word"
        unknown = sum(1 for i in ids if i == d.unk())
        if unknown:
            logger.warning("%d %s(s) of the prompt are not in the model's dictionary and are read as <unk>",
                           unknown, unit)
        return ids

    def decoder(self, after: str = ""):
        """A function: token id → the text it adds (bytes of a UTF-8 character may wait for the rest), for tokens
        that continue the text ``after`` (the prompt): at word level the first word is spaced from it unless it is
        empty or ends in a newline or space."""
        d = self.dictionary
        if self.byte_level:
            utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
            return lambda token: utf8.decode(bytes([byte_value(d[token])]))  # </s> is the newline byte
        after_space = [after == "" or after[-1].isspace()]  # a line start counts: no space before its first word

        def word(token):
            if token == d.eos():
                after_space[0] = True
                return "\n"
            text = d[token] if after_space[0] else " " + d[token]
            after_space[0] = False
            return text

        return word


def set_window(model, window: Optional[int]) -> None:
    """Use attention window ``window`` (tokens before the current one) for incremental decoding."""
    if window is None:
        return
    if window < 1:
        raise SRUppUserError("--window must be >= 1 (tokens each new token attends to), got {}".format(window))
    getattr(model, "decoder", model).cfg.eval_window = int(window)


def stream_text(lm, prompt: str, num_tokens: int, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                seed: Optional[int] = None, window: Optional[int] = None) -> Iterator[str]:
    """The hub equivalent of ``srupp-sample``: yield the text of ``num_tokens`` sampled tokens after ``prompt``.

    ``lm``: what ``SRUppLanguageModel.from_pretrained`` returns (its tokenizer is used at word level).
    ``seed`` makes the draw reproducible; ``window`` changes the attention window for this call only.
    """
    model = lm.models[0]
    codec = TextCodec(lm.task.source_dictionary, getattr(lm, "tokenizer", None))
    prompt_ids = codec.encode(prompt)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    decoder = model.decoder
    saved_window = decoder.cfg.eval_window
    set_window(model, window)
    try:
        to_text = codec.decoder(after=prompt)
        for token in stream_tokens(model, prompt_ids, num_tokens, top_k, top_p, temperature, generator):
            yield to_text(token)
    finally:
        decoder.cfg.eval_window = saved_window
