"""Stream tokens from a trained ``srupp_lm`` with incremental decoding, across sentence ends.

fairseq's generators stop a hypothesis at ``</s>``; for a byte-level model ``</s>`` is just the
newline byte, so :func:`stream_tokens` keeps going for as many tokens as asked, in constant memory
per token (the decoder keeps only c and the last ``eval_window`` keys/values per layer).
"""
from typing import Iterator, List

import torch


@torch.no_grad()
def stream_tokens(model, prompt: List[int], num_tokens: int, top_k: int = 10, temperature: float = 1.0,
                  generator: torch.Generator = None) -> Iterator[int]:
    """Yield ``num_tokens`` sampled token ids continuing ``prompt`` (ids, without a leading ``</s>``).

    Special symbols other than ``</s>`` (``<s>``, ``<pad>``, ``<unk>``, fairseq's padding words) are
    never sampled. ``model``: an ``SRUppLanguageModel`` (or its decoder) in eval mode.
    """
    decoder = getattr(model, "decoder", model)
    dictionary = decoder.dictionary
    banned = [i for i, sym in enumerate(dictionary.symbols)
              if i in (dictionary.bos(), dictionary.pad(), dictionary.unk()) or sym.startswith("madeupword")]
    device = next(decoder.parameters()).device
    state = {}
    inputs = torch.tensor([[dictionary.eos()] + list(prompt)], device=device)  # (1, T)
    for _ in range(num_tokens):
        features = decoder(inputs, incremental_state=state)
        lprobs = decoder.get_normalized_probs((features[0][:, -1:], None), log_probs=True)[0, -1]  # (V,)
        lprobs[banned] = -float("inf")
        scores, candidates = (lprobs / temperature).topk(min(top_k, lprobs.numel()))
        choice = candidates[torch.multinomial(scores.softmax(-1), 1, generator=generator)]
        token = int(choice.item())
        yield token
        inputs = choice.view(1, 1)  # the decoder consumes only the newest token
