"""fairseq's ``FP16Optimizer`` around ``--optimizer radam``, made as ``fairseq-train --fp16`` / ``--bf16`` makes it
(for the GPU kit's ``srupp_lm_half`` and the tests of :mod:`fairseq_srupp.optim.batched_update`)."""
import torch


def fp16_optimizer(params, dtype: torch.dtype, flatten: bool, lr: float = 3e-4, weight_decay: float = 0.1):
    """``FP16Optimizer`` over the half-precision ``params`` (``dtype`` float16: loss scaling from fairseq's 128;
    bfloat16: none), with one flat fp32 copy of them if ``flatten`` (fairseq places it on the current CUDA
    device) else one per parameter, and RAdam (the plugin's fused one) updating the copies."""
    from fairseq.optim.fp16_optimizer import FP16Optimizer
    from omegaconf import OmegaConf

    import fairseq_srupp.optim  # noqa: F401  (registers --optimizer radam)

    cfg = OmegaConf.create({
        "common": {"fp16": dtype == torch.float16, "bf16": dtype == torch.bfloat16, "fp16_init_scale": 128,
                   "fp16_scale_window": None, "fp16_scale_tolerance": 0.0, "threshold_loss_scale": None,
                   "min_loss_scale": 1e-4, "fp16_no_flatten_grads": not flatten, "model_parallel_size": 1},
        "distributed_training": {"distributed_world_size": 1},
        "optimization": {"update_freq": [1], "lr": [lr]},
        "optimizer": {"_name": "radam", "lr": [lr], "radam_betas": [0.9, 0.999], "radam_eps": 1e-8,
                      "weight_decay": weight_decay, "radam_unfused": False}})
    return FP16Optimizer.build_optimizer(cfg, params)
