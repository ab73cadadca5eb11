"""Analytic training FLOPs per token (forward + backward = 3 × forward; a multiply-add is 2 FLOPs).

A matrix of n parameters applied to one token costs 2n forward, 6n for training. Attention over S
keys with width p costs 2·2·p·S forward (scores and weighted sum), 12·p·S for training. S is the
average number of keys a query sees: (T+1)/2 for a causal block of T tokens, plus M memory positions.
SRU++ also projects its M memory rows with W1 and W2 at every step (keys and values with the current
weights): W2 costs 6n per row (its input gradient carries W1's), W1 4n (the memory is detached: no
input gradient), i.e. (4·d_in·p + 6·2p²)·M/T per token and attention layer. Embedding lookups,
softmax, layer norms and other elementwise work are left out except the SRU recurrence (about 15
FLOPs per unit forward, 30 backward), which is small but is the model's core. ``tests/test_flops.py``
checks the matrix products against PyTorch's FLOP counter on real training steps.
"""


def srupp_flops_per_token(hidden, proj, layers, vocab, tokens_per_sample, attention_every_n_layers=1,
                          memory=None, input_size=None):
    d, p, T = hidden, proj, tokens_per_sample
    m = T if memory is None else memory  # training carries the previous segment as memory
    keys = m + (T + 1) / 2
    total = 6 * d * vocab  # output layer
    for i in range(layers):
        d_in = (input_size or d) if i == 0 else d
        k = 3 if d_in == d else 4
        if (i + 1) % attention_every_n_layers == 0:
            total += 6 * (d_in * p + p * 2 * p + p * k * d) + 12 * p * keys
            total += (4 * d_in * p + 6 * p * 2 * p) * m / T  # the memory rows' W1 and W2
        else:
            total += 6 * (d_in * p + p * k * d)
        total += 45 * d  # elementwise recurrence, forward + backward
    return total


def transformer_flops_per_token(dim, ffn_dim, layers, vocab, tokens_per_sample):
    keys = (tokens_per_sample + 1) / 2
    per_layer = 6 * (4 * dim * dim + 2 * dim * ffn_dim) + 12 * dim * keys
    return layers * per_layer + 6 * dim * vocab
