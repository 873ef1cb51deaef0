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
