"""benchmarks/gpu/step_profile.py: the kind of work each GPU kernel name counts as, the device's busy
time, and a real profile of srupp_lm's training step on the CPU whose parts add up."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))

import step_profile  # noqa: E402
import train_bench  # noqa: E402

# Kernel names as an H100 profile of this model shows them (torch 2.x, cuBLAS, CUTLASS, this project's NVRTC
# kernels, sru's), and CPU operator names.
NAMES = [
    ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off",
     "matmul"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>", "matmul"),
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel)", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k128_sm80(PyTorchMemEffAttention::AttentionBackwardKernel)", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
    ("void (anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, SoftMaxForwardEpilogue>",
     "attention"),
    ("void (anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, LogSoftMaxForwardEpilogue>", "loss"),
    ("void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>", "loss"),
    ("srupp_forward_bfloat16_float32_k3", "recurrence"), ("srupp_backward_float16_k4", "recurrence"),
    ("void sru_cuda_forward_kernel_simple<c10::Half>", "recurrence"),
    ("fairseq_srupp::elementwise_recurrence", "recurrence"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, true>", "layer_norm"),
    ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<float, float, 32, 32, 128>",
     "layer_norm"),
    ("void at::native::(anonymous namespace)::fused_dropout_kernel_vec<c10::BFloat16, float, unsigned int>",
     "dropout"),
    ("void at::native::(anonymous namespace)::bernoulli_tensor_cuda_kernel<float, float>", "dropout"),
    ("void at::native::multi_tensor_apply_kernel<at::native::TensorListMetadata<4>, RAdamFunctor>", "optimizer"),
    ("void at::native::amp_update_scale_cuda_kernel(float*, int*, float const*, double, double, int)", "optimizer"),
    ("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda(at::TensorIteratorBase&)>", "copy/cast"),
    ("Memcpy DtoD (Device -> Device)", "copy/cast"), ("Memset (Device)", "copy/cast"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::OpaqueType<2u>, unsigned int, 3, 64, 64>",
     "copy/cast"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::AUnaryFunctor<float, float, float, "
     "binary_internal::MulFunctor<float>>>", "elementwise/other"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::clamp_min_scalar_kernel_impl>",
     "elementwise/other"),
]


@pytest.mark.parametrize("name, expected", NAMES, ids=[e for _, e in NAMES])
def test_kernel_names_fall_into_their_kind_of_work(name, expected):
    assert step_profile.category(name) == expected


def test_busy_time_is_the_union_of_the_kernels_intervals():
    assert step_profile.busy_us([]) == 0
    assert step_profile.busy_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17  # overlaps count once
    assert step_profile.busy_us([(20, 25), (0, 10)]) == 15  # any order


def test_breakdown_per_step_shares_and_idle_time():
    work = [("nvjet_gemm", 0, 600), ("srupp_forward_bfloat16_k3", 600, 900), ("Memset (Device)", 950, 1000),
            ("nvjet_gemm", 1000, 1600), ("srupp_forward_bfloat16_k3", 1600, 1900), ("Memset (Device)", 1950, 2000)]
    out = step_profile.breakdown(work, steps=2, wall_ms=1.25, cuda=True)
    assert out["busy_ms_per_step"] == pytest.approx(0.95)
    assert out["idle_share"] == pytest.approx(1 - 0.95 / 1.25)
    assert out["calls_per_step"] == 3
    assert [(c["name"], c["ms_per_step"], c["calls_per_step"]) for c in out["categories"]] == [
        ("matmul", pytest.approx(0.6), 1), ("recurrence", pytest.approx(0.3), 1), ("copy/cast", pytest.approx(0.05), 1)]
    assert sum(c["share"] for c in out["categories"]) == pytest.approx(1)
    assert out["top"][0]["name"] == "nvjet_gemm"


def test_profile_of_srupp_lm_on_the_cpu_adds_up(tmp_path):
    from fairseq_srupp.bench.generation import write_dictionary

    args = train_bench.parse_args(["--device", "cpu", "--srupp", "32,16,2", "--batch", "2", "--length", "16"])
    write_dictionary(str(tmp_path), args.vocab)
    out = step_profile.profile_model("srupp_lm", "float32", args, str(tmp_path), torch.device("cpu"), steps=2,
                                     warmup=1)
    spent = {c["name"]: c for c in out["categories"]}
    assert spent["recurrence"]["calls_per_step"] >= 2  # one forward per layer at least
    assert spent["matmul"]["ms_per_step"] > 0 and spent["optimizer"]["ms_per_step"] > 0
    assert sum(c["ms_per_step"] for c in out["categories"]) == pytest.approx(out["busy_ms_per_step"])
    assert 0 < out["busy_ms_per_step"] <= out["wall_ms_per_step"]
    lines = step_profile.format_profile(out)
    assert lines[0].startswith("srupp_lm float32: ") and any(line.startswith("| recurrence |") for line in lines)


def test_gpu_work_is_the_device_events_without_annotations():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, device, start, end, annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation, is_async=False,
                               time_range=SimpleNamespace(start=start, end=end), self_cpu_time_total=end - start)

    events = [event("aten::mm", DeviceType.CPU, 0, 50), event("nvjet_gemm", DeviceType.CUDA, 10, 40),
              event("Optimizer.step#RAdam.step", DeviceType.CUDA, 0, 100, annotation=True),  # spans kernels
              event("srupp_forward_bfloat16_k3", DeviceType.CUDA, 40, 90), event("empty", DeviceType.CUDA, 95, 95)]
    assert step_profile.device_work(events, cuda=True) == [
        ("nvjet_gemm", 10, 40), ("srupp_forward_bfloat16_k3", 40, 90)]
    assert step_profile.device_work(events[:1], cuda=False) == [("aten::mm", 0.0, 50)]


def test_a_profile_without_events_is_a_reported_error(monkeypatch):
    args = train_bench.parse_args(["--device", "cpu", "--srupp", "32,16,1", "--batch", "1", "--length", "8"])
    monkeypatch.setattr(step_profile, "device_work", lambda events, cuda: [])  # as without CUPTI on a GPU
    partial = []
    out = step_profile.run(args, ["srupp_lm"], "float32", steps=1, on_result=partial.append)
    assert partial == [out]  # what the GPU kit saves after each model
    assert out["profiles"] == []
    assert out["errors"] == [{"model": "srupp_lm", "dtype": "float32",
                              "error": "RuntimeError: the profiler recorded no operators"}]
