"""Shared helpers that write a benchmark's three result files in the shape of benchmarks.md.

Every benchmark builds one :class:`Report` (raw ``runs``, derived ``ratios``, stated ``targets``)
and calls :func:`write_report`, which writes ``<name>.json``, ``<name>.md`` and ``<name>.png``
(``<name>.smoke.*`` for ``--smoke``, so a short run never overwrites full results).
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from models.machine import machine_info

REQUIRED_KEYS = (
    "benchmark",
    "when",
    "machine",
    "command",
    "smoke",
    "workload",
    "runs",
    "ratios",
    "targets",
)


def progress(message: str) -> None:
    """One progress line on stderr (stdout stays free for machine-readable output)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a ``Z`` suffix, whole seconds."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def command_line() -> str:
    """The command that produced the results, as a user would retype it."""
    module = sys.modules["__main__"].__spec__
    if module is None:
        head = ["python", sys.argv[0]]
    else:  # a package run as ``python -m package`` executes ``package.__main__``
        head = ["python", "-m", module.name.removesuffix(".__main__")]
    return shlex.join([*head, *sys.argv[1:]])


@dataclass
class Report:
    """What a benchmark measured; ``ratios`` come from ``runs`` only, ``targets`` state goals."""

    benchmark: str
    smoke: bool
    workload: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: dict[str, dict[str, float]] = field(default_factory=dict)
    when: str = field(default_factory=utc_now)
    command: str = field(default_factory=command_line)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in the order benchmarks.md shows."""
        return {key: getattr(self, key) for key in REQUIRED_KEYS}

    def target_status(self) -> dict[str, bool]:
        """For each target: is the ratio of the same name met?"""
        status = {}
        for key, goal in self.targets.items():
            value = self.ratios.get(key)
            ok = value is not None
            if ok and "at_least" in goal:
                ok = value >= goal["at_least"]  # type: ignore[operator]
            if ok and "at_most" in goal:
                ok = value <= goal["at_most"]  # type: ignore[operator]
            status[key] = ok
        return status


def result_paths(out_dir: Path, name: str, smoke: bool) -> dict[str, Path]:
    """Where the three files go: ``<name>.json/.md/.png`` or ``<name>.smoke.*``."""
    stem = f"{name}.smoke" if smoke else name
    return {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get 4 significant digits."""

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_markdown(report: Report, why_missed: dict[str, str] | None = None) -> str:
    """The ratios-versus-targets table, with a reason line under each missed target."""
    status = report.target_status()
    rows = []
    for key, goal in report.targets.items():
        bound = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in goal.items())
        rows.append([key, report.ratios.get(key, "n/a"), bound, "met" if status[key] else "MISSED"])
    text = markdown_table(["ratio", "value", "target", "status"], rows)
    for key, ok in status.items():
        if not ok and why_missed and key in why_missed:
            text += f"\n\n**{key} missed:** {why_missed[key]}"
    return text


def write_report(
    report: Report, out_dir: Path, markdown_body: str, figure: Figure
) -> dict[str, Path]:
    """Write JSON, markdown (a header naming machine and command, then ``markdown_body``) and PNG.

    Returns:
        The three paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = result_paths(out_dir, report.benchmark, report.smoke)
    paths["json"].write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    m = report.machine
    head = [
        f"# {report.benchmark}{' (smoke: not a result)' if report.smoke else ''}",
        "",
        f"- when: {report.when}",
        f"- machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none (CPU run)'}, "
        f"Python {m['python']}",
        f"- command: `{report.command}`",
        "",
        "",
    ]
    paths["md"].write_text("\n".join(head) + markdown_body.rstrip() + "\n", encoding="utf-8")
    figure.savefig(paths["png"], dpi=110, bbox_inches="tight")
    return paths
