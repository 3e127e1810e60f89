"""Device classes: every shipped config validates, detection from the hardware's own files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.device_class import Probe, detect_device_class, load_device_class, probe_hardware
from edgefleet.agent.runtimes import KNOWN_RUNTIMES
from edgefleet.common.errors import ConfigError
from edgefleet.firmware_configs import CONFIG_DIR, shipped_classes

REQUIRED = {"jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx", "rpi5", "rpi4", "x86-gateway"}


def test_every_required_class_ships_and_validates() -> None:
    assert set(shipped_classes()) >= REQUIRED
    known = KNOWN_RUNTIMES
    for name in shipped_classes():
        chain = load_device_class(name).runtime.chain
        assert set(chain) <= known, f"{name}: chain names unknown runtimes {set(chain) - known}"
        assert "onnxruntime-cpu" in chain, f"{name}: no CPU fallback"


def test_a_broken_class_file_names_key_path_value_and_reason(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "rpi4.toml").read_text().replace("max_batch_size = 4", "max_batch_size = 0")
    text = text.replace("[thermal]", "[thermal]\nfan = true")
    (tmp_path / "rpi4.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_device_class("rpi4", tmp_path)
    problems = "\n".join(info.value.problems)
    assert "batching.max_batch_size (value 0)" in problems
    assert "thermal.fan" in problems
    with pytest.raises(ConfigError, match="unknown device class 'nope'; known: rpi4"):
        load_device_class("nope", tmp_path)


def _root(tmp_path: Path, model: str | None, tegra: str | None = None) -> Path:
    root = tmp_path / "root"
    if model is not None:
        (root / "proc" / "device-tree").mkdir(parents=True)
        (root / "proc" / "device-tree" / "model").write_text(model + "\x00")
    if tegra is not None:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "nv_tegra_release").write_text(tegra)
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(
    ("arch", "model", "tegra", "expected"),
    [
        ("aarch64", "NVIDIA Jetson Orin Nano Developer Kit", "# R36 (release), REVISION: 4.0", "jetson-orin-nano"),
        ("aarch64", "Jetson AGX Orin Developer Kit", "# R36 (release), REVISION: 3.0", "jetson-agx-orin"),
        ("aarch64", "NVIDIA Jetson Xavier NX Developer Kit", "# R35 (release), REVISION: 5.0", "jetson-xavier-nx"),
        ("aarch64", "Raspberry Pi 5 Model B Rev 1.0", None, "rpi5"),
        ("aarch64", "Raspberry Pi 4 Model B Rev 1.4", None, "rpi4"),
        ("x86_64", None, None, "x86-gateway"),
        ("aarch64", "Some Unknown Board", None, None),
        ("aarch64", "NVIDIA Jetson Xavier NX Developer Kit", "# R32 (release)", None),
    ],
)
def test_detection_reads_device_tree_and_tegra_release(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arch: str,
    model: str | None,
    tegra: str | None,
    expected: str | None,
) -> None:
    # platform.machine() is the one input a test cannot set up with files.
    monkeypatch.setattr("edgefleet.agent.device_class.platform.machine", lambda: arch)
    probe = probe_hardware(_root(tmp_path, model, tegra))
    assert probe.device_tree_model == model
    assert detect_device_class(probe) == expected


def test_this_machine_is_detected() -> None:
    probe = probe_hardware()
    assert isinstance(probe, Probe)
    if probe.arch == "x86_64" and probe.device_tree_model is None:
        assert detect_device_class(probe) == "x86-gateway"


def test_the_compressor_sees_a_jetsons_gpu_as_the_agent_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule for "is there an NVIDIA GPU": a Jetson Orin has /dev/nvgpu/igpu0 and no nvidia-smi."""
    from edgefleet.agent.runtimes import onnx_gpu
    from edgefleet.compression.candidates import tensorrt

    igpu = tmp_path / "dev" / "nvgpu" / "igpu0"
    igpu.parent.mkdir(parents=True)
    igpu.touch()
    monkeypatch.setattr(onnx_gpu, "_NVIDIA_DEVICE_PATHS", (tmp_path / "dev" / "nvidia0", igpu))
    assert onnx_gpu.nvidia_device_reason() is None
    assert "GPU" not in (tensorrt.unavailable_reason() or "")  # only tensorrt's absence is left, if that
    igpu.unlink()
    assert "no NVIDIA GPU visible" in (tensorrt.unavailable_reason() or "")
