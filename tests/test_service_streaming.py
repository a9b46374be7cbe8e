"""Volumes decoded while the series arrives equal the batch loader's, or are not used at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.synthetic import generate_study
from preprocessing.series import load_series
from serving.service.streaming import StreamingVolumes


def test_streamed_volume_equals_batch_load_and_needs_the_exact_instances(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path, seed=2, matrix=64, compression="rle")
    paths = [str(p) for p in study.files]
    streaming = StreamingVolumes()
    try:
        for path in reversed(paths):  # arrival order does not matter
            streaming.offer(study.series_uid, "CT", path)
        volume = streaming.take(study.series_uid, paths)
        assert volume is not None
        reference = load_series(study.files)
        assert np.array_equal(volume.array, reference.array)
        assert np.allclose(volume.affine, reference.affine)
        assert volume.sop_instance_uids == reference.sop_instance_uids
        # handed out once; a task asking for a different instance set falls back to disk
        assert streaming.take(study.series_uid, paths) is None
        for path in paths[:-1]:
            streaming.offer(study.series_uid, "CT", path)
        assert streaming.take(study.series_uid, paths) is None
        # radiographs are not streamed
        streaming.offer("1.2.3", "CR", paths[0])
        assert streaming.take("1.2.3", paths[:1]) is None
    finally:
        streaming.stop()


def test_undecodable_instance_means_fallback(tmp_path: Path) -> None:
    study = generate_study("ct-head", tmp_path, seed=3, matrix=64)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    streaming = StreamingVolumes()
    try:
        for path in [*map(str, study.files), str(junk)]:
            streaming.offer(study.series_uid, "CT", path)
        assert streaming.take(study.series_uid, [str(p) for p in study.files]) is None
    finally:
        streaming.stop()
