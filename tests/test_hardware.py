"""Device, dtype and compile choices are explained, and wrong requests are refused clearly."""
import pytest

import hardware


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
        with pytest.raises(ValueError, match="torch sees no CUDA GPU .* use --device=cpu"):
            hardware.pick_device("cuda")


def test_peak_memory_reports_the_process_rss_on_cpu():
    gib, kind = hardware.peak_memory("cpu")
    assert kind == "rss" and 0.01 < gib < 64
