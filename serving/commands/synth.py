"""``statlane synth``: write sets of synthetic DICOM studies with ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from models.synthetic import (
    Compression,
    EncoderMissingError,
    Fault,
    StudyKind,
    SynthSpecError,
    generate_study,
)
from models.synthetic.spec import PRIORITIES, seeded_int

DEFAULT_KINDS = (StudyKind.CT_HEAD, StudyKind.CT_CHEST, StudyKind.CR_CHEST, StudyKind.DX_CHEST)
"""Kinds written without ``--kind``: those with a finding. ct-abdomen (normal anatomy with an
organ label map, for segmentation) is written only when asked for."""


def _kinds(value: str) -> list[StudyKind]:
    try:
        return [StudyKind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        choices = ", ".join(k.value for k in StudyKind)
        raise argparse.ArgumentTypeError(f"{exc}; choose from {choices}") from exc


def _rate(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"finding rate must be within 0..1, got {value}")
    return rate


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``synth`` and its options."""
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic DICOM studies (CT head/chest/abdomen, CR/DX chest) with ground truth",
        description="Write synthetic studies with made-up identities; same seed, same bytes.",
    )
    parser.add_argument("--out", type=Path, default=Path("./synth-out"), help="output folder")
    parser.add_argument(
        "--kind",
        type=_kinds,
        action="append",
        help="study kind, repeatable or comma separated (default: ct-head, ct-chest, cr-chest, "
        "dx-chest; ct-abdomen only when named)",
    )
    parser.add_argument("--count", type=int, default=1, help="studies per kind (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument(
        "--finding-rate",
        type=_rate,
        default=0.5,
        help="fraction of studies with a finding, 0..1 (default 0.5); kinds without a finding "
        "(ct-abdomen) never get one",
    )
    parser.add_argument("--slices", type=int, default=None, help="CT slices")
    parser.add_argument("--thickness", type=float, default=None, help="CT slice thickness, mm")
    parser.add_argument("--matrix", type=int, default=None, help="rows = columns, pixels")
    parser.add_argument("--tilt", type=float, default=0.0, help="gantry tilt, degrees (ct-head)")
    parser.add_argument(
        "--compression", choices=[c.value for c in Compression], default=Compression.NONE.value
    )
    parser.add_argument("--fault", choices=[f.value for f in Fault], default=None)
    parser.add_argument("--priority", choices=PRIORITIES, default="ROUTINE", type=str.upper)
    parser.set_defaults(func=run)


def _with_finding(seed: int, kind: StudyKind, index: int, rate: float) -> bool:
    """Deterministic per (seed, kind, index): exactly round(rate * count) is not promised,
    but the same arguments always choose the same studies. Always False for a kind that has no
    finding (ct-abdomen), so ``--finding-rate`` cannot make its request impossible."""
    if not kind.has_finding:
        return False
    draw = seeded_int("finding", seed, kind.value, index) / float(2**64)
    return draw < rate


def _fault_for(kind: StudyKind, fault: str | None) -> Fault | None:
    """Series faults (missing slice, ...) go to CT kinds only; file faults go to every kind."""
    if fault is None:
        return None
    planted = Fault(fault)
    return planted if kind.is_ct or not planted.needs_series else None


def run(args: argparse.Namespace) -> int:
    """Generate ``count`` studies per kind; prints one line per study (no patient names)."""
    kinds: list[StudyKind] = (
        [k for group in args.kind for k in group] if args.kind else list(DEFAULT_KINDS)
    )
    kinds = list(dict.fromkeys(kinds))
    if args.count < 1:
        print("statlane synth: --count must be >= 1", file=sys.stderr)
        return 2
    jobs = [(kind, index) for kind in kinds for index in range(args.count)]
    with tqdm(total=len(jobs), desc="synth", unit="study", file=sys.stderr) as progress:
        for kind, index in jobs:
            seed = seeded_int("study", args.seed, kind.value, index) % 2**31
            finding = _with_finding(args.seed, kind, index, args.finding_rate)
            try:
                study = generate_study(
                    kind,
                    args.out,
                    seed=seed,
                    finding=finding,
                    slices=args.slices if kind.is_ct else None,
                    slice_thickness_mm=args.thickness if kind.is_ct else None,
                    matrix=args.matrix,
                    gantry_tilt_deg=args.tilt if kind is StudyKind.CT_HEAD else 0.0,
                    compression=args.compression,
                    fault=_fault_for(kind, args.fault),
                    priority=args.priority,
                )
            except (SynthSpecError, EncoderMissingError) as exc:
                progress.close()
                print(f"statlane synth: {kind.value}: {exc}", file=sys.stderr)
                return 1
            progress.write(
                f"{study.accession_number}  {kind.value:<8}  "
                f"finding={'yes' if finding else 'no':<3}  files={len(study.files):<3}  "
                f"fault={study.fault.value if study.fault else '-'}  {study.study_dir}",
                file=sys.stdout,
            )
            progress.update(1)
    return 0
