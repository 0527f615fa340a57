"""The compute device of a model stage: one setting (``device`` in the config,
``--device`` on every model CLI) resolved the same way everywhere."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from qure.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error.

    ``cuda`` follows ``CUDA_VISIBLE_DEVICES`` (the scheduler's choice): the first
    visible device is used.
    """
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"device: expected one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for (--device cuda / config key "
                          "`device`) but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="compute device (config key `device`); auto = CUDA when "
                             "available (default: auto)")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_report(device: torch.device) -> dict[str, Any]:
    """What ran where, for a stage's metrics file: the device, its name and, on CUDA,
    the peak memory torch allocated since :func:`reset_peak_memory`."""
    report: dict[str, Any] = {"device": device.type, "device_name": "cpu",
                              "peak_gpu_memory_bytes": None}
    if device.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(device)
        report["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return report
