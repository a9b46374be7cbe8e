"""A bundle's network at import time: built, loaded, exported and checked against itself.

This is the one place statlane runs code from a bundle, and only on the operator's command
(``statlane models import-bundle``): MONAI's own ``ConfigParser`` instantiates ``network_def``,
every expression it evaluates on the way is reported, and the state dict in
``models/model.pt`` is loaded into it. The network is then exported to TorchScript and ONNX
(dynamic batch axis), and each export is run on the same random input as the original; the
largest difference goes into the manifest, and a difference over the tolerance fails the
import. The package that results is data again: the service never evaluates anything.

With ``--no-eval`` nothing of the bundle is evaluated: the shipped ``models/model.ts``
(a serialized graph) is the network, and ONNX is exported from it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from models.bundle_config import BundleImportError, find_expressions, resolve
from models.bundle_steps import NotEvaluated
from models.manifest import ExportCheck

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
PARITY_TOLERANCE = 1e-3
"""Largest accepted difference, relative to the largest output magnitude (at least 1)."""
_HASHES = {"md5", "sha1", "sha256", "sha512"}
_CHECKPOINT_KEYS = ("model", "state_dict", "network", "net", "model_state_dict")


@dataclass(frozen=True)
class LargeFile:
    """One entry of ``large_files.yml``: a weight file and its published checksum."""

    path: str
    hash_type: str | None
    hash_val: str | None


def large_files(bundle: Path) -> list[LargeFile]:
    """The entries of ``large_files.yml`` (or ``.yaml``/``.json``); none when absent.

    Raises:
        BundleImportError: The file is there but is not a list of ``{path, hash_type,
            hash_val}`` mappings.
    """
    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        path = bundle / name
        if path.is_file():
            break
    else:
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise BundleImportError(f"{path}: cannot read ({error})") from error
    items = data.get("large_files") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and "path" in i for i in items):
        raise BundleImportError(f"{path}: needs a 'large_files' list of {{path, hash_val}}")
    entries = []
    for item in items:
        kind = item.get("hash_type")
        value = item.get("hash_val")
        entries.append(
            LargeFile(
                str(item["path"]),
                str(kind).lower() if kind else None,
                str(value).lower() if value else None,
            )
        )
    return entries


def verify_large_files(bundle: Path, lines: list[str]) -> None:
    """Check the checksum of every file ``large_files.yml`` lists that is present.

    Raises:
        BundleImportError: A present file's checksum differs (the file is not the published
            one), or the hash type is unknown.
    """
    for entry in large_files(bundle):
        file = (bundle / entry.path).resolve()
        if bundle.resolve() not in file.parents or not file.is_file():
            continue  # not downloaded: only the files the import uses must be there
        if not entry.hash_val:
            lines.append(f"{entry.path}: no checksum published, not verified")
            continue
        kind = entry.hash_type or "md5"
        if kind not in _HASHES:
            raise BundleImportError(f"{bundle}/large_files.yml: unknown hash_type {kind!r}")
        digest = hashlib.new(kind)
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry.hash_val:
            raise BundleImportError(
                f"{bundle}/{entry.path}: {kind} {digest.hexdigest()} does not match "
                f"large_files.yml ({entry.hash_val}); the file is not the published one"
            )
        lines.append(f"{entry.path}: {kind} verified against large_files.yml")


def network_expressions(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every ``$``/``@``/``%`` value ConfigParser meets while building ``network_def``: the
    ones inside it, and those of the ids its references lead to."""
    found: list[tuple[str, str]] = []
    pending = [("network_def", config.get("network_def"))]
    targets = find_targets(config.get("network_def"), "network_def")
    seen: set[str] = set()
    while pending:
        where, node = pending.pop()
        for path, text in find_expressions(node, where):
            found.append((path, text))
            for ident in re.findall(r"@([\w.#:-]+)", text):
                ident = ident.replace("::", "#")
                if ident not in seen:
                    seen.add(ident)
                    target = resolve(config, f"@{ident}")
                    if target != f"@{ident}":
                        pending.append((ident, target))
    return targets + found


def find_targets(node: object, where: str) -> list[tuple[str, str]]:
    """``(path, class)`` of every ``_target_`` ConfigParser instantiates under ``node``."""
    items: list[tuple[object, object]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    found: list[tuple[str, str]] = []
    for key, value in items:
        path = f"{where}#{key}"
        if key == "_target_" and isinstance(value, str) and not value.startswith("$"):
            found.append((path, f"instantiate {value}"))
        else:
            found += find_targets(value, path)
    return found


def _plain(value: object, depth: int = 0) -> object:
    """``value`` as YAML-safe plain data (numbers, strings, booleans, None, lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple) and depth < 3:
        return [_plain(v, depth + 1) for v in value]
    raise NotEvaluated(f"gives a {type(value).__name__}, not plain data")


class ArgumentEvaluator:
    """Evaluates a transform argument expression with MONAI's ConfigParser, at import only.

    Each expression is printed (``say``) before it runs and recorded in ``evaluated``; its
    value must be plain data, which is what the manifest keeps.
    """

    _SLOT = "statlane_import_argument"

    def __init__(self, config: dict[str, Any], bundle: Path, say: Callable[[str], None]) -> None:
        self.config = config
        self.bundle = bundle
        self.say = say
        self.evaluated: list[tuple[str, str]] = []
        self._parser: Any = None

    def __call__(self, where: str, text: str) -> object:
        from monai.bundle import ConfigParser

        if self._parser is None:
            self._parser = ConfigParser(dict(self.config))
            self._parser["bundle_root"] = str(self.bundle)
        self.say(f"  evaluating {where}: {text}")
        self.evaluated.append((where, text))
        self._parser[self._SLOT] = text
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = self._parser.get_parsed_content(self._SLOT, instantiate=False)
        except Exception as error:  # noqa: BLE001 - the expression is the bundle's own Python
            raise NotEvaluated(f"evaluation failed ({_first_line(error)})") from None
        return _plain(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _as_module(network: object) -> Any:
    import torch

    if not isinstance(network, torch.nn.Module):
        raise BundleImportError(
            f"network_def built a {type(network).__name__}, not a torch.nn.Module"
        )
    return network


def build_network(config: dict[str, Any], bundle: Path) -> Any:
    """``network_def`` instantiated by MONAI's ConfigParser (expressions evaluated).

    Raises:
        BundleImportError: No ``network_def``, or it fails to instantiate (the message has the
            parser's reason).
    """
    if "network_def" not in config:
        raise BundleImportError(f"{bundle}: the inference config has no network_def")
    from monai.bundle import ConfigParser

    parser = ConfigParser(dict(config))
    parser["bundle_root"] = str(bundle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as error:  # noqa: BLE001 - network_def runs the bundle's own Python
        raise BundleImportError(
            f"{bundle}: network_def fails to instantiate: {_first_line(error)}"
        ) from None
    return _as_module(network)


def state_dict_of(checkpoint: object, path: Path) -> Mapping[str, Any]:
    """The state dict inside a ``torch.load``-ed checkpoint (plain, or under ``model``...)."""
    import torch

    if isinstance(checkpoint, Mapping):
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
        for key in _CHECKPOINT_KEYS:
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and inner:
                return state_dict_of(inner, path)
    raise BundleImportError(
        f"{path}: not a state dict (nor one under {', '.join(_CHECKPOINT_KEYS)})"
    )


def load_state(network: Any, path: Path) -> None:
    """Load the weights in ``path`` into ``network`` (strictly: every key, every shape).

    Raises:
        BundleImportError: Unreadable file, not a state dict, or keys/shapes that do not fit.
    """
    import torch

    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load fails on a bad file with any type
        raise BundleImportError(f"{path}: cannot read the weights ({error})") from None
    state = dict(state_dict_of(checkpoint, path))
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise BundleImportError(f"{path}: does not fit network_def: {detail}") from None


def load_torchscript(path: Path) -> Any:
    """The shipped TorchScript module (a serialized graph: no Python runs)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch.jit.load fails with any type
        raise BundleImportError(f"{path}: not a loadable TorchScript module ({error})") from None


def _outputs(network: Any, example: Any) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        raw = network(example)
    if isinstance(raw, Mapping):
        raw = tuple(raw.values())
    tensors = raw if isinstance(raw, tuple | list) else (raw,)
    return [t.detach().float().cpu().numpy() for t in tensors]


def reference_outputs(network: Any, example: Any) -> list[np.ndarray]:
    """The original network's outputs on ``example`` ``(N, C, *spatial)``.

    Raises:
        BundleImportError: The network does not run on an input of this shape.
    """
    network.eval()
    try:
        return _outputs(network, example)
    except Exception as error:  # noqa: BLE001 - the network is the bundle's own Python
        raise BundleImportError(
            f"the network does not run on an input of shape {tuple(example.shape)}: "
            f"{_first_line(error)}"
        ) from None


def _difference(expected: list[np.ndarray], actual: list[np.ndarray], form: str) -> float:
    if len(expected) != len(actual) or any(
        e.shape != a.shape for e, a in zip(expected, actual, strict=True)
    ):
        raise BundleImportError(
            f"{form} export gives outputs {[a.shape for a in actual]}, the network "
            f"{[e.shape for e in expected]}"
        )
    return max(float(np.max(np.abs(e - a))) for e, a in zip(expected, actual, strict=True))


def _check(form: Any, difference: float, scale: float, shape: list[int]) -> ExportCheck:
    tolerance = PARITY_TOLERANCE * max(1.0, scale)
    if not difference <= tolerance:  # also refuses NaN
        raise BundleImportError(
            f"{form} export differs from the network by {difference:.3g} on the same input "
            f"(tolerance {tolerance:.3g}): export parity failed"
        )
    return ExportCheck(format=form, max_abs_diff=difference, tolerance=tolerance, input_shape=shape)


def export_and_check(
    network: Any,
    example: Any,
    folder: Path,
    *,
    input_name: str,
    output_names: list[str],
    shipped_torchscript: Path | None = None,
) -> list[ExportCheck]:
    """Write ``model.ts`` and ``model.onnx`` into ``folder`` and check both against ``network``.

    Args:
        network: The original network (eval mode is set here).
        example: Random input ``(N, C, *spatial)``, N >= 2 so the dynamic batch axis is used.
        folder: Where the files go (the import's staging folder).
        input_name: ONNX input name.
        output_names: The ONNX output name (one: networks with one output are exported).
        shipped_torchscript: Copy this file as ``model.ts`` instead of tracing ``network``
            (``--no-eval``: the network *is* that module).

    Raises:
        BundleImportError: An export fails, or differs from the network beyond the tolerance.
    """
    import onnxruntime as ort

    from models.reference.export import export_onnx, export_torchscript

    network.eval()
    expected = reference_outputs(network, example)
    scale = max(float(np.max(np.abs(e))) for e in expected)
    shape = [int(n) for n in example.shape]
    ts_path, onnx_path = folder / TORCHSCRIPT_FILE, folder / ONNX_FILE
    try:
        if shipped_torchscript is not None:
            shutil.copyfile(shipped_torchscript, ts_path)
        else:
            export_torchscript(network, example[:1], ts_path)
        traced = load_torchscript(ts_path)
        ts_check = _check(
            "torchscript",
            _difference(expected, _outputs(traced, example), "TorchScript"),
            scale,
            shape,
        )
    except BundleImportError:
        raise
    except Exception as error:  # noqa: BLE001 - tracing runs the bundle's code: any type
        raise BundleImportError(f"TorchScript export failed: {error}") from None
    try:
        if len(expected) != 1 or len(output_names) != 1:
            raise BundleImportError(
                f"the network gives {len(expected)} outputs ({len(output_names)} named); "
                "the export handles networks with one output"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(
                network, example[:1], onnx_path, input_name=input_name, output_name=output_names[0]
            )
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
        onnx_check = _check(
            "onnx", _difference(expected, [np.asarray(g) for g in got], "ONNX"), scale, shape
        )
    except BundleImportError:
        raise
    except Exception as error:  # noqa: BLE001 - the exporter and onnxruntime raise any type
        raise BundleImportError(f"ONNX export failed: {_first_line(error)}") from None
    return [ts_check, onnx_check]
