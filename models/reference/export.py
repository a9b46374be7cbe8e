"""Serialise a trained network as ONNX (legacy exporter, dynamic batch) and TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
ONNX_OPSET = 17


SPATIAL_AXIS_NAMES = ("x", "y", "z")
"""Symbolic names of dynamic spatial axes in exported graphs (first, second, third axis)."""


def export_onnx(
    network: nn.Module | torch.jit.ScriptModule,
    example: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_name: str,
    dynamic_spatial: bool = False,
) -> Path:
    """Write ``network`` (eval mode) to ``path`` as ONNX with a dynamic batch axis.

    ``example`` is one input ``(N, C, *spatial)``. The graph keeps its spatial sizes fixed
    unless ``dynamic_spatial``: then input and output spatial axes are symbolic (``x``, ``y``,
    ``z``), so a fully convolutional network runs sliding-window patches and whole volumes
    alike (sizes still divisible by its pooling factor). ``network`` may be a loaded
    TorchScript module, to re-export shipped weights without retraining. The legacy
    (TorchScript-based) exporter is used: the dynamo exporter fails on these graphs.
    """
    network.eval()
    spatial = SPATIAL_AXIS_NAMES[: example.ndim - 2] if dynamic_spatial else ()
    axes = {0: "batch", **{2 + i: name for i, name in enumerate(spatial)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: dict(axes), output_name: dict(axes)},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def export_torchscript(network: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``network`` (eval mode) to ``path`` as a traced TorchScript module."""
    network.eval()
    with torch.no_grad():
        traced = torch.jit.trace(network, example, check_trace=False)
    traced = torch.jit.freeze(traced)
    traced.save(str(path))
    return path
