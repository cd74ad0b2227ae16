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
