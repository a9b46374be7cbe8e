"""Published MONAI model-zoo bundles with random weights, saved the way the bundles save theirs.

The fixtures under ``tests/fixtures/monai-bundles`` are the published configs, metadata,
``large_files.yml`` and licences, without weights. :func:`published_bundle` copies one into a
temporary folder and writes ``models/model.pt`` (the state dict of ``network_def`` with random
weights) and/or ``models/model.ts`` (the same network traced), and, unless told not to, puts
their md5 into ``large_files.yml`` as the bundle's own release does.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "monai-bundles"
SPLEEN = "spleen_ct_segmentation"
_NETWORKS: dict[tuple[str, int], Any] = {}


def network_of(name: str, seed: int = 0) -> Any:
    """The bundle's ``network_def`` built by MONAI's ConfigParser, random weights (cached)."""
    key = (name, seed)
    if key not in _NETWORKS:
        from monai.bundle import ConfigParser

        config = next((FIXTURES / name / "configs").glob("inference.*"))
        parser = ConfigParser()
        parser.read_config(str(config))
        torch.manual_seed(seed)
        network = parser.get_parsed_content("network_def", instantiate=True)
        network.eval()
        _NETWORKS[key] = network
    return _NETWORKS[key]


def published_bundle(
    root: Path,
    name: str = SPLEEN,
    *,
    pt: bool = True,
    ts: bool = False,
    seed: int = 0,
    checksums: bool = True,
) -> Path:
    """``root/<name>``: the fixture bundle with random weights in ``models/``.

    Args:
        root: Where the copy goes.
        name: Fixture bundle folder name.
        pt: Write ``models/model.pt`` (a state dict, as the bundle ships it).
        ts: Write ``models/model.ts`` (TorchScript, traced at the inferer's roi size).
        seed: Seed of the random weights.
        checksums: Put the new files' md5 into ``large_files.yml``; False keeps the published
            checksums (which the random weights do not match).
    """
    bundle = root / name
    shutil.copytree(FIXTURES / name, bundle)
    models = bundle / "models"
    models.mkdir(exist_ok=True)
    network = network_of(name, seed)
    if pt:
        torch.save(network.state_dict(), models / "model.pt")
    if ts:
        with torch.no_grad():
            traced = torch.jit.trace(network, torch.rand(1, 1, 96, 96, 96), check_trace=False)
        traced.save(str(models / "model.ts"))
    if checksums:
        listing = next(p for p in bundle.glob("large_files.*"))
        data = yaml.safe_load(listing.read_text(encoding="utf-8"))
        for item in data["large_files"]:
            file = bundle / item["path"]
            if file.is_file():
                item["hash_type"] = "md5"
                item["hash_val"] = hashlib.md5(file.read_bytes()).hexdigest()
        listing.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return bundle
