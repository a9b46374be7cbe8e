"""Serialise a trained network as ONNX (legacy exporter, dynamic batch) and TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
ONNX_OPSET = 17


def export_onnx(
    network: nn.Module, example: torch.Tensor, path: Path, *, input_name: str, output_name: str
) -> Path:
    """Write ``network`` (eval mode) to ``path`` as ONNX with a dynamic batch axis.

    ``example`` is one input ``(N, C, *spatial)``; the graph keeps its spatial sizes fixed.
    The legacy (TorchScript-based) exporter is used: the dynamo exporter fails on these graphs.
    """
    network.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
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
