"""Device detection, the CPU matmul probe and its cache, NVML energy (faked), and ledger_for."""

import json
import sys
import types

import pytest
import torch

from r1kit.cost import devices
from r1kit.cost.devices import NvmlEnergy, cpu_peak_flops, detect_device, gpu_kind, ledger_for


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_cpu_detected():
    assert detect_device() == ("cpu", torch.get_num_threads())


@pytest.mark.parametrize(
    "name,kind",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H800", "H800"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA B200", "B200"),
        ("Tesla T4", "Tesla T4"),
    ],
)
def test_gpu_kind(name, kind):
    assert gpu_kind(name) == kind


def test_cpu_probe_is_plausible_and_cached(tmp_path, monkeypatch):
    peak = cpu_peak_flops(tmp_path, seconds=0.3, size=512)
    assert 1e8 < peak < 1e14  # 0.1 GFLOP/s (a busy VM) to 100 TFLOP/s (a big AMX server)
    cache = json.loads((tmp_path / devices.CPU_PEAK_FILE).read_text())
    assert list(cache.values()) == [peak] and f"threads={torch.get_num_threads()}|fp32" in next(iter(cache))

    def no_probe(*args, **kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(devices, "measure_matmul_flops", no_probe)
    assert cpu_peak_flops(tmp_path) == peak
    # a probe on a busy machine reads low: a refresh keeps the best value seen, and takes a better one
    monkeypatch.setattr(devices, "measure_matmul_flops", lambda *a: 123.0)
    assert cpu_peak_flops(tmp_path, refresh=True) == peak and cpu_peak_flops(tmp_path) == peak
    monkeypatch.setattr(devices, "measure_matmul_flops", lambda *a: peak * 2)
    assert cpu_peak_flops(tmp_path, refresh=True) == peak * 2 and cpu_peak_flops(tmp_path) == peak * 2


def fake_pynvml(millijoules):
    handles = list(range(len(millijoules)))
    return types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: len(handles),
        nvmlDeviceGetHandleByIndex=lambda i: handles[i],
        nvmlDeviceGetTotalEnergyConsumption=lambda h: millijoules[h],
    )


def test_nvml_energy(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([1500, 2500, 4000]))
    assert NvmlEnergy().read_j() == 8.0 and NvmlEnergy([2]).read_j() == 4.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert NvmlEnergy().read_j() == 5.5
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert not NvmlEnergy().available and NvmlEnergy().read_j() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_ledger_for_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("R1KIT_PRICE_PER_HOUR", raising=False)
    monkeypatch.delenv("R1KIT_PRICE_CPU", raising=False)
    peak = cpu_peak_flops(tmp_path, seconds=0.3, size=512)
    threads = torch.get_num_threads()
    ledger = ledger_for(tmp_path / "run", "rl", cache_dir=tmp_path)
    assert (ledger.device_kind, ledger.device_count) == ("cpu", threads)
    assert ledger.peak_flops == pytest.approx(peak / threads)
    assert ledger.price_per_hour == 0.04 and ledger.power_w == 5.0 and ledger.energy_meter is None
    rec = ledger.record("rollout", 3600.0, flops=peak * 1800)
    assert rec["mfu"] == pytest.approx(0.5) and rec["usd"] == pytest.approx(0.04 * threads)
    assert (tmp_path / "run" / "ledger.jsonl").exists()
    assert ledger_for(tmp_path / "run", "rl", price_override=1.5, cache_dir=tmp_path).price_per_hour == 1.5


def test_ledger_for_gpu_uses_table_and_nvml(tmp_path, monkeypatch):
    monkeypatch.delenv("R1KIT_PRICE_PER_HOUR", raising=False)
    monkeypatch.delenv("R1KIT_PRICE_H800", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "detect_device", lambda: ("H800", 2))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([1000, 1000]))
    ledger = ledger_for(tmp_path, "rl")
    assert ledger.peak_flops == 989.4e12 and ledger.price_per_hour == 2.0 and ledger.power_w == 700.0
    assert ledger.energy_meter() == 2.0
