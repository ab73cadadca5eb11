"""GPU benchmark of the SRU++ recurrence and of full-model training (needs CUDA, CuPy; sru optional).

1. The elementwise recurrence, forward + backward (gradients of U, x, weight_c, bias, c0 with random
   upstream gradients), at the enwik8 base shapes L=1024, d=3072, B in --batches, for:
   * ``cuda``: this package's CuPy kernel (``elementwise_recurrence_cuda``);
   * ``sru``: ``sru==3.0.0.dev6``'s own CUDA kernel (``sru.ops.elementwise_recurrence_gpu``), if importable;
   * ``reference``: the pure-PyTorch loop (skipped with --skip-reference; it is slow).
   Prints ms per call, the kernel's achieved memory bandwidth (bytes the kernels must move / time)
   as a fraction of --peak-gbs (H200: 4800 GB/s), and the ratios cuda/sru and cuda/reference.
2. Training tokens/s of ``srupp_lm`` (enwik8 base, 107.6M) against fairseq's ``transformer_lm`` with
   about the same parameter count (--transformer-layers x 1024 wide), bf16 autocast, one optimizer
   step per batch of --model-batch x --model-length tokens; prints tokens/s and the ratio.

Run on a GPU machine:  python benchmarks/recurrence_cuda.py [--dtype bfloat16] [--batches 4 8 16 32]
"""
import argparse
import statistics
import warnings

import torch

from fairseq_srupp.ops.recurrence import elementwise_recurrence_cuda, elementwise_recurrence_ref

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cuda_time_ms(fn, warmup, repeats):
    """Median milliseconds of ``fn`` measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sru_recurrence():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sru.ops import elementwise_recurrence_gpu
    except Exception as err:  # sru missing, or its CUDA build failed
        print("sru's CUDA kernel unavailable: {}".format(err))
        return None

    def run(U, x, weight_c, bias, c0):
        return elementwise_recurrence_gpu(U, x, weight_c, bias, c0, 0, c0.shape[1], False, True, None, None, None)

    return run


def recurrence_step(fn, inputs, grads):
    def step():
        leaves = [t.detach().requires_grad_() for t in inputs]
        h, c = fn(*leaves)
        torch.autograd.backward([h, c], [grads[0].to(h.dtype), grads[1].to(c.dtype)])
    return step


def kernel_bytes(L, B, d, k, elem):
    """Bytes the forward and backward kernels must move (per-position tensors only)."""
    per_pos = L * B * d
    forward = per_pos * (k * elem + elem + elem + 4)  # read U, x; write h, c (fp32)
    backward = per_pos * (k * elem + elem + 4 + elem + k * elem + elem)  # read U, x, c, grad_h; write grad_U, grad_x
    return forward + backward


def bench_recurrence(args):
    dtype = DTYPES[args.dtype]
    sru_fn = sru_recurrence()
    L, d, k = args.length, args.hidden, 3
    print("\n== recurrence fwd+bwd, L={} d={} k=3 dtype={} ==".format(L, d, args.dtype))
    print("{:>4} {:>10} {:>10} {:>12} {:>9} {:>9} {:>9}".format("B", "cuda ms", "sru ms", "reference ms",
                                                                   "GB/s", "of peak", "cuda/sru"))
    for B in args.batches:
        dev = torch.device("cuda")
        inputs = [torch.randn(L, B, d * k, device=dev, dtype=dtype), torch.randn(L, B, d, device=dev, dtype=dtype),
                  torch.rand(2 * d, device=dev) * 2 - 1, torch.randn(2 * d, device=dev), torch.zeros(B, d, device=dev)]
        grads = (torch.randn(L, B, d, device=dev), torch.randn(B, d, device=dev))
        ours = cuda_time_ms(recurrence_step(elementwise_recurrence_cuda, inputs, grads), 3, args.repeats)
        theirs = None
        if sru_fn is not None:
            fp32 = [t.float() for t in inputs]  # sru's kernel computes in fp32 unless amp_recurrence_fp16
            theirs = cuda_time_ms(recurrence_step(sru_fn, fp32, grads), 3, args.repeats)
        ref = None if args.skip_reference else cuda_time_ms(recurrence_step(elementwise_recurrence_ref, inputs, grads), 1, 3)
        gbs = kernel_bytes(L, B, d, k, inputs[0].element_size()) / (ours * 1e-3) / 1e9
        print("{:>4} {:>10.3f} {:>10} {:>12} {:>9.0f} {:>8.1%} {:>9}".format(
            B, ours, "-" if theirs is None else "{:.3f}".format(theirs), "-" if ref is None else "{:.1f}".format(ref),
            gbs, gbs / args.peak_gbs, "-" if theirs is None else "{:.2f}x".format(theirs / ours)))


def build_models(args):
    from argparse import Namespace

    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

    from fairseq_srupp.models.srupp_lm import SRUppDecoder, SRUppLMConfig

    class Vocab(list):
        def pad(self):
            return 1

        def unk(self):
            return 3

        def eos(self):
            return 2

    vocab = Vocab(str(i) for i in range(args.vocab))
    srupp = SRUppDecoder(SRUppLMConfig(), vocab)
    ns = Namespace(decoder_layers=args.transformer_layers, decoder_embed_dim=1024, decoder_ffn_embed_dim=4096,
                   decoder_attention_heads=16, tokens_per_sample=args.model_length, max_target_positions=args.model_length)
    ARCH_CONFIG_REGISTRY["transformer_lm"](ns)
    task = Namespace(source_dictionary=vocab, target_dictionary=vocab)
    transformer = TransformerLanguageModel.build_model(TransformerLanguageModelConfig.from_namespace(ns), task).decoder
    return {"srupp_lm (enwik8 base)": srupp, "transformer_lm": transformer}


def bench_models(args):
    print("\n== training tokens/s, batch {} x {} tokens, bf16 autocast ==".format(args.model_batch, args.model_length))
    results = {}
    for name, model in build_models(args).items():
        model = model.cuda().train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.randint(4, args.vocab, (args.model_batch, args.model_length + 1), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(tokens[:, :-1])[0]
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        ms = cuda_time_ms(step, 3, args.repeats)
        tps = args.model_batch * args.model_length / (ms * 1e-3)
        flops = 6 * params * tps
        results[name] = tps
        print("{:<24} {:>7.1f}M params {:>10,.0f} tokens/s  {:>6.1f} TFLOP/s (6N)  peak {:.1f} GiB".format(
            name, params / 1e6, tps, flops / 1e12, torch.cuda.max_memory_allocated() / 2**30))
    names = list(results)
    print("srupp_lm / transformer_lm training tokens/s: {:.2f}x".format(results[names[0]] / results[names[1]]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--peak-gbs", type=float, default=4800.0, help="GPU memory bandwidth (H200: 4800)")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--vocab", type=int, default=208)
    parser.add_argument("--model-batch", type=int, default=4)
    parser.add_argument("--model-length", type=int, default=1024)
    parser.add_argument("--transformer-layers", type=int, default=8, help="8 x 1024 wide is about 101M parameters")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU")
    print("GPU: {}".format(torch.cuda.get_device_name()))
    bench_recurrence(args)
    if not args.skip_models:
        bench_models(args)


if __name__ == "__main__":
    main()
