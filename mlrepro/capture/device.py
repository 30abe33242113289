"""Turn a spec's ``device`` into a torch device, or say plainly why it cannot be had."""

from __future__ import annotations

import torch

from mlrepro.errors import DeviceError


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA device 0 when torch sees one, else the CPU, as in the seed scripts."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device: {name} was asked for, but torch {torch.__version__} sees no CUDA device here; "
                "use device=cpu or device=auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device: {name} was asked for, but only cuda:0 .. cuda:{count - 1} exist here")
    return device
