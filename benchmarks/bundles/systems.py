"""The worker side: one system, loaded once in its own spawned process, run on command.

A worker loads its model (timed as ``model_load_s``, outside every end-to-end time), answers
``"run"`` with one end-to-end time and its stage times, and answers ``"finish"`` by saving the
last label map (``(slices, rows, columns)`` uint8 on the source grid) and reporting its own peak
resident set size: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's
address space (imports, model, runs). Not ``ru_maxrss``: on Linux a spawned child starts with its
parent's high-water mark (kept across fork and exec), here the driver's ~1 GiB of torch, MONAI
and the bundle import, which would hide every system's own peak.
"""

from __future__ import annotations

import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

Run = Callable[[], tuple[dict[str, float], Any]]
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _statlane(backend: str, package: Path, series_dir: Path, device: str) -> Run:
    """``statlane infer`` (``infer_with_package``) with a runner loaded once."""
    from models.manifest import load_manifest
    from models.runner import ModelRunner
    from serving.commands.infer import infer_with_package

    runner = ModelRunner(load_manifest(package), package, backend, device=device)

    def run() -> tuple[dict[str, float], Any]:
        result = infer_with_package(series_dir, package, backend, device=device, runner=runner)
        return dict(result.stage_s), result.label_map

    return run


def _index(transforms: list[dict[str, Any]], target: str) -> int:
    return next(i for i, t in enumerate(transforms) if t["_target_"] == target)


def _monai(bundle: Path, series_dir: Path, device: str) -> Run:
    """The bundle's own path, built by MONAI's ConfigParser from ``configs/inference.json``.

    Overrides: ``LoadImaged`` reads with ``PydicomReader`` (MONAI's DICOM reader without ITK),
    ``SaveImaged`` is dropped. The weights go into ``network_def`` as the bundle's
    ``CheckpointLoader`` puts them; the network runs in eval mode under inference mode. The
    bundle's Compose objects are applied in two parts each only to time the stages.
    """
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["preprocessing#transforms#0#reader"] = "PydicomReader"
    post = [t for t in parser["postprocessing#transforms"] if t["_target_"] != "SaveImaged"]
    parser["postprocessing#transforms"] = post
    pre = parser["preprocessing#transforms"]
    load_end = _index(pre, "EnsureChannelFirstd") + 1  # LoadImaged, EnsureChannelFirstd
    invert_at = _index(post, "Invertd")  # Activationsd | Invertd, AsDiscreted
    key = parser.get_parsed_content("image_key")
    network = parser.get_parsed_content("network_def")
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    dev = torch.device(device)
    network = network.to(dev).eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    cuda = dev.type == "cuda"

    def run() -> tuple[dict[str, float], Any]:
        stages: dict[str, float] = {}
        clock = time.perf_counter
        started = clock()

        def lap(stage: str) -> None:
            nonlocal started
            if cuda:
                torch.cuda.synchronize()
            now = clock()
            stages[stage] = now - started
            started = now

        data = preprocessing({key: str(series_dir)}, end=load_end)
        lap("load")
        data = preprocessing(data, start=load_end)
        lap("preprocess")
        with torch.inference_mode():
            data["pred"] = inferer(data[key][None].to(dev), network)[0]
        lap("inference")
        data = postprocessing(data, end=invert_at)
        lap("postprocess")
        data = postprocessing(data, start=invert_at)
        labels = data["pred"].cpu()
        lap("placement")
        return stages, (labels, data[key].shape[1:])

    return run


def make_system(system: str, bundle: Path, package: Path, series_dir: Path, device: str) -> Run:
    """A no-argument callable: one end-to-end run, returning (stage seconds, raw output)."""
    if system == "monai":
        return _monai(bundle, series_dir, device)
    return _statlane(system.removeprefix("statlane-"), package, series_dir, device)


def monai_to_source(labels: np.ndarray, affine_ras: np.ndarray, source_lps: np.ndarray) -> Any:
    """MONAI's ``(X, Y, Z)`` label array (``affine_ras``) as ``(slices, rows, columns)``."""
    matrix = np.linalg.inv(source_lps) @ _RAS_TO_LPS @ np.asarray(affine_ras, np.float64)
    linear = matrix[:3, :3]
    to_source = [int(np.argmax(np.abs(linear[:, i]))) for i in range(3)]
    out = labels
    for i in range(3):
        if linear[to_source[i], i] < 0:
            out = np.flip(out, i)
    return np.ascontiguousarray(out.transpose([to_source.index(j) for j in (2, 1, 0)]))


def _source_layout(system: str, raw: Any, source_lps: np.ndarray) -> tuple[np.ndarray, Any]:
    """The label map as ``(slices, rows, columns)`` uint8, and the model grid if known."""
    if system != "monai":
        return np.asarray(raw, dtype=np.uint8), None
    labels, grid = raw
    array = np.asarray(labels.numpy()[0], dtype=np.uint8)
    out = monai_to_source(array, np.asarray(labels.affine), source_lps)
    return out, [int(n) for n in grid]


def peak_rss_bytes() -> int:
    """This process's peak resident set size: ``VmHWM`` (Linux), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def worker(
    conn: Connection,
    system: str,
    bundle: Path,
    package: Path,
    series_dir: Path,
    device: str,
    source_lps: np.ndarray,
    save: Path,
) -> None:
    """A spawned process's main: load, then obey ``run``/``finish`` until done."""
    warnings.filterwarnings("ignore")
    try:
        import psutil
        import torch

        started = time.perf_counter()
        run = make_system(system, bundle, package, series_dir, device)
        conn.send(
            {
                "model_load_s": time.perf_counter() - started,
                "rss_after_load_bytes": int(psutil.Process().memory_info().rss),
            }
        )
        raw: Any = None
        while conn.recv() == "run":
            started = time.perf_counter()
            stages, raw = run()
            e2e = time.perf_counter() - started
            conn.send({"e2e_s": e2e, "stage_s": stages})
        labels, grid = _source_layout(system, raw, source_lps)
        np.save(save, labels)
        peak: dict[str, Any] = {
            "peak_rss_bytes": peak_rss_bytes(),
            "ru_maxrss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "torch_threads": torch.get_num_threads(),
            "model_grid": grid,
        }
        if device == "cuda":
            peak["peak_cuda_torch_bytes"] = int(torch.cuda.max_memory_allocated())
        conn.send(peak)
    # The child reports every failure, even an interrupt, to the parent that waits on the pipe.
    except BaseException:  # noqa: BLE001
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()
