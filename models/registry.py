"""The model repository: one folder per model, one folder per version, a state per version.

Layout (as in a Triton model repository)::

    <root>/<name>/states.yaml            versions: {1: shadow, 2: active}
    <root>/<name>/<version>/manifest.yaml
    <root>/<name>/<version>/model.onnx   (and/or model.ts)

Exactly one version of a model is ``active``. Without ``states.yaml`` the highest version is
active and the others are retired; a version folder that ``states.yaml`` does not list is
retired too, so a folder dropped into the repository never goes live by itself.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from models.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    VersionState,
    load_manifest,
    verify_weights,
)

STATES_FILE = "states.yaml"
ENV_ROOT = "STATLANE_MODELS"
_VERSION_DIR = re.compile(r"^[1-9][0-9]*$")


class RegistryError(ValueError):
    """The repository is inconsistent (bad ``states.yaml``, forbidden state change, ...)."""


class PackageNotFoundError(RegistryError, LookupError):
    """No model or version answers to the reference; the message lists what exists."""


@dataclass(frozen=True)
class ModelVersion:
    """One version of one model, as found in the repository.

    Attributes:
        manifest: The validated manifest.
        folder: The version folder holding the manifest and weight files.
        state: Deployment state from ``states.yaml``.
    """

    manifest: Manifest
    folder: Path
    state: VersionState

    @property
    def ident(self) -> str:
        """``name@version``."""
        return self.manifest.ident


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of validating one version folder (or a model's ``states.yaml``).

    Attributes:
        ref: ``name@version`` (or ``name`` when the model-level states file is at fault).
        folder: The folder that was checked.
        problem: ``None`` when valid, else one line saying which file and field is wrong.
    """

    ref: str
    folder: Path
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.problem is None


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split ``name`` or ``name@version`` (version a positive integer).

    Raises:
        PackageNotFoundError: The version part is not a positive integer.
    """
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    if not _VERSION_DIR.match(version):
        raise PackageNotFoundError(f"{ref!r}: version must be a positive integer (name@3)")
    return name, int(version)


class Registry:
    """Read and change the model repository under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def default(cls) -> Registry:
        """The shipped ``models/packages`` folder, or ``$STATLANE_MODELS`` when set."""
        override = os.environ.get(ENV_ROOT)
        if override:
            return cls(Path(override))
        return cls(Path(__file__).resolve().parent / "packages")

    # -- discovery ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Model names (folders holding at least one version folder), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and not d.name.startswith(".") and self._version_numbers(d.name)
        )

    def _version_numbers(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(d.name) for d in folder.iterdir() if d.is_dir() and _VERSION_DIR.match(d.name)
        )

    def states(self, name: str) -> dict[int, VersionState]:
        """State of every version folder of ``name``.

        Raises:
            PackageNotFoundError: No such model.
            RegistryError: ``states.yaml`` is unreadable, names a missing version or an unknown
                state, or does not have exactly one active version.
        """
        numbers = self._version_numbers(name)
        if not numbers:
            raise self._not_found(name)
        path = self.root / name / STATES_FILE
        if not path.exists():
            top = numbers[-1]
            return {v: VersionState.ACTIVE if v == top else VersionState.RETIRED for v in numbers}
        listed = _read_states(path)
        for version in listed:
            if version not in numbers:
                raise RegistryError(f"{path}: versions.{version}: no version folder {version}")
        states = {v: listed.get(v, VersionState.RETIRED) for v in numbers}
        active = [v for v, s in states.items() if s is VersionState.ACTIVE]
        if len(active) != 1:
            raise RegistryError(
                f"{path}: versions: exactly one active version needed, got {active}"
            )
        return states

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, lowest first, with its validated manifest.

        Raises:
            PackageNotFoundError: No such model.
            ManifestError: A manifest is invalid or does not match its folder.
            RegistryError: ``states.yaml`` is invalid.
        """
        states = self.states(name)
        return [self._load(name, v, states[v]) for v in sorted(states)]

    def get(self, ref: str) -> ModelVersion:
        """Resolve ``name`` (its active version) or ``name@version``.

        Raises:
            PackageNotFoundError: Unknown model or version.
            ManifestError: The manifest is invalid.
            RegistryError: ``states.yaml`` is invalid.
        """
        name, version = parse_ref(ref)
        states = self.states(name)
        if version is None:
            version = next(v for v, s in states.items() if s is VersionState.ACTIVE)
        elif version not in states:
            known = ", ".join(f"{name}@{v}" for v in states)
            raise PackageNotFoundError(f"{ref}: no such version in {self.root} (have {known})")
        return self._load(name, version, states[version])

    def active(self) -> list[ModelVersion]:
        """The active version of every model."""
        return [self.get(name) for name in self.names()]

    def _load(self, name: str, version: int, state: VersionState) -> ModelVersion:
        folder = self.root / name / str(version)
        manifest = load_manifest(folder / MANIFEST_FILE)
        if manifest.name != name or manifest.version != version:
            raise ManifestError(
                f"{folder / MANIFEST_FILE}: name/version: manifest says {manifest.ident}, "
                f"folder is {name}@{version}"
            )
        return ModelVersion(manifest, folder, state)

    def _not_found(self, name: str) -> PackageNotFoundError:
        known = ", ".join(self.names()) or "none"
        return PackageNotFoundError(f"{name}: no such model in {self.root} (have {known})")

    # -- validation --------------------------------------------------------------------------

    def validate(self, name_or_ref: str | None = None) -> list[ValidationResult]:
        """Validate every version (or one model, or one ``name@version``).

        Checks per version: the manifest loads and matches its folder, weight files match their
        sha256, the ONNX graph's input/output names and non-batch dims match the manifest (the
        batch axis symbolic; the spatial axes may be symbolic too when the manifest chunks the
        input), and the TorchScript file loads.

        Raises:
            PackageNotFoundError: ``name_or_ref`` names nothing.
        """
        results: list[ValidationResult] = []
        for name, numbers in self._targets(name_or_ref):
            states = self._check_states(name)
            if not states.ok:
                results.append(states)
            results += [self._check_version(name, number) for number in numbers]
        return results

    def _targets(self, name_or_ref: str | None) -> list[tuple[str, list[int]]]:
        """(model name, version numbers) to validate."""
        if name_or_ref is None:
            return [(name, self._version_numbers(name)) for name in self.names()]
        name, version = parse_ref(name_or_ref)
        numbers = self._version_numbers(name)
        if not numbers:
            raise self._not_found(name)
        if version is None:
            return [(name, numbers)]
        if version not in numbers:
            raise PackageNotFoundError(f"{name_or_ref}: no such version in {self.root}")
        return [(name, [version])]

    def _check_states(self, name: str) -> ValidationResult:
        try:
            self.states(name)
        except RegistryError as error:
            return ValidationResult(name, self.root / name, str(error))
        return ValidationResult(name, self.root / name)

    def _check_version(self, name: str, version: int) -> ValidationResult:
        folder = self.root / name / str(version)
        ref = f"{name}@{version}"
        try:
            manifest = self._load(name, version, VersionState.RETIRED).manifest
            verify_weights(manifest, folder)
            if manifest.weights.onnx is not None:
                check_onnx_graph(manifest, folder / manifest.weights.onnx.path)
            if manifest.weights.torchscript is not None:
                check_torchscript(folder / manifest.weights.torchscript.path)
        except ManifestError as error:
            return ValidationResult(ref, folder, str(error))
        return ValidationResult(ref, folder)

    # -- state changes -----------------------------------------------------------------------

    def set_state(self, ref: str, state: VersionState | str) -> dict[int, VersionState]:
        """Set a version's state and write ``states.yaml`` atomically; returns the new states.

        Promoting a version to active demotes the previous active version to shadow. The active
        version cannot be demoted directly (promote another one instead), so a model always has
        exactly one active version.

        Raises:
            PackageNotFoundError: Unknown model or version.
            RegistryError: Unknown state, or the change would leave no active version.
        """
        try:
            target = VersionState(state)
        except ValueError:
            allowed = ", ".join(s.value for s in VersionState)
            raise RegistryError(f"unknown state {state!r}; allowed: {allowed}") from None
        version = self.get(ref)
        states = self.states(version.manifest.name)
        number = version.manifest.version
        current = states[number]
        if current is VersionState.ACTIVE and target is not VersionState.ACTIVE:
            raise RegistryError(
                f"{version.ident} is the active version; promote another version to active first"
            )
        if target is VersionState.ACTIVE:
            for other, other_state in states.items():
                if other_state is VersionState.ACTIVE:
                    states[other] = VersionState.SHADOW
        states[number] = target
        _write_states(self.root / version.manifest.name / STATES_FILE, states)
        return states


def _read_states(path: Path) -> dict[int, VersionState]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise RegistryError(f"{path}: cannot read states ({error})") from error
    if (
        not isinstance(data, dict)
        or set(data) != {"versions"}
        or not isinstance(data["versions"], dict)
    ):
        raise RegistryError(f"{path}: must be a mapping 'versions: {{1: active, ...}}'")
    states: dict[int, VersionState] = {}
    for key, value in data["versions"].items():
        if not isinstance(key, int) or isinstance(key, bool) or key < 1:
            raise RegistryError(f"{path}: versions.{key}: version must be a positive integer")
        try:
            states[key] = VersionState(value)
        except ValueError:
            allowed = ", ".join(s.value for s in VersionState)
            raise RegistryError(
                f"{path}: versions.{key}: unknown state {value!r}; allowed: {allowed}"
            ) from None
    return states


def _write_states(path: Path, states: dict[int, VersionState]) -> None:
    data = {"versions": {v: states[v].value for v in sorted(states)}}
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def onnx_io(path: Path) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    """Graph inputs and outputs of an ONNX file: name -> dims (int, or the symbolic name).

    Initializers listed as graph inputs (older exporters) are left out.

    Raises:
        ManifestError: The file is not a readable ONNX model.
    """
    import onnx  # heavy; only needed when a graph is checked

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx fails on a bad file with any type (DecodeError, OSError)
        raise ManifestError(f"{path}: not a readable ONNX model ({error})") from error
    initializers = {init.name for init in model.graph.initializer}

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        shape = value.type.tensor_type.shape
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]

    inputs = {v.name: dims(v) for v in model.graph.input if v.name not in initializers}
    outputs = {v.name: dims(v) for v in model.graph.output}
    return inputs, outputs


def check_onnx_graph(manifest: Manifest, path: Path) -> None:
    """The graph's single input and its outputs match the manifest's names and dims.

    Raises:
        ManifestError: Names, rank or a non-batch dim differ, the batch axis is fixed, or a
            chunked model's spatial axis is fixed to a size its windows do not have.
    """
    inputs, outputs = onnx_io(path)
    if list(inputs) != [manifest.input.name]:
        raise ManifestError(
            f"{path}: input: graph inputs {list(inputs)} != manifest input "
            f"[{manifest.input.name!r}]"
        )
    name = manifest.input.name
    roi = manifest.runtime.chunking.roi_size if manifest.runtime.chunking else None
    _same_dims(path, f"input {name!r}", inputs[name], manifest.input.shape, roi)
    for spec in manifest.outputs:
        if spec.name not in outputs:
            raise ManifestError(
                f"{path}: outputs: graph has no output {spec.name!r} (has {list(outputs)})"
            )
        _same_dims(path, f"output {spec.name!r}", outputs[spec.name], spec.shape, roi)


def _same_dims(
    path: Path,
    what: str,
    graph: list[int | str],
    manifest: list[int],
    roi: list[int] | None = None,
) -> None:
    """Compare graph dims with the manifest's; ``roi`` is the chunk size of a chunked model.

    A chunked model runs patches of ``roi`` voxels as well as whole volumes, so each spatial
    axis must be symbolic in the graph, or fixed to a size equal to both the manifest's and the
    roi's.
    """
    if len(graph) != len(manifest):
        raise ManifestError(f"{path}: {what}: graph rank {len(graph)} != manifest {manifest}")
    if isinstance(graph[0], int) and graph[0] > 0:
        raise ManifestError(f"{path}: {what}: batch axis is fixed to {graph[0]}, must be dynamic")
    if roi is None:
        if list(graph[1:]) != list(manifest[1:]):
            raise ManifestError(f"{path}: {what}: graph dims {graph} != manifest shape {manifest}")
        return
    if graph[1] != manifest[1]:
        raise ManifestError(f"{path}: {what}: graph dims {graph} != manifest shape {manifest}")
    for axis, (dim, size, patch) in enumerate(zip(graph[2:], manifest[2:], roi, strict=True)):
        if isinstance(dim, str):
            continue
        if dim != size or dim != patch:
            raise ManifestError(
                f"{path}: {what}: spatial axis {axis} is fixed to {dim} in the graph but the "
                f"manifest chunks {manifest} into windows {roi}; export it with dynamic "
                "spatial axes"
            )


def check_torchscript(path: Path) -> None:
    """The TorchScript file loads on CPU.

    Raises:
        ManifestError: It does not.
    """
    import torch  # heavy; only needed when a TorchScript file is checked

    try:
        with warnings.catch_warnings():  # torch 2.13 marks torch.jit deprecated; still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch.jit.load fails with any type (RuntimeError, ValueError)
        raise ManifestError(f"{path}: TorchScript does not load ({error})") from error
