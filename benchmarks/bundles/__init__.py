"""Benchmark: a published MONAI bundle (spleen CT), DICOM files -> label map, statlane vs MONAI.

Workload: the model-zoo ``spleen_ct_segmentation`` bundle as published (fixture
``tests/fixtures/monai-bundles``; 3D UNet, ``SlidingWindowInferer`` roi 96^3, overlap 0.5,
sw_batch_size 4; Orientation RAS, Spacing 1.5x1.5x2.0 mm, ScaleIntensityRange -57..164 HU;
softmax, Invertd, argmax) with random weights saved as the bundle saves them
(``tests/bundle_factory.published_bundle``), imported as a statlane package
(``models.bundle.import_bundle``), run on a synthetic abdominal CT (``generate_study
("ct-abdomen")``, 200 x 512x512 slices of 2.5 mm) from its DICOM files to a label map on the
source grid. Systems, each in its own spawned process with its model loaded once:

* ``statlane-onnxruntime`` - ``serving.commands.infer.infer_with_package`` (``statlane infer``)
  with a ``ModelRunner`` on ONNX Runtime;
* ``statlane-torchscript`` - the same with the TorchScript export;
* ``monai`` (the baseline) - the bundle's own path, built by ``monai.bundle.ConfigParser`` from
  ``configs/inference.json``: ``LoadImaged(reader="PydicomReader")`` of the series folder, the
  bundle's preprocessing, its ``SlidingWindowInferer`` on ``network_def`` (state dict loaded, eval
  mode, ``torch.inference_mode()``), its postprocessing without ``SaveImaged``.

Reported per system: end-to-end seconds per repeat and median, seconds per stage (load,
preprocess, inference, postprocess, placement), model load time, peak RSS of its process, and the
Dice of the spleen label against monai and statlane-onnxruntime on the source grid. Target:
``statlane_over_monai_e2e`` (onnxruntime median / monai median) at most 0.7, aiming at 0.5.

Usage: ``python -m benchmarks.bundles [--smoke] [--repeats N] [--warmup N] [--device cpu|cuda]
[--out benchmarks/results]``; ``--device cuda`` writes ``bundles-gpu.*``.

The package: :mod:`~benchmarks.bundles.workload` (bundle, import, study),
:mod:`~benchmarks.bundles.systems` (the worker process of one system),
:mod:`~benchmarks.bundles.measure` (workers, interleaving, agreement, ratios),
:mod:`~benchmarks.bundles.pages` (markdown and figure) and :mod:`~benchmarks.bundles.cli`.
"""

from __future__ import annotations

from benchmarks.bundles.workload import (
    AIM,
    E2E_KEY,
    FULL,
    NAME,
    SMOKE,
    STAGES,
    SYSTEMS,
    TARGETS,
    TS_KEY,
)

__all__ = ["AIM", "E2E_KEY", "FULL", "NAME", "SMOKE", "STAGES", "SYSTEMS", "TARGETS", "TS_KEY"]
