from __future__ import annotations

import pytest
import torch

from starft_cli.device import resolve_device
from starft_cli.errors import UsageError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type in ("cpu", "mps")


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "cuda:x"])
def test_invalid_devices(spec: str) -> None:
    with pytest.raises(UsageError):
        resolve_device(spec)


def test_cuda_when_absent() -> None:
    if torch.cuda.is_available():
        assert resolve_device("cuda:0").type == "cuda"
    else:
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend two CUDA devices exist (nothing here touches CUDA beyond these two queries)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.mark.parametrize(("spec", "expected"), [("auto", "cuda:0"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1")])
def test_cuda_devices_always_come_back_indexed(two_gpus: None, spec: str, expected: str) -> None:
    device = resolve_device(spec)
    assert device == torch.device(expected) and device.index is not None


@pytest.mark.parametrize("spec", ["auto", "cuda"])
def test_index_less_cuda_takes_the_local_rank(two_gpus: None, monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device(spec) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UsageError, match="LOCAL_RANK 2 needs CUDA device 2, but there are 2"):
        resolve_device(spec)


def test_missing_cuda_index_is_refused(two_gpus: None) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        resolve_device("cuda:2")


def test_device_for_gives_each_rank_its_indexed_device(two_gpus: None) -> None:
    from starft_cli.train.distributed import DistEnv, device_for

    assert device_for(DistEnv(rank=1, world_size=2, local_rank=1), torch.device("cuda", 0)) == torch.device("cuda", 1)
    assert device_for(DistEnv(), torch.device("cuda")) == torch.device("cuda", 0)  # never index-less
    assert device_for(DistEnv(), torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert device_for(DistEnv(rank=1, world_size=2, local_rank=1), torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(UsageError, match="local rank 3 needs CUDA device 3"):
        device_for(DistEnv(rank=3, world_size=4, local_rank=3), torch.device("cuda", 0))


def test_cuda_call_arguments_come_from_the_indexed_device() -> None:
    from starft_cli.device import cuda_call_args

    calls = cuda_call_args(torch.device("cuda", 1))
    assert calls.set_device == 1  # torch.cuda.set_device(1): an index, never the bare "cuda"
    assert calls.ddp["device_ids"] == [1]
    assert calls.autocast_device_type == "cuda" and calls.scaler_device == "cuda"
    assert calls.fused_adamw is True and calls.pin_memory is True
    assert calls.process_group in ({"device_id": torch.device("cuda", 1)}, {})
    assert "broadcast_buffers" not in calls.ddp or "forward_sync_buffers" not in calls.ddp
    cpu = cuda_call_args(torch.device("cpu"))
    assert cpu.set_device is None and cpu.ddp["device_ids"] is None and cpu.fused_adamw is None
    assert cpu.pin_memory is False and cpu.autocast_device_type == "cpu" and cpu.process_group == {}
    with pytest.raises(ValueError, match="index-less"):
        cuda_call_args(torch.device("cuda"))


def test_cuda_call_arguments_are_accepted_by_torch() -> None:
    """The arguments as torch takes them, on CPU: autocast, GradScaler (no deprecation warning), DDP kwargs."""
    import inspect
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    from starft_cli.device import cuda_call_args

    calls = cuda_call_args(torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.amp.GradScaler(calls.scaler_device, enabled=False)
        with torch.autocast(calls.autocast_device_type, dtype=torch.bfloat16):
            pass
    assert set(calls.ddp) <= set(inspect.signature(DistributedDataParallel.__init__).parameters)
    cuda = cuda_call_args(torch.device("cuda", 0))
    assert set(cuda.process_group) <= set(inspect.signature(torch.distributed.init_process_group).parameters)


def test_finetune_hands_set_device_an_index(two_gpus: None, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """`finetune --device auto` on a (pretend) GPU machine: set_device gets an int, training gets cuda:0."""
    from starft_cli.train import loop
    from starft_cli.train.config import TrainConfig

    seen: dict[str, object] = {}

    def set_device(arg: object) -> None:
        if not isinstance(arg, int):  # what torch 2.11+ raises for the bare "cuda" device
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{arg}")
        seen["set_device"] = arg

    class Stop(Exception):
        pass

    def trainer(prepared, env, device, progress):
        seen["device"] = device
        raise Stop

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(loop, "_Trainer", trainer)
    monkeypatch.setattr(loop, "prepare", lambda config: type("P", (), {"config": config})())
    with pytest.raises(Stop):
        loop.finetune(TrainConfig(data="x", out=str(tmp_path / "run"), device="auto"))
    assert seen == {"set_device": 0, "device": torch.device("cuda", 0)}


def test_gpu_smoke_script_parses_and_refuses_without_cuda(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if torch.cuda.is_available():
        return  # the refusal is only observable without a GPU; on one, run the script itself
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert done.returncode == 1
    assert "CUDA is not available here" in done.stderr
