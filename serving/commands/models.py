"""``statlane models``: list, show, validate, profile, export and import model packages.

Every failure is one line on stderr, ``statlane models <verb>: <what is wrong>``, and exit
status 1 (a package or bundle failed a check) or 2 (usage error, nothing found by that name).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from models.manifest import ManifestError, VersionState
from models.registry import PackageNotFoundError, Registry, RegistryError

Handler = Callable[[argparse.Namespace, Registry], int]


class _UsageError(Exception):
    """Bad arguments: exit status 2."""


def _ints(value: str) -> list[int]:
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {value!r}")
    return numbers


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``models`` and its sub-commands."""
    parser = subparsers.add_parser(
        "models",
        help="model packages: list, validate, profile, export to Triton, import MONAI bundles",
        description="Manage the model repository (one folder per model, one per version).",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="model repository (default: $STATLANE_MODELS or the shipped models/packages)",
    )
    parser.set_defaults(func=run, handler=None)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = verbs.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    verb("list", _list, "one line per model version: state, task, backends")
    verb("show", _show, "print a version's manifest").add_argument("ref", help="name[@version]")
    verb("validate", _validate, "check manifests, weight checksums and graphs").add_argument(
        "ref", nargs="?", help="name or name@version (default: every package)"
    )
    state = verb("set-state", _set_state, "set a version active, shadow or retired")
    state.add_argument("ref", help="name@version")
    state.add_argument("state", choices=[s.value for s in VersionState])

    _profile_options(verb("profile", _profile, "measure latency per batch size (seconds)"))
    _export_triton_options(verb("export-triton", _export_triton, "write a Triton model repository"))
    _import_bundle_options(
        verb("import-bundle", _import_bundle, "turn a MONAI bundle into a package")
    )
    _train_options(verb("train", _train, "train a reference model on synthetic phantoms"))
    _evaluate_options(verb("evaluate", _evaluate, "sensitivity/specificity on held-out phantoms"))


def _profile_options(profile: argparse.ArgumentParser) -> None:
    """Options of ``models profile``: backend, device, batch sizes, runs."""
    profile.add_argument("ref", help="name[@version]")
    profile.add_argument("--backend", choices=["onnxruntime", "torchscript"], default="onnxruntime")
    profile.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    profile.add_argument("--batch-sizes", type=_ints, default=None, help="e.g. 1,2,4")
    profile.add_argument("--warmup", type=int, default=3, help="untimed runs per batch size")
    profile.add_argument("--runs", type=int, default=20, help="timed runs per batch size")
    profile.add_argument("--write", action="store_true", help="store the profile in the manifest")


def _export_triton_options(triton: argparse.ArgumentParser) -> None:
    """Options of ``models export-triton``: output folder, models, instances."""
    triton.add_argument("out", type=Path, help="output folder")
    triton.add_argument("--models", default=None, help="comma-separated names (default: all)")
    triton.add_argument("--instances", type=int, default=1, help="instances per device")
    triton.add_argument("--kind", choices=["CPU", "GPU"], default="CPU", type=str.upper)
    triton.add_argument("--with-shadow", action="store_true", help="also export shadow versions")
    triton.add_argument("--max-queue-delay-us", type=int, default=1000, help="microseconds")


def _import_bundle_options(bundle: argparse.ArgumentParser) -> None:
    """Options of ``models import-bundle``: the bundle folder and how to import it."""
    bundle.add_argument("bundle", type=Path, help="bundle folder")
    bundle.add_argument("--out", type=Path, default=None, help="repository (default: --root)")
    bundle.add_argument("--name", default=None)
    bundle.add_argument("--version", type=int, default=None)
    bundle.add_argument("--input-shape", type=_ints, default=None, help="spatial voxels, 96,96,96")
    bundle.add_argument(
        "--max-batch", type=int, default=None, help="default: the inferer's sw_batch_size, or 1"
    )
    bundle.add_argument(
        "--no-eval",
        action="store_true",
        help="evaluate nothing of the bundle: needs models/model.ts (or model.onnx)",
    )
    bundle.add_argument(
        "--allow-unmapped",
        action="store_true",
        help="import although some transforms have no statlane equivalent (listed)",
    )
    bundle.add_argument(
        "--dry-run", action="store_true", help="map and report only: build and write nothing"
    )


def _train_options(train: argparse.ArgumentParser) -> None:
    """Options of ``models train``: model name, repository, version, seed."""
    train.add_argument("name")
    train.add_argument("--out", type=Path, default=None, help="repository (default: --root)")
    train.add_argument("--version", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--smoke", action="store_true", help="seconds-long run, for tests")


def _evaluate_options(evaluate: argparse.ArgumentParser) -> None:
    """Options of ``models evaluate``: model, cases, seed, backend."""
    evaluate.add_argument("ref", nargs="?", help="name[@version] (default: every active model)")
    evaluate.add_argument("--cases", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=1_000_000)
    evaluate.add_argument(
        "--backend", choices=["onnxruntime", "torchscript"], default="onnxruntime"
    )
    evaluate.add_argument("--record", action="store_true", help="write metrics to the model card")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the verb; map typed errors to one stderr line and an exit status."""
    handler: Handler | None = args.handler
    where = f"statlane models {args.verb}" if args.verb else "statlane models"
    if handler is None:
        print(f"{where}: a verb is required (see statlane models --help)", file=sys.stderr)
        return 2
    registry = Registry(args.root) if args.root else Registry.default()
    try:
        return handler(args, registry)
    except (PackageNotFoundError, _UsageError) as error:
        print(f"{where}: {error}", file=sys.stderr)
        return 2
    except KeyError as error:  # unknown reference model name
        print(f"{where}: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except (ManifestError, RegistryError, ValueError, RuntimeError, OSError) as error:
        print(f"{where}: {error}", file=sys.stderr)
        return 1


def _list(args: argparse.Namespace, registry: Registry) -> int:
    names = registry.names()
    if not names:
        print(f"no model packages in {registry.root}")
        return 0
    failed = False
    for name in names:
        try:
            versions = registry.versions(name)
        except (ManifestError, RegistryError) as error:
            print(f"{name:<24} INVALID  {error}")
            failed = True
            continue
        for v in versions:
            backends = ",".join(b.value for b in v.manifest.runtime.backends)
            profiled = "profiled" if v.manifest.latency else "no profile"
            print(
                f"{v.ident:<24} {v.state.value:<8} {v.manifest.task.value:<15} "
                f"{backends:<24} {profiled}"
            )
    return 1 if failed else 0


def _show(args: argparse.Namespace, registry: Registry) -> int:
    version = registry.get(args.ref)
    print(f"# {version.ident} ({version.state.value}) in {version.folder}")
    data = version.manifest.model_dump(mode="json", exclude_none=True)
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _validate(args: argparse.Namespace, registry: Registry) -> int:
    results = registry.validate(args.ref)
    if not results:
        print(f"statlane models validate: no model packages in {registry.root}", file=sys.stderr)
        return 1
    for result in results:
        print(f"OK      {result.ref}" if result.ok else f"FAILED  {result.ref}: {result.problem}")
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"statlane models validate: {failed} of {len(results)} failed", file=sys.stderr)
    return 1 if failed else 0


def _set_state(args: argparse.Namespace, registry: Registry) -> int:
    states = registry.set_state(args.ref, args.state)
    name = args.ref.partition("@")[0]
    print(", ".join(f"{name}@{v}: {s.value}" for v, s in sorted(states.items())))
    return 0


def _profile(args: argparse.Namespace, registry: Registry) -> int:
    from models.profile import profile_version, write_profile

    if args.runs < 1 or args.warmup < 0:
        raise _UsageError("--runs must be >= 1 and --warmup >= 0")
    version = registry.get(args.ref)
    profile = profile_version(
        version,
        backend=args.backend,
        device=args.device,
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        runs=args.runs,
    )
    print(f"{version.ident} on {profile.backend.value}/{profile.device}, {profile.machine}")
    print(f"{'batch':>5} {'median_s':>10} {'p95_s':>10} {'per_item_s':>10}")
    for point in profile.points:
        per_item = point.median_s / point.batch_size
        print(
            f"{point.batch_size:>5} {point.median_s:>10.5f} {point.p95_s:>10.5f} {per_item:>10.5f}"
        )
    if args.write:
        write_profile(version, profile)
        print(f"written to {version.folder / 'manifest.yaml'}")
    return 0


def _export_triton(args: argparse.Namespace, registry: Registry) -> int:
    from models.triton_export import export_triton

    if args.instances < 1 or args.max_queue_delay_us < 0:
        raise _UsageError("--instances must be >= 1 and --max-queue-delay-us >= 0")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    exported = export_triton(
        registry,
        args.out,
        models=models,
        include_shadow=args.with_shadow,
        instances=args.instances,
        kind=args.kind,
        max_queue_delay_us=args.max_queue_delay_us,
    )
    for model in exported:
        versions = ",".join(str(v) for v in model.versions)
        print(f"{model.name} versions {versions} -> {model.config_path.parent}")
    return 0


def _import_bundle(args: argparse.Namespace, registry: Registry) -> int:
    from models.bundle import import_bundle

    if not args.bundle.is_dir():
        raise _UsageError(f"not a folder: {args.bundle}")
    if args.max_batch is not None and not 1 <= args.max_batch <= 256:
        raise _UsageError("--max-batch must be between 1 and 256")
    report = import_bundle(
        args.bundle,
        args.out or registry.root,
        name=args.name,
        version=args.version,
        input_shape=args.input_shape,
        max_batch=args.max_batch,
        evaluate=not args.no_eval,
        allow_unmapped=args.allow_unmapped,
        dry_run=args.dry_run,
        say=lambda line: print(line, flush=True),
    )
    print("\n".join(report.lines()))
    return 0


def _train(args: argparse.Namespace, registry: Registry) -> int:
    try:
        from models.reference.train import train_model
    except ImportError as error:
        raise RuntimeError(f"reference training is not available: {error}") from error
    folder = train_model(
        args.name, args.out or registry.root, version=args.version, seed=args.seed, smoke=args.smoke
    )
    print(f"trained {args.name} -> {folder}")
    return 0


def _evaluate(args: argparse.Namespace, registry: Registry) -> int:
    try:
        from models.evaluate import evaluate_package
    except ImportError as error:
        raise RuntimeError(f"evaluation is not available: {error}") from error
    targets = [registry.get(args.ref)] if args.ref else registry.active()
    if not targets:
        raise _UsageError(f"no model packages in {registry.root}")
    extra: dict[str, Any] = {"record": True} if args.record else {}
    for version in targets:
        result = evaluate_package(
            version.folder, cases=args.cases, seed=args.seed, backend=args.backend, **extra
        )
        print(json.dumps({"model": version.ident, **result}, indent=2, default=str))
    return 0
