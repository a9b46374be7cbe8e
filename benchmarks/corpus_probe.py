"""Probe models for the real-file corpus: a finding on every image, so objects are built on all.

The reference models answer only inside their input domain, so on a public test corpus most of
their tasks end "not applicable" and build no GSPS, SC or SEG. The corpus therefore also routes
every CT, MR, CR and DX series to a *probe*: a segmentation "model" (ONNX, two operators) that
marks every voxel brighter than 60 % of the image's range as a finding. Its boxes touch image
borders, cover single pixels or whole images, on every geometry the corpus holds: what the
result-object builders must survive. Not a model of anything; never installed outside the
corpus run.

* ``corpus-probe-volume`` (CT, MR): min-max scaled, resized to 48x48x16, 3D boxes and volumes;
* ``corpus-probe-image`` (CR, DX): min-max scaled, resized to 64x64x1, 2D boxes and areas.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from models.manifest import (
    BackendKind,
    CodedConcept,
    FindingSpec,
    Manifest,
    ModelCard,
    OutputSpec,
    Postprocessing,
    RuntimeHints,
    Task,
    TensorSpec,
    Weights,
    WeightsFile,
    dump_manifest,
    sha256_of,
)

INPUT, OUTPUT = "image", "heatmap"
#: logit = GAIN * (scaled intensity - LEVEL): positive above LEVEL of the image's range.
GAIN, LEVEL = 40.0, 0.6
PROBES: dict[str, dict[str, Any]] = {
    "corpus-probe-volume": {"modality": ["CT", "MR"], "spatial": [48, 48, 16]},
    "corpus-probe-image": {"modality": ["CR", "DX"], "spatial": [64, 64, 1]},
}


def probe_onnx(spatial: list[int]) -> bytes:
    """``heatmap = GAIN * image - GAIN * LEVEL`` on a (batch, 1, *spatial) float32 tensor."""
    shape: list[int | str] = ["batch", 1, *spatial]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", [INPUT, "gain"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "offset"], [OUTPUT]),
        ],
        "corpus_probe",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, shape)],
        initializer=[
            helper.make_tensor("gain", TensorProto.FLOAT, [], [GAIN]),
            helper.make_tensor("offset", TensorProto.FLOAT, [], [GAIN * LEVEL]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def probe_manifest(name: str, folder: Path) -> Manifest:
    """The manifest of probe ``name`` whose ``model.onnx`` is already in ``folder``."""
    spec = PROBES[name]
    spatial: list[int] = spec["spatial"]
    volume = spatial[2] > 1
    return Manifest(
        name=name,
        version=1,
        task=Task.SEGMENTATION,
        description="Corpus probe: marks what is brighter than 60 % of the image range.",
        modality=spec["modality"],
        body_part=["ANY"],
        input=TensorSpec(name=INPUT, shape=[-1, 1, *spatial]),
        outputs=[OutputSpec(name=OUTPUT, shape=[-1, 1, *spatial], meaning="bright-region logit")],
        preprocessing=[
            {"transform": "ScaleIntensity", "minv": 0.0, "maxv": 1.0},
            {"transform": "Resize", "spatial_size": spatial, "mode": "area"},
        ],
        postprocessing=Postprocessing(
            activation="sigmoid", connected_components=True, largest_component=False
        ),
        findings=[
            FindingSpec(
                name="bright-region",
                concept=CodedConcept(value="T-PROBE", scheme="99STATLANE", meaning="Probe region"),
                output=OUTPUT,
                channel=0,
                derive=[
                    "presence",
                    "probability",
                    "bounding_box",
                    "volume_ml" if volume else "area_mm2",
                ],
            )
        ],
        weights=Weights(
            onnx=WeightsFile(path="model.onnx", sha256=sha256_of(folder / "model.onnx"))
        ),
        runtime=RuntimeHints(max_batch=4, backends=[BackendKind.ONNXRUNTIME]),
        card=ModelCard(
            intended_use="statlane's real-file corpus only: builds result objects on any image",
            training_data="none: two fixed operators",
            not_for_clinical_use=True,
        ),
    )


def write_models(folder: Path, reference: Path) -> Path:
    """A models folder: the reference packages (copied) and the two probes; returns it."""
    shutil.copytree(reference, folder, dirs_exist_ok=True)
    for name, spec in PROBES.items():
        version = folder / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (version / "model.onnx").write_bytes(probe_onnx(spec["spatial"]))
        dump_manifest(probe_manifest(name, version), version / "manifest.yaml")
        (folder / name / "states.yaml").write_text("versions:\n  1: active\n", encoding="utf-8")
    return folder
