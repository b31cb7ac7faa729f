"""Where a network runs: device, memory format, ``torch.compile``, and the module inside wrappers."""

from __future__ import annotations

from typing import Sequence

import torch

from transforms.base.describe import typed
from transforms.base.errors import ConfigurationError


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(network, "module") and isinstance(network.module, torch.nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def trainable_parameters(network: torch.nn.Module) -> Sequence[torch.nn.Parameter]:
    return [p for p in network.parameters() if p.requires_grad]


@typed
def prepare_network(
    network: torch.nn.Module, device: torch.device | str, channels_last: bool = False, compile: bool = False
) -> torch.nn.Module:
    """Move ``network`` to ``device``, channels-last if asked (CUDA convnets), ``torch.compile`` if asked.

    Save and load weights through :func:`unwrap` so that checkpoints carry no
    ``_orig_mod.`` / ``module.`` prefixes.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"--device {device} asks for a CUDA GPU, but this machine has none (or no driver): "
                                 "leave --device out to run on what is there, or pass --device cpu")
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    if compile:
        network = torch.compile(network)
    return network
