"""A real Triton Inference Server for tests and benchmarks, from the ``nvidia-pytriton`` wheel.

Runs under its own virtual environment (``.venv-triton``: pytriton needs ``numpy<2``), so it
imports nothing from statlane. Each model is served by a Python callable wrapping ONNX Runtime,
behind Triton's dynamic batcher with priority levels and an overridable queue timeout: the same
batcher configuration ``statlane models export-triton`` writes.

Usage: ``.venv-triton/bin/python benchmarks/triton_serve.py SPEC.json`` where SPEC is::

    {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002,
     "models": [{"name": "ich-ct-head", "version": 2, "onnx": "/path/model.onnx",
                 "input": {"name": "image", "shape": [1, 64, 64, 32]},
                 "outputs": [{"name": "logits", "shape": [2, 64, 64, 32]}],
                 "max_batch": 4, "max_queue_delay_us": 2000, "extra_delay_s": 0.0}]}

``extra_delay_s`` adds a fixed time per batch (emulating a busy GPU in queueing tests).
The server prints ``READY`` on stdout once every model is loaded, then serves until SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any


def _infer_fn(session: Any, input_name: str, output_names: list[str], delay_s: float) -> Any:
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: Any) -> dict[str, Any]:
        data = inputs[input_name]
        if delay_s:
            time.sleep(delay_s)
        results = session.run(output_names, {input_name: data})
        return dict(zip(output_names, results, strict=True))

    return infer


def main(spec_path: str) -> int:
    """Start Triton with every model of the spec; block until terminated."""
    import numpy as np
    import onnxruntime as ort
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
    from pytriton.triton import Triton, TritonConfig

    # pytriton reports start-up progress and failures through logging only; without a
    # handler a server that never becomes ready leaves an empty log behind.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    # Triton's Python-backend stub links libpython dynamically; make it load the library of
    # this interpreter, not an older system copy whose C internals differ from our stdlib.
    lib = os.path.join(sys.base_prefix, "lib")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (lib, os.environ.get("LD_LIBRARY_PATH", "")) if p
    )
    config = TritonConfig(
        http_port=spec["http_port"],
        grpc_port=spec["grpc_port"],
        metrics_port=spec["metrics_port"],
        http_address="127.0.0.1",
        grpc_address="127.0.0.1",
        metrics_address="127.0.0.1",
        log_verbose=0,
        exit_on_error=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Triton(config=config) as triton:
        for model in spec["models"]:
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(model.get("threads", 1))
            session = ort.InferenceSession(
                model["onnx"], options, providers=["CPUExecutionProvider"]
            )
            output_names = [o["name"] for o in model["outputs"]]
            batcher = DynamicBatcher(
                max_queue_delay_microseconds=int(model.get("max_queue_delay_us", 0)),
                priority_levels=3,
                default_priority_level=3,
                default_queue_policy=QueuePolicy(allow_timeout_override=True),
            )
            triton.bind(
                model_name=model["name"],
                model_version=int(model["version"]),
                infer_func=_infer_fn(
                    session,
                    model["input"]["name"],
                    output_names,
                    float(model.get("extra_delay_s", 0.0)),
                ),
                inputs=[
                    Tensor(
                        name=model["input"]["name"],
                        dtype=np.float32,
                        shape=tuple(model["input"]["shape"]),
                    )
                ],
                outputs=[
                    Tensor(name=o["name"], dtype=np.float32, shape=tuple(o["shape"]))
                    for o in model["outputs"]
                ],
                config=ModelConfig(max_batch_size=int(model["max_batch"]), batcher=batcher),
                strict=False,
            )
        triton.run()
        print("READY", flush=True)
        while not stop.is_set():
            stop.wait(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
