"""Device, dtype and compile choices are explained, wrong requests are refused clearly; MFU and memory."""
import os

import pytest

from fineweb_gpt import hardware


def test_cpu_defaults_are_fp32_and_eager_with_reasons():
    assert hardware.pick_device("cpu") == ("cpu", "as requested")
    dtype, reason = hardware.pick_dtype("auto", "cpu")
    assert dtype == "float32" and "cpu" in reason
    use, reason = hardware.pick_compile(None, "cpu")
    assert use is False and "--compile=True forces it" in reason
    assert hardware.pick_compile(True, "cpu")[0] is True
    assert hardware.pick_compile(False, "cuda") == (False, "compile=False")


def test_bad_requests_say_what_to_do():
    with pytest.raises(ValueError, match="dtype must be one of"):
        hardware.pick_dtype("fp8", "cpu")
    if not hardware.torch.cuda.is_available():
        with pytest.raises(hardware.DeviceError, match="torch sees no CUDA GPU .* use --device=cpu"):
            hardware.pick_device("cuda")


def test_peak_memory_reports_the_process_rss_on_cpu():
    status = "/proc/self/status"
    if not os.path.exists(status):
        pytest.skip("needs Linux's /proc/self/status to read the peak RSS independently")
    gib, kind = hardware.peak_memory("cpu")
    with open(status) as f:  # VmHWM: the kernel's own peak resident set size, in kB
        hwm_gib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
    assert kind == "rss" and gib == pytest.approx(hwm_gib, abs=0.01)  # same quantity, same unit (GiB)


def test_mfu_needs_a_known_peak():
    assert hardware.mfu(5e12, "cpu") is None  # no CPU peak is guessed
    assert hardware.mfu(5e12, "cpu", override_tflops=10.0) == pytest.approx(0.5)
    assert hardware.mfu(5e12, "cpu", override_tflops=10.0, world_size=2) == pytest.approx(0.25)


def test_mfu_table_and_unknown_devices():
    assert hardware.peak_tflops("NVIDIA GeForce RTX 4070") == 58.3
    assert hardware.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert hardware.peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert hardware.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert hardware.peak_tflops("NVIDIA H200") == 989.4
    for unknown in ("NVIDIA GeForce RTX 4070 Ti", "NVIDIA GeForce RTX 4090 Laptop GPU", "cpu", "NVIDIA A10G"):
        assert hardware.peak_tflops(unknown) is None


@pytest.mark.parametrize("capability, dtype", [((7, 5), "float16"), ((7, 0), "float16"), ((8, 0), "bfloat16"),
                                               ((8, 9), "bfloat16"), ((9, 0), "bfloat16")])
def test_auto_dtype_is_bf16_only_where_the_chosen_gpu_computes_it(monkeypatch, capability, dtype):
    asked = []
    monkeypatch.setattr(hardware.torch.cuda, "get_device_capability", lambda d: asked.append(str(d)) or capability)
    monkeypatch.setattr(hardware.torch.cuda, "get_device_name", lambda d: "a simulated GPU")
    assert hardware.pick_dtype("auto", "cuda:1")[0] == dtype
    assert asked and all(d == "cuda:1" for d in asked)  # the chosen GPU, not the current one
    ns_dtype = hardware.pick_newton_schulz_dtype("auto", "cuda:1")[0]
    assert ns_dtype == (hardware.torch.bfloat16 if dtype == "bfloat16" else hardware.torch.float32)
    if dtype == "float16":  # asked for anyway: allowed, with the reason it is slow
        assert "emulates bf16" in hardware.pick_dtype("bfloat16", "cuda:1")[1]


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_bf16"}, True), (set(), False)])
def test_cpu_bf16_is_native_only_with_the_instructions(monkeypatch, flags, native):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert hardware.native_bf16("cpu") is native
    assert hardware.pick_newton_schulz_dtype("auto", "cpu")[0] == (hardware.torch.bfloat16 if native else hardware.torch.float32)
    assert hardware.pick_newton_schulz_dtype("float32", "cpu")[0] == hardware.torch.float32  # the key forces it
    assert hardware.pick_dtype("auto", "cpu")[0] == "float32"


def test_a_gpu_torch_cannot_use_is_named_with_the_fix(monkeypatch):
    import subprocess
    hardware.unseen_gpu.cache_clear()
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware.torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(hardware.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout="GPU 0: NVIDIA GeForce RTX 4070 (UUID: GPU-1234)\n"))
    monkeypatch.setattr(hardware.torch.version, "cuda", None)
    try:
        device, reason = hardware.pick_device("auto")
        assert device == "cpu" and "WARNING" in reason and "GPU 0: NVIDIA GeForce RTX 4070" in reason
        assert "CPU-only build" in reason and "pip install torch --index-url" in reason
    finally:
        hardware.unseen_gpu.cache_clear()
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)  # no nvidia-smi: nothing to say
    assert hardware.pick_device("auto") == ("cpu", "no GPU found")
    hardware.unseen_gpu.cache_clear()


def test_h100_nvl_has_its_own_peak():
    assert hardware.peak_tflops("NVIDIA H100 NVL") == 835.5
