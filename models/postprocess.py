"""From raw model outputs to findings: activation, discretisation, components, measurements.

Everything here is a pure function of the outputs, the manifest's ``postprocessing`` and
``findings``, and the model grid's affine (RAS mm, from the preprocessing MetaTensor). Volumes
are in millilitres (voxel count x |det affine| mm³ / 1000), areas in mm², boxes both in model
voxels and in DICOM patient coordinates (LPS mm), so result objects never need the tensor.

Map findings (segmentation, heat maps) go through one label map per item (:func:`label_map`):
``discrete: threshold`` puts a voxel in the finding whose probability is highest among those
above ``voxel_threshold``; ``discrete: argmax`` in the finding whose channel scores highest
(MONAI ``AsDiscrete(argmax=True)``). Each label is then split into components, reduced to its
largest one (``largest_component``, MONAI ``KeepLargestConnectedComponent``) and filtered by
size, on its own bounding box only, so a 100-label whole-body model costs one pass over each
output plus work proportional to the labels' boxes. :func:`postprocess` and :func:`label_map`
share that computation: a finding's regions are exactly the voxels carrying its label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.manifest import FindingSpec, Manifest, Postprocessing

FloatArray = npt.NDArray[np.float64]
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Region:
    """One connected component of a finding's mask on the model grid.

    Attributes:
        bbox_voxel: ``(i0, j0, k0, i1, j1, k1)`` inclusive model-grid voxel indices.
        bbox_mm_lps: ``(x0, y0, z0, x1, y1, z1)`` min/max voxel-centre corners, LPS mm.
        volume_ml: Component volume, millilitres.
        probability: Highest voxel probability inside the component.
        key_slice: Model-grid slice index (third axis) where the component is largest.
        key_slice_bbox_voxel: ``(i0, j0, i1, j1)`` of the component on the key slice.
        area_mm2: Component area on the key slice, square millimetres.
    """

    bbox_voxel: tuple[int, ...]
    bbox_mm_lps: tuple[float, ...]
    volume_ml: float
    probability: float
    key_slice: int
    key_slice_bbox_voxel: tuple[int, int, int, int]
    area_mm2: float


@dataclass(frozen=True)
class Finding:
    """A finding of one study as the model reports it (no patient identity).

    ``volume_ml`` sums all kept regions; ``key_slice``, ``bbox_*`` and ``area_mm2`` describe the
    largest one. Map-free findings (classifiers) have only ``present`` and ``probability``.
    ``category_*`` is the manifest's ``FindingSpec.category`` (SEG segmented property category,
    e.g. SCT 91723000 Anatomical Structure for an organ); None for a lesion-like finding.
    ``laterality_*`` is ``FindingSpec.laterality`` (the side of a paired organ), else None.
    """

    name: str
    concept_value: str
    concept_scheme: str
    concept_meaning: str
    critical: bool
    present: bool
    probability: float
    volume_ml: float | None = None
    key_slice: int | None = None
    bbox_voxel: tuple[int, ...] | None = None
    bbox_mm_lps: tuple[float, ...] | None = None
    key_slice_bbox_voxel: tuple[int, int, int, int] | None = None
    area_mm2: float | None = None
    regions: list[Region] = field(default_factory=list)
    category_value: str | None = None
    category_scheme: str | None = None
    category_meaning: str | None = None
    laterality_value: str | None = None
    laterality_scheme: str | None = None
    laterality_meaning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return asdict(self)


def activate(values: np.ndarray, activation: str) -> FloatArray:
    """Apply ``sigmoid``, ``softmax`` (over axis 0, the channel axis) or ``none``."""
    x = np.asarray(values, dtype=np.float64)
    if activation == "sigmoid":
        out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
        return out
    if activation == "softmax":
        e = np.exp(x - x.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)
    return x


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel of the grid, millilitres."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def pixel_area_mm2(affine: np.ndarray) -> float:
    """Area of one voxel face in the (i, j) plane, square millimetres."""
    a = np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(np.cross(a[:3, 0], a[:3, 1])))


def postprocess(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, affine_ras: np.ndarray, index: int = 0
) -> list[Finding]:
    """Findings of item ``index`` of a batch, in ``manifest.findings`` order.

    Each output is activated once, map outputs become one label map (see :func:`label_map`),
    and each finding's regions are measured on its own label's bounding box.

    Args:
        outputs: Raw outputs by name, each with the batch axis first.
        manifest: Supplies ``postprocessing`` and ``findings``.
        affine_ras: 4x4 model-grid voxel index → RAS mm (the preprocessing MetaTensor's affine).
        index: Which batch item.
    """
    return postprocess_with_labels(outputs, manifest, affine_ras, index)[0]


def postprocess_with_labels(
    outputs: Mapping[str, np.ndarray], manifest: Manifest, affine_ras: np.ndarray, index: int = 0
) -> tuple[list[Finding], np.ndarray | None]:
    """:func:`postprocess` and :func:`label_map` of item ``index`` from one segmentation pass.

    Returns:
        The findings, and the model-grid label map of the 3D map findings (None without one,
        or when map outputs of several spatial shapes share no label map).
    """
    names = {spec.output for spec in manifest.findings}
    item = {name: np.asarray(outputs[name])[index] for name in names}
    groups = _segment(item, manifest.findings, manifest.postprocessing, affine_ras)
    findings = _findings(item, manifest.findings, manifest.postprocessing, groups)
    labels = groups[0].labels if len(groups) == 1 and len(groups[0].spatial) == 3 else None
    return findings, labels


def label_map(
    outputs_item: Mapping[str, np.ndarray],
    manifest: Manifest,
    affine_ras: np.ndarray | None = None,
) -> np.ndarray | None:
    """The model-grid label map of one item: value ``v > 0`` is ``manifest.findings[v - 1]``.

    The voxels of each label are exactly the voxels of that finding's regions in
    :func:`postprocess` (same discretisation, overlaps, largest component and size filters).

    Args:
        outputs_item: Raw outputs of one item (batch axis removed), maps ``(C, X, Y, Z)``
            (or ``(C, X, Y)``).
        manifest: Supplies ``postprocessing`` and ``findings``.
        affine_ras: Model-grid voxel → RAS mm; needed only when the manifest drops components
            by size (``min_volume_ml``, ``min_area_mm2``).

    Returns:
        ``(X, Y, Z)`` (or ``(X, Y)``) ``uint8`` (``uint16`` beyond 255 findings), 0 background;
        None when no finding is read from a spatial map.

    Raises:
        ValueError: Map outputs of different spatial shapes, a channel the output lacks, or size
            filters without ``affine_ras``.
    """
    rules = manifest.postprocessing
    if affine_ras is None:
        if rules.min_volume_ml > 0.0 or rules.min_area_mm2 > 0.0:
            raise ValueError(
                f"{manifest.ident}: label_map needs affine_ras to drop components by size"
            )
        affine_ras = np.eye(4)
    groups = _segment(outputs_item, manifest.findings, rules, affine_ras)
    if not groups:
        return None
    if len(groups) > 1:
        shapes = ", ".join(str(g.spatial) for g in groups)
        raise ValueError(f"{manifest.ident}: map outputs of shapes {shapes} share no label map")
    group = groups[0]
    return group.labels[:, :, 0] if len(group.spatial) == 2 else group.labels


def finding_of(
    output: np.ndarray, spec: FindingSpec, rules: Postprocessing, affine_ras: np.ndarray
) -> Finding:
    """One finding from one item's output ``(C, ...)``: a vector (classifier) or a map."""
    item = {spec.output: np.asarray(output)}
    return _findings(item, [spec], rules, _segment(item, [spec], rules, affine_ras))[0]


def find_regions(prob: np.ndarray, rules: Postprocessing, affine_ras: np.ndarray) -> list[Region]:
    """Threshold a probability map ``(X, Y, Z)``, split it into components, drop small ones.

    Components are 26-connected; each smaller than ``min_volume_ml`` (3D maps) or whose key-slice
    area is below ``min_area_mm2`` is dropped. Without ``connected_components`` the whole mask
    is one region; with ``largest_component`` only the largest component is kept. Regions are
    returned largest first.
    """
    prob = np.asarray(prob, dtype=np.float64)
    mask = prob > rules.voxel_threshold
    if not mask.any():
        return []
    regions, _ = _regions(mask, prob, (0, 0, 0), rules, affine_ras, three_d=prob.shape[2] > 1)
    return regions


# ---- label maps ---------------------------------------------------------------------------------


def _label_dtype(count: int) -> type[np.unsignedinteger[Any]]:
    if count <= np.iinfo(np.uint8).max:
        return np.uint8
    if count <= np.iinfo(np.uint16).max:
        return np.uint16
    return np.uint32


@dataclass
class _Group:
    """The findings read from map outputs of one spatial shape, as one label map.

    Attributes:
        spatial: The outputs' spatial shape (2 or 3 axes).
        labels: ``(X, Y, Z)`` label map (a 2D map gets ``Z = 1``); ``v`` is ``specs[v - 1]``.
        prob: ``(X, Y, Z)`` probability of each labelled voxel's finding (0 on background).
        regions: Kept regions per finding index (largest first).
        peak: Per finding index, its channel's highest probability anywhere (lazy).
    """

    spatial: tuple[int, ...]
    labels: np.ndarray
    prob: FloatArray
    regions: dict[int, list[Region]] = field(default_factory=dict)
    peak: dict[int, Callable[[], float]] = field(default_factory=dict)


def _is_map(raw: np.ndarray) -> bool:
    return raw.ndim in (3, 4)


def _segment(
    item: Mapping[str, np.ndarray],
    specs: Sequence[FindingSpec],
    rules: Postprocessing,
    affine_ras: np.ndarray,
) -> list[_Group]:
    """Label maps (one per spatial shape) of the map findings of one item, filtered."""
    by_output: dict[str, list[int]] = {}
    for index, spec in enumerate(specs):
        by_output.setdefault(spec.output, []).append(index)
    groups: dict[tuple[int, ...], _Group] = {}
    dtype = _label_dtype(len(specs))
    for name, indices in by_output.items():
        raw = np.asarray(item[name])
        if not _is_map(raw):
            if raw.ndim > 4:
                raise ValueError(f"output {name!r} has {raw.ndim} axes; maps have at most 3")
            continue
        spatial = tuple(int(n) for n in raw.shape[1:])
        volume = raw if raw.ndim == 4 else raw[..., None]
        for index in indices:
            if not 0 <= specs[index].channel < volume.shape[0]:
                raise ValueError(
                    f"finding {specs[index].name!r}: output {name!r} has {volume.shape[0]} "
                    f"channels, no channel {specs[index].channel}"
                )
        chosen = [(index, specs[index]) for index in indices]
        if rules.discrete == "argmax":
            labels, prob, peak = _argmax_labels(volume, chosen, rules, dtype)
        else:
            labels, prob, peak = _threshold_labels(volume, chosen, rules, dtype)
        group = groups.get(spatial)
        if group is None:
            groups[spatial] = _Group(spatial, labels, prob, peak=peak)
            continue
        # another output on the same grid: a voxel goes to the more probable finding
        take = (labels > 0) & (prob > group.prob)
        group.labels[take] = labels[take]
        group.prob[take] = prob[take]
        group.peak.update(peak)
    for group in groups.values():
        _filter(group, rules, affine_ras)
    return list(groups.values())


def _threshold_labels(
    volume: np.ndarray,
    chosen: list[tuple[int, FindingSpec]],
    rules: Postprocessing,
    dtype: type[np.unsignedinteger[Any]],
) -> tuple[np.ndarray, FloatArray, dict[int, Callable[[], float]]]:
    """Each voxel to the most probable finding above ``voxel_threshold`` (earlier on ties).

    Every voxel of the output is activated once: softmax over all channels at once; sigmoid
    (elementwise) channel by channel, only the channels findings read, each once.
    """
    everything = activate(volume, "softmax") if rules.activation == "softmax" else None
    readers = Counter(spec.channel for _, spec in chosen)
    shared: dict[int, FloatArray] = {}  # channels two findings read: kept, not recomputed
    labels = np.zeros(volume.shape[1:], dtype=dtype)
    best = np.zeros(volume.shape[1:], dtype=np.float64)
    peak: dict[int, Callable[[], float]] = {}
    for index, spec in chosen:
        if everything is not None:
            p = everything[spec.channel]
        elif spec.channel in shared:
            p = shared[spec.channel]
        else:
            p = activate(volume[spec.channel], rules.activation)
            if readers[spec.channel] > 1:
                shared[spec.channel] = p
        peak[index] = partial(float, float(p.max(initial=0.0)))
        win = p > rules.voxel_threshold
        win &= p > best
        labels[win] = index + 1
        best[win] = p[win]
    return labels, best, peak


def _argmax_labels(
    volume: np.ndarray,
    chosen: list[tuple[int, FindingSpec]],
    rules: Postprocessing,
    dtype: type[np.unsignedinteger[Any]],
) -> tuple[np.ndarray, FloatArray, dict[int, Callable[[], float]]]:
    """Each voxel to the channel scoring highest (first on ties), as ``np.argmax`` over axis 0.

    Activations are monotonic, so the winner is found on the raw scores; the probability of
    the winning channel is computed once per voxel. A channel of no finding (background) wins
    its voxels too, leaving them unlabelled; a channel read by two findings labels the first.
    """
    channels = volume.shape[0]
    top = np.array(volume[0], dtype=np.float64)
    winner = np.zeros(volume.shape[1:], dtype=np.uint16 if channels < 65536 else np.uint32)
    for c in range(1, channels):  # 10x faster than np.argmax(axis=0) on (C, X, Y, Z)
        score = volume[c]
        better = score > top
        winner[better] = c
        np.maximum(top, score, out=top)
    to_label = np.zeros(channels, dtype=dtype)
    for index, spec in reversed(chosen):
        to_label[spec.channel] = index + 1
    labels = to_label[winner]
    softmax = rules.activation == "softmax"
    total = np.zeros(volume.shape[1:] if softmax else (), dtype=np.float64)
    if softmax:  # the winner's probability: 1 / sum_c exp(score_c - top)
        for c in range(channels):
            total += np.exp(np.subtract(volume[c], top, dtype=np.float64))
        prob = np.reciprocal(total)
    else:
        prob = activate(top, rules.activation)
        if prob is top:  # "none" hands back its input; top is still needed
            prob = prob.copy()
    prob[labels == 0] = 0.0
    lse: list[FloatArray] = []  # log-sum-exp per voxel, computed on demand

    def peak_of(channel: int) -> float:
        """The channel's highest probability anywhere (absent labels only: one pass each)."""
        if softmax:
            if not lse:
                lse.append(top + np.log(total))
            return float(np.exp((volume[channel] - lse[0]).max()))
        return float(activate(np.asarray([volume[channel].max()]), rules.activation)[0])

    peak: dict[int, Callable[[], float]] = {
        index: partial(peak_of, spec.channel) for index, spec in chosen
    }
    return labels, prob, peak


def _filter(group: _Group, rules: Postprocessing, affine_ras: np.ndarray) -> None:
    """Components, largest component and size filters per label, each on its own box only."""
    three_d = group.labels.shape[2] > 1
    boxes = ndimage.find_objects(group.labels)
    for value, box in enumerate(boxes, 1):
        if box is None:
            continue
        sub = group.labels[box]  # views: dropped voxels are cleared in the label map
        prob = group.prob[box]
        mask = sub == value
        offset = tuple(int(s.start) for s in box)
        regions, kept = _regions(mask, prob, offset, rules, affine_ras, three_d=three_d)
        if kept is not mask:
            dropped = mask & ~kept
            sub[dropped] = 0
            prob[dropped] = 0.0
        if regions:
            group.regions[value - 1] = regions


_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected, like MONAI's default


def _regions(
    mask: np.ndarray,
    prob: np.ndarray,
    offset: tuple[int, ...],
    rules: Postprocessing,
    affine_ras: np.ndarray,
    *,
    three_d: bool,
) -> tuple[list[Region], np.ndarray]:
    """Kept regions of one label's mask (a box of the grid at ``offset``) and the kept voxels.

    ``three_d`` says the grid (not the box) has several slices: ``min_volume_ml`` applies.
    Returns ``mask`` itself as the kept voxels when nothing was dropped.
    """
    voxel_ml = voxel_volume_ml(affine_ras)
    face_mm2 = pixel_area_mm2(affine_ras)
    if rules.connected_components or rules.largest_component:
        components, count = ndimage.label(mask, structure=_CONNECTIVITY)
        boxes = ndimage.find_objects(components)
        candidates = list(range(1, count + 1))
        if rules.largest_component and count > 1:
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            candidates = [int(np.argmax(sizes[1:])) + 1]
    else:
        components, count = None, 1
        boxes = [tuple(slice(0, n) for n in mask.shape)]
        candidates = [1]
    regions = []
    kept = []
    for label in candidates:
        box = boxes[label - 1]
        assert box is not None
        component = mask[box] if components is None else components[box] == label
        corner = tuple(o + int(s.start) for o, s in zip(offset, box, strict=True))
        region = _measure(component, prob[box], corner, affine_ras, voxel_ml, face_mm2)
        if three_d and region.volume_ml < rules.min_volume_ml:
            continue
        if region.area_mm2 < rules.min_area_mm2:
            continue
        regions.append(region)
        kept.append(label)
    if len(kept) == count:
        return sorted(regions, key=lambda r: -r.volume_ml), mask
    keep = np.zeros(count + 1, dtype=bool)
    keep[kept] = True
    voxels = keep[components] if components is not None else np.zeros_like(mask)
    return sorted(regions, key=lambda r: -r.volume_ml), voxels


def _measure(
    component: np.ndarray,
    prob: np.ndarray,
    corner: tuple[int, ...],
    affine_ras: np.ndarray,
    voxel_ml: float,
    face: float,
) -> Region:
    """One component, given on its tight bounding box whose first voxel is ``corner``."""
    lo = np.asarray(corner, dtype=np.int64)
    hi = lo + np.asarray(component.shape, dtype=np.int64) - 1
    per_slice = np.count_nonzero(component, axis=(0, 1))
    key_local = int(np.argmax(per_slice))
    on_key = component[:, :, key_local]
    rows = np.flatnonzero(on_key.any(axis=1))
    cols = np.flatnonzero(on_key.any(axis=0))
    corners = np.array([[*lo, 1.0], [*hi, 1.0]], dtype=np.float64).T
    lps = (_RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64) @ corners)[:3]
    return Region(
        bbox_voxel=tuple(int(v) for v in (*lo, *hi)),
        bbox_mm_lps=tuple(float(v) for v in (*lps.min(axis=1), *lps.max(axis=1))),
        volume_ml=float(per_slice.sum()) * voxel_ml,
        probability=float(prob[component].max()),
        key_slice=int(lo[2]) + key_local,
        key_slice_bbox_voxel=(
            int(lo[0] + rows[0]),
            int(lo[1] + cols[0]),
            int(lo[0] + rows[-1]),
            int(lo[1] + cols[-1]),
        ),
        area_mm2=float(per_slice[key_local]) * face,
    )


# ---- findings -----------------------------------------------------------------------------------


def _findings(
    item: Mapping[str, np.ndarray],
    specs: Sequence[FindingSpec],
    rules: Postprocessing,
    groups: Sequence[_Group],
) -> list[Finding]:
    regions: dict[int, list[Region]] = {}
    peaks: dict[int, Callable[[], float]] = {}
    for group in groups:
        regions.update(group.regions)
        peaks.update(group.peak)
    activated: dict[str, FloatArray] = {}  # classifier outputs, activated once each
    findings = []
    for index, spec in enumerate(specs):
        base = Finding(
            name=spec.name,
            concept_value=spec.concept.value,
            concept_scheme=spec.concept.scheme,
            concept_meaning=spec.concept.meaning,
            critical=spec.critical,
            present=False,
            probability=0.0,
            category_value=spec.category.value if spec.category else None,
            category_scheme=spec.category.scheme if spec.category else None,
            category_meaning=spec.category.meaning if spec.category else None,
            laterality_value=spec.laterality.value if spec.laterality else None,
            laterality_scheme=spec.laterality.scheme if spec.laterality else None,
            laterality_meaning=spec.laterality.meaning if spec.laterality else None,
        )
        if index not in peaks:  # a classifier: one probability per finding
            if spec.output not in activated:
                activated[spec.output] = activate(item[spec.output], rules.activation)
            prob = activated[spec.output]
            if prob.ndim >= 1 and prob.shape[0] > spec.channel:
                prob = prob[spec.channel]
            p = float(np.ravel(prob)[0])
            findings.append(replace(base, present=p >= rules.presence_threshold, probability=p))
            continue
        findings.append(_map_finding(base, regions.get(index, []), peaks[index], rules))
    return findings


def _map_finding(
    base: Finding, regions: list[Region], peak: Callable[[], float], rules: Postprocessing
) -> Finding:
    kept_p = max((r.probability for r in regions), default=None)
    # With nothing kept, the map's maximum still ranks the study (for ROC); it is never present.
    p = kept_p if kept_p is not None else peak()
    present = kept_p is not None and kept_p >= rules.presence_threshold
    if not regions:
        return replace(base, present=present, probability=p, volume_ml=0.0)
    largest = max(regions, key=lambda r: r.volume_ml)
    return replace(
        base,
        present=present,
        probability=p,
        volume_ml=float(sum(r.volume_ml for r in regions)),
        key_slice=largest.key_slice,
        bbox_voxel=largest.bbox_voxel,
        bbox_mm_lps=largest.bbox_mm_lps,
        key_slice_bbox_voxel=largest.key_slice_bbox_voxel,
        area_mm2=largest.area_mm2,
        regions=regions,
    )
