"""``statlane simulate``: capacity planning with the production scheduler on a virtual clock.

Arrival rates per class and a number of devices in; per-class latency percentiles, deadline-miss
rates and utilization out, for each device count asked. It answers "how many GPUs does this
hospital network need for its stat mix": the smallest device count with no stat deadline missed.
Latency profiles come from a JSON file ``{"model@1": {"max_batch": 4, "seconds": {"1": 0.1}}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from router.vocabulary import PriorityClass
from serving.scheduler import LatencyTable, ModelLatency, Scheduler, SchedulerConfig
from serving.scheduler.simulator import simulate
from serving.scheduler.workload import MixEntry, class_metrics, poisson_arrivals


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``statlane simulate``."""
    parser = subparsers.add_parser("simulate", help="capacity planning with the real scheduler")
    parser.add_argument("--profiles", type=Path, required=True, help="latency profiles (JSON)")
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="CLASS:MODEL:PER_HOUR[:CHUNKS]",
        help="arrivals, e.g. stat:ich-ct-head@2:30 (repeatable)",
    )
    parser.add_argument("--devices", default="1", help="device counts to try, e.g. 1,2,4")
    parser.add_argument("--hours", type=float, default=1.0, help="simulated time, hours")
    parser.add_argument("--policy", default="edf", choices=["fifo", "strict-priority", "edf"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def load_profiles(path: Path) -> LatencyTable:
    """Read ``{"model@v": {"max_batch": n, "seconds": {"batch": s}}}``; ValueError if malformed."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return LatencyTable(
            {
                model: ModelLatency.from_mapping(
                    {int(b): float(s) for b, s in entry["seconds"].items()},
                    int(entry["max_batch"]),
                )
                for model, entry in raw.items()
            }
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a latency profile file ({error})") from error


def parse_rates(specs: list[str]) -> list[tuple[PriorityClass, str, float, int]]:
    """``CLASS:MODEL:PER_HOUR[:CHUNKS]`` → (class, model, rate per hour, chunks)."""
    parsed = []
    for spec in specs:
        parts = spec.split(":")
        try:
            if len(parts) not in (3, 4):
                raise ValueError("expected CLASS:MODEL:PER_HOUR[:CHUNKS]")
            chunks = int(parts[3]) if len(parts) == 4 else 1
            rate = float(parts[2])
            if rate <= 0 or chunks < 1:
                raise ValueError("rate must be > 0 and chunks >= 1")
            parsed.append((PriorityClass(parts[0]), parts[1], rate, chunks))
        except ValueError as error:
            raise ValueError(f"--rate {spec!r}: {error}") from error
    if not parsed:
        raise ValueError("give at least one --rate")
    return parsed


def plan_capacity(
    latency: LatencyTable,
    rates: list[tuple[PriorityClass, str, float, int]],
    devices: list[int],
    hours: float,
    policy: str,
    seed: int,
) -> list[dict[str, Any]]:
    """Simulate each device count; one result dict per count."""
    total = sum(rate for _, _, rate, _ in rates)
    mix = [
        MixEntry(model, priority, rate / total, (0,), chunks)
        for priority, model, rate, chunks in rates
    ]
    results = []
    for count in devices:
        config = SchedulerConfig(devices=count)
        tasks = poisson_arrivals(mix, total / 3600.0, hours * 3600.0, config, seed)
        outcome = simulate(Scheduler(latency, policy, config), tasks)
        span = max(outcome.end_s, 1e-9)
        results.append(
            {
                "devices": count,
                "tasks": len(tasks),
                "utilization": outcome.busy_s / (span * count),
                "classes": class_metrics(tasks, outcome.completions),
            }
        )
    return results


def run(args: argparse.Namespace) -> int:
    """Print per-class latency and misses per device count; name the smallest safe count."""
    try:
        latency = load_profiles(args.profiles)
        rates = parse_rates(args.rate)
        devices = [int(d) for d in str(args.devices).split(",")]
        for _, model, _, _ in rates:
            latency.model(model)
        results = plan_capacity(latency, rates, devices, args.hours, args.policy, args.seed)
    except (ValueError, KeyError) as error:
        print(f"statlane simulate: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'devices':>7} {'class':<8} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8} {'misses':>7} util")
    enough = None
    for result in results:
        for name, m in sorted(result["classes"].items()):
            print(
                f"{result['devices']:>7} {name:<8} {m['p50_s']:8.3f} {m['p95_s']:8.3f} "
                f"{m['p99_s']:8.3f} {int(m['deadline_misses']):>7} {result['utilization']:.2f}"
            )
        stat = result["classes"].get("stat", {"deadline_misses": 0})
        if enough is None and stat["deadline_misses"] == 0:
            enough = result["devices"]
    print(
        f"smallest device count with no stat deadline missed: {enough}"
        if enough is not None
        else "no device count tried meets every stat deadline"
    )
    return 0
