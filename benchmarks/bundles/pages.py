"""The markdown page and the figure of a bundles report."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from benchmarks.bundles.workload import AIM, E2E_KEY, STAGES, TS_KEY
from benchmarks.report import Report, markdown_table, targets_markdown

STAGE_COLORS = {
    "load": "tab:blue",
    "preprocess": "tab:orange",
    "inference": "tab:green",
    "postprocess": "tab:purple",
    "placement": "tab:red",
    "other": "tab:gray",
}
INFERENCE_OPTIONS = (
    "ONNX Runtime already runs with every graph optimisation (ORT_ENABLE_ALL, its default); "
    "what is left is a faster execution provider (oneDNN, OpenVINO), a frozen "
    "optimize_for_inference TorchScript, or bf16/fp16 where the hardware has it (the bundle's "
    "evaluator itself uses amp on GPU)."
)
SLOWER = {
    "load": "statlane's loader reads every header, then the pixels one file after another; a "
    "thread pool decoding pixel data would shorten it.",
    "preprocess": "the separable resample (preprocessing.resample._take) gathers along strided "
    "axes with torch index_select on the intra-op threads; on a busy 2-core machine one "
    "descheduled thread stalls the whole pass (one gather measured at 0.05 s alone, 1.7 s under "
    "load). The gathers are memory-bound: running them on one thread (torch.set_num_threads(1) "
    "around the passes, or numpy.take) keeps the stage at ~0.7-0.9 s whatever the load.",
    "inference": "both run the same 3D UNet over the same windows (each voxel in ~8 of them at "
    "the bundle's overlap 0.5); the backend's time per window decides it. " + INFERENCE_OPTIONS,
    "postprocess": "statlane computes findings (argmax, components, volumes, key slice, boxes) "
    "that the bundle's path never computes (its postprocess is the softmax alone); the "
    "segmentation is computed once and its labels handed to placement. _argmax_labels keeps "
    "its running maximum in float64 (float32 would do).",
    "placement": "statlane argmaxes on the model grid and places labels with per-axis lookups; "
    "check that the axis-aligned fast path of resample_labels was taken.",
}
NOTES = """\
Stages. statlane: `infer_with_package`'s own `stage_s` (load = DICOM files to volume,
preprocess = the manifest's pipeline, inference = every sliding-window patch and the blend,
postprocess = findings, placement = label map on the source grid); `other` is the end-to-end
time not in a stage (manifest read, key-instance lookup). MONAI: the bundle's `preprocessing`
Compose split after `EnsureChannelFirstd` (load = `LoadImaged(reader="PydicomReader")` +
`EnsureChannelFirstd`, preprocess = `Orientationd`, `Spacingd`, `ScaleIntensityRanged`,
`EnsureTyped`), inference = the bundle's `SlidingWindowInferer` on the network in eval mode under
`torch.inference_mode()`, postprocess = `Activationsd` (softmax), placement = `Invertd`
(probabilities back to the source grid, bilinear) + `AsDiscreted` (argmax). The transforms,
inferer and network are built by `monai.bundle.ConfigParser` from the bundle's
`configs/inference.json` (reader overridden, `SaveImaged` dropped, state dict loaded into
`network_def`). Not timed: model load (reported apart), bundle import, study generation.

Method. Each system runs in its own spawned process that loads its model once, so peak RSS
(`VmHWM` of that process: imports, model, warm-up and repeats) belongs to one system alone.
`ru_maxrss` (also in the JSON) is not used: a spawned child inherits its parent's high-water
mark on Linux, here the driver's (torch, MONAI, the bundle import).
The processes start one after another; warm-ups run first, then the timed repeats interleave,
one system at a time, the order rotated each round. All systems read the same folder of DICOM
files (in the page cache after the warm-up). Threads: torch's intra-op threads in every process
(`torch_threads` in the JSON), ONNX Runtime's default. The machine is shared with other work:
expect noise, and read the spread table before a single number.

Agreement. With random weights the labels mean nothing anatomically, but the systems run the
same network on the same grid, so they must agree. MONAI inverts softmax probabilities to the
source grid with bilinear interpolation and then takes the argmax; statlane takes the argmax on
the model grid and places labels nearest-neighbour. The random network's minority label is
speckle: isolated model voxels (at 512x512x200, background: ~164k components of median size 4
source voxels, i.e. one model voxel each). Statlane keeps every speck; MONAI's interpolation
mixes each with its neighbours, which belong to the majority label, and erases most of them.
Hence a high spleen Dice and a low background Dice. A trained network's labels are compact
regions, and there the two placements differ only along their borders. On coarse source grids
(the smoke run) a second, smaller difference shows along the outer edge: statlane gives 0 to
source voxels past the model grid's last voxel centre (inside that voxel's extent), while
MONAI's `Spacingd` inverse pads with the border value.
"""


def _mib(value: float) -> float:
    return value / 2**20


def median_repeat(metrics: dict[str, Any]) -> int:
    """Index of the repeat whose end-to-end time is the median (the lower one of an even count)."""
    order = sorted(range(len(metrics["e2e_s"])), key=lambda i: metrics["e2e_s"][i])
    return order[(len(order) - 1) // 2]


def where_time_goes(report: Report) -> str:
    """statlane minus monai, stage by stage (largest first), and why where statlane is slower."""
    by = {run["system"]: run["metrics"] for run in report.runs}
    lines, slower = [], set()
    for backend in ("statlane-onnxruntime", "statlane-torchscript"):
        diffs = sorted(
            (
                (by[backend]["median_stage_s"][s] - by["monai"]["median_stage_s"][s], s)
                for s in STAGES
            ),
            reverse=True,
        )
        parts = [f"{stage} {delta:+.2f} s" for delta, stage in diffs]
        lines.append(f"- {backend} minus monai, per stage (median): " + ", ".join(parts))
        # noise-level differences are not findings: 50 ms and 10% of monai's stage at least
        slower |= {
            stage
            for delta, stage in diffs
            if delta > max(0.05, 0.1 * by["monai"]["median_stage_s"][stage])
        }
    for stage in STAGES:
        if stage in slower:
            lines.append(f"- **{stage}: statlane is slower here.** {SLOWER[stage]}")
    return "\n".join(lines)


def aim_text(report: Report) -> str:
    """Whether the e2e ratio reaches the aim, and what it would take."""
    ratio = report.ratios[E2E_KEY]
    if ratio <= AIM:
        return f"The e2e target aims at {AIM}: reached ({ratio:.3f})."
    by = {run["system"]: run["metrics"] for run in report.runs}
    mine = by["statlane-onnxruntime"]
    need = mine["median_e2e_s"] - AIM * by["monai"]["median_e2e_s"]
    infer = mine["median_stage_s"]["inference"]
    rest = mine["median_e2e_s"] - infer
    return (
        f"The e2e target aims at {AIM}: not reached ({ratio:.3f}). statlane-onnxruntime would "
        f"need {need:.2f} s less of its {mine['median_e2e_s']:.2f} s; inference is "
        f"{infer:.2f} s ({infer / mine['median_e2e_s']:.0%}) and everything else {rest:.2f} s. "
        "Postprocess (the findings: components, volumes, key slice, boxes, which the bundle's "
        "own path does not compute) is the largest of the rest; most has to come from the "
        "time per window. " + INFERENCE_OPTIONS
    )


def why_missed(report: Report) -> dict[str, str]:
    """A reason for a missed e2e target: the stage that costs statlane most, and a fix."""
    by = {run["system"]: run["metrics"] for run in report.runs}
    mine, theirs = by["statlane-onnxruntime"], by["monai"]
    slowest = max(STAGES, key=lambda s: mine["median_stage_s"][s] - theirs["median_stage_s"][s])
    share = mine["median_stage_s"][slowest] / mine["median_e2e_s"]
    text = (
        f"statlane-onnxruntime spends {mine['median_stage_s'][slowest]:.2f} s in {slowest} "
        f"({share:.0%} of its end-to-end time) against monai's "
        f"{theirs['median_stage_s'][slowest]:.2f} s. {SLOWER[slowest]} "
        f"The torchscript backend's ratio is {report.ratios[TS_KEY]:.2f}."
    )
    return {E2E_KEY: text}


def markdown(report: Report) -> str:
    """The page body: results, agreement, ratios and targets, where time goes, notes."""
    w = report.workload
    rows, agree_rows = [], []
    for run in report.runs:
        m = run["metrics"]
        rows.append(
            [
                run["system"],
                m["median_e2e_s"],
                m["min_e2e_s"],
                *(m["median_stage_s"][s] for s in STAGES),
                m["median_other_s"],
                m["model_load_s"],
                _mib(m["peak_rss_bytes"]),
                _mib(m["rss_after_load_bytes"]),
            ]
        )
        agree_rows.append(
            [
                run["system"],
                m["spleen_fraction"],
                m.get("dice_spleen_vs_monai", "-"),
                m.get("dice_background_vs_monai", "-"),
                m.get("voxels_equal_vs_monai", "-"),
                m.get("dice_spleen_vs_statlane_onnxruntime", "-"),
                m.get("dice_background_vs_statlane_onnxruntime", "-"),
            ]
        )
    header = ["system", "median e2e s", "min e2e s", *(f"{s} s" for s in STAGES), "other s"]
    header += ["model load s", "peak RSS MiB", "RSS after load MiB"]
    agree_header = ["system", "spleen fraction", "Dice spleen vs monai", "Dice bg vs monai"]
    agree_header += [
        "voxels equal vs monai",
        "Dice spleen vs onnxruntime",
        "Dice bg vs onnxruntime",
    ]
    stage_rows = [
        [
            stage,
            *(
                report.ratios.get(f"{b}_over_monai_{stage}", "n/a")
                for b in ("onnxruntime", "torchscript")
            ),
        ]
        for stage in STAGES
    ]
    spread_rows = []
    for run in report.runs:
        m = run["metrics"]
        cells = [f"{min(m['e2e_s']):.2f}-{max(m['e2e_s']):.2f}"]
        cells += [f"{min(m['stage_s'][s]):.2f}-{max(m['stage_s'][s]):.2f}" for s in STAGES]
        spread_rows.append([run["system"], *cells, " ".join(f"{v:.1f}" for v in m["warmup_e2e_s"])])
    spread_header = ["system", "e2e s", *(f"{s} s" for s in STAGES), "warm-up e2e s"]
    grid = w.get("model_grid") or "?"
    override = w["smoke_pixdim_override"]
    body = (
        "The MONAI model-zoo spleen bundle (3D UNet, random weights) on a synthetic abdominal "
        f"CT of "
        f"{w['slices']} x {w['matrix']}x{w['matrix']} slices ({w['slice_thickness_mm']} mm), "
        f"from the DICOM folder to a label map on the source grid, device {w['device']}. Model "
        f"grid {grid} voxels at {w['preprocessing']['pixdim_mm']} mm, "
        f"{w.get('windows', '?')} sliding-window patches of {w['inferer']['roi_size']} "
        f"(overlap {w['inferer']['overlap']}, sw_batch_size {w['inferer']['sw_batch_size']}). "
        f"{w['repeats']} timed repeats after {w['warmup']} warm-up per system; medians.\n"
    )
    if override:
        body += f"\nSmoke: the bundle copy's Spacingd pixdim is {override} mm for every system.\n"
    body += (
        "\n## Results (seconds, median over repeats)\n\n"
        + markdown_table(header, rows)
        + "\n\n### Spread over the repeats (min-max, seconds)\n\n"
        + markdown_table(spread_header, spread_rows)
        + "\n\n## Agreement of the label maps (source grid, last repeat)\n\n"
        + markdown_table(agree_header, agree_rows)
        + "\n\n## Ratios and targets\n\n"
        + targets_markdown(report, why_missed(report))
        + f"\n\n{aim_text(report)} `{TS_KEY}` = {report.ratios[TS_KEY]:.3f} (no target).\n\n"
        + markdown_table(["stage", "onnxruntime / monai", "torchscript / monai"], stage_rows)
        + "\n\n## Where time goes\n\n"
        + where_time_goes(report)
        + "\n\n## Notes\n\n"
        + NOTES
    )
    return body


def figure(report: Report) -> Figure:
    """Stacked bars: seconds per stage of each system's median repeat (they add up to its median
    end-to-end time); and peak RSS."""
    fig = Figure(figsize=(11, 4))
    ax_t, ax_m = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    names = [run["system"] for run in report.runs]
    left = [0.0] * len(names)
    picks = [median_repeat(run["metrics"]) for run in report.runs]
    for stage in (*STAGES, "other"):
        key = "other_s" if stage == "other" else None
        widths = [
            max(
                run["metrics"]["other_s"][i] if key else run["metrics"]["stage_s"][stage][i],
                0.0,
            )
            for run, i in zip(report.runs, picks, strict=True)
        ]
        ax_t.barh(names, widths, left=left, color=STAGE_COLORS[stage], label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax_t.set_xlabel("seconds, DICOM folder -> label map on source grid (median repeat)")
    ax_t.invert_yaxis()
    ax_t.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=6, fontsize=8)
    colors = ["tab:green" if n.startswith("statlane") else "tab:gray" for n in names]
    ax_m.barh(names, [_mib(run["metrics"]["peak_rss_bytes"]) for run in report.runs], color=colors)
    ax_m.set_xlabel("peak RSS, MiB (own process)")
    ax_m.invert_yaxis()
    ax_m.set_yticklabels([])
    w = report.workload
    fig.suptitle(
        f"spleen bundle, {w['slices']} x {w['matrix']}^2 CT, {w['device']}"
        + (" (smoke: not a result)" if report.smoke else "")
    )
    return fig
