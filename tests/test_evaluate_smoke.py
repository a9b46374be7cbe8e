"""The evaluation's short form on the shipped packages (CI): keys present, rates sane."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluate import auc, evaluate_packages, rates, shipped_packages
from models.reference.recipes import TRAIN_SEEDS


def test_auc_is_mann_whitney() -> None:
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    rng = np.random.default_rng(0)
    scores, labels = rng.random(200), rng.random(200) > 0.5
    brute = np.mean(
        [[float(p > n) + 0.5 * float(p == n) for n in scores[~labels]] for p in scores[labels]]
    )
    assert auc(scores, labels) == pytest.approx(brute)
    assert math.isnan(auc([0.1], [True]))
    assert rates([True, False, True], [True, True, False]) == (0.5, 0.0)


def test_evaluation_seeds_must_be_held_out() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        evaluate_packages(shipped_packages()[:1], cases=2, seed=TRAIN_SEEDS[1])


def test_smoke_evaluation_of_shipped_packages() -> None:
    # 20 cases each; the heavy nodule model (about 2 s a case on 2 cores) gets 10.
    packages = shipped_packages()
    light = [p for p in packages if p.parent.name != "ct-chest-nodule"]
    heavy = [p for p in packages if p.parent.name == "ct-chest-nodule"]
    results = {
        r["system"]: r
        for r in [*evaluate_packages(light, cases=20), *evaluate_packages(heavy, cases=10)]
    }
    assert set(results) == {
        "ich-ct-head@1",
        "ich-ct-head@2",
        "cxr-pneumothorax@1",
        "ct-chest-nodule@1",
    }
    for result in results.values():
        metrics = result["metrics"]
        for key in ("sensitivity", "specificity", "auc"):
            assert 0.0 <= metrics[key] <= 1.0, (result["system"], key)
        for key in ("sensitivity", "specificity", "auc"):
            assert 0.0 <= result["baseline"]["metrics"][key] <= 1.0
    ich = results["ich-ct-head@2"]["metrics"]
    assert 0.0 <= ich["dice"] <= 1.0
    assert ich["median_volume_error"] >= 0.0
    assert ich["sensitivity"] >= 0.8
    assert ich["specificity"] >= 0.8
