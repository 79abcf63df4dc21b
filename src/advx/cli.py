"""Command-line interface: ``advx train | attack | report | demo``.

Errors in the arguments print one line ``advx <command>: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import attacks
from .attacks.registry import AttackInfo

NORM_CHOICES = ("1", "2", "inf")
_RESERVED = {"model", "inputs", "labels", "targeted", "norm", "self"}
# Minimal-norm attacks of the demo, by preference (at most DEMO_MAX_MINIMAL of them), with
# settings that keep the demo short; settings an attack does not take are left out.
DEMO_MINIMAL = ("deepfool", "ddn", "anu", "fmn")
DEMO_MAX_MINIMAL = 2
DEMO_SETTINGS = {"deepfool": {"steps": 20}, "ddn": {"steps": 20}, "anu": {"steps": 20}}
DEMO_IMAGES = 100
DEMO_STEPS = 10  # PGD steps in the demo (40 in the benchmarks), to finish well under a minute


class UsageError(Exception):
    """A bad command-line argument (reported in one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        raise UsageError(f"{self.prog}: error: {message}")


# ------------------------------------------------------------------------------ arguments


def parse_value(text: str) -> bool | int | float | str | None:
    """Parse a ``--set`` value: true/false -> bool, none -> None, then int, float, else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_settings(items: Sequence[str] | None) -> dict:
    """Turn ``["eps=0.3", "steps=40"]`` into ``{"eps": 0.3, "steps": 40}``."""
    settings = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"--set: expected key=value, got {item!r}")
        settings[key] = parse_value(value)
    return settings


def check_hyperparameters(info: AttackInfo, settings: dict) -> None:
    """Refuse hyperparameters the attack function does not take, and a bounded attack without
    ``eps``."""
    parameters = inspect.signature(info.function).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        accepted = [n for n in parameters if n not in _RESERVED]
        for key in settings:
            if key not in accepted:
                raise UsageError(
                    f"--set: attack {info.name} has no hyperparameter {key!r} "
                    f"(accepted: {', '.join(accepted)})"
                )
    needs_eps = "eps" in parameters and parameters["eps"].default is inspect.Parameter.empty
    if not info.minimal_norm and needs_eps and "eps" not in settings:
        raise UsageError(f"--set eps=...: is required by the bounded attack {info.name}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``advx`` argument parser with its sub-commands."""
    parser = _Parser(prog="advx", description="Adversarial examples and robustness evaluation.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train a zoo model and cache its checkpoint")
    train.add_argument("name", help="zoo model name (e.g. mnist-cnn)")
    train.add_argument("--data-dir", help="data directory (default: $ADVX_DATA or the cache)")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--seed", type=int)
    train.add_argument(
        "--adversarial", metavar="ATTACK", help="adversarial training on this attack (e.g. ddn)"
    )
    train.add_argument("--max-norm", type=float, help="perturbation limit for adversarial training")
    train.add_argument("--beta", type=float, default=0.0, help="clean-loss weight (Eq. 6)")
    train.add_argument(
        "--init-from", metavar="MODEL", help="start from this trained zoo model's weights"
    )
    train.add_argument(
        "--max-samples", type=_positive_int, help="train on the first N training images only"
    )
    train.add_argument(
        "--distill",
        type=float,
        metavar="T",
        help="defensive distillation at temperature T (saved as <name>-distilled-t<T>)",
    )
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="settings",
        help="attack hyperparameter for --adversarial, e.g. --set steps=100",
    )

    attack = commands.add_parser("attack", help="evaluate an attack on a zoo model")
    attack.add_argument("--model", required=True, help="zoo model name")
    attack.add_argument("--attack", required=True, help="attack name (see advx.attacks.ATTACKS)")
    attack.add_argument("--norm", choices=NORM_CHOICES, help="perturbation norm")
    attack.add_argument("--targeted", action="store_true", help="random target classes")
    attack.add_argument(
        "--all-targets",
        action="store_true",
        help="targeted towards every other class; prints the best, average and worst case",
    )
    attack.add_argument(
        "--minimal",
        action="store_true",
        help="bounded attack: smallest eps per image on the Table 4 grid (advx.attacks.minimal_eps)",
    )
    attack.add_argument("--n", type=_positive_int, default=1000, help="first N test images")
    attack.add_argument("--batch-size", type=_positive_int, default=100)
    attack.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="settings",
        help="attack hyperparameter, e.g. --set eps=0.3 (repeatable)",
    )
    attack.add_argument("--data-dir")
    attack.add_argument(
        "--db", help="results database (default: $ADVX_RESULTS or ./advx-results.sqlite)"
    )
    attack.add_argument("--split", choices=("test", "train"), default="test")
    attack.add_argument("--seed", type=int, default=0)
    attack.add_argument("--quiet", action="store_true", help="no progress bar")

    report = commands.add_parser("report", help="table and plots of the stored runs")
    report.add_argument("--db")
    report.add_argument("--out", default="advx-report", help="directory for the PNGs")

    demo = commands.add_parser("demo", help="offline demo on the bundled model and images")
    demo.add_argument("--out", default="advx-demo", help="directory for the PNGs")
    demo.add_argument("--db", help="results database (default: a temporary one)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# ------------------------------------------------------------------------------- commands


def _command_train(args: argparse.Namespace) -> int:
    from . import models

    models.get_spec(args.name)
    common = {
        "epochs": args.epochs,
        "seed": args.seed,
        "init_from": args.init_from,
        "max_samples": args.max_samples,
    }
    if args.distill is not None:
        _model, metrics, saved = _distill_train(args, common)
    elif args.adversarial is None:
        if args.settings or args.max_norm is not None:
            raise UsageError("--set and --max-norm need --adversarial ATTACK")
        saved = args.name
        model, metrics = models.train(args.name, args.data_dir, **common)
    else:
        _model, metrics, saved = _adversarial_train(args, common)
    accuracy = metrics.get("test_accuracy")
    print(f"trained {saved}: test accuracy {accuracy:.4f}, saved to {models.model_path(saved)}")
    return 0


def _distill_train(args: argparse.Namespace, common: dict):
    from .defenses.distillation import distillation, student_name

    if args.adversarial is not None or args.init_from is not None:
        raise UsageError("--distill cannot be combined with --adversarial or --init-from")
    if not args.distill > 0:
        raise UsageError(f"--distill: the temperature must be > 0, got {args.distill:g}")
    common = {k: v for k, v in common.items() if k != "init_from"}
    model, metrics = distillation(args.name, args.distill, data_dir=args.data_dir, **common)
    return model, metrics, student_name(args.name, args.distill)


def _adversarial_train(args: argparse.Namespace, common: dict):
    from .defenses.adversarial_training import adversarial_training

    info = attacks.get_attack(args.adversarial)
    settings = parse_settings(args.settings)
    if args.max_norm is None:
        raise UsageError("--max-norm is required with --adversarial (e.g. 2.4 for MNIST, L2)")
    check_hyperparameters(info, settings | ({} if info.minimal_norm else {"eps": args.max_norm}))
    saved = f"{args.name}-adv-{info.name}"
    model, metrics = adversarial_training(
        args.name,
        info.name,
        max_norm=args.max_norm,
        beta=args.beta,
        attack_kwargs=settings,
        data_dir=args.data_dir,
        save_as=saved,
        **common,
    )
    return model, metrics, saved


def _budget_lines(summary: dict) -> list[str]:
    lines = ["all examples within the box [0, 1]: yes (checked for every example)"]
    if summary.get("minimal_norm") or "eps" not in summary:
        return lines
    norm = summary["norm"]
    within = "yes" if summary["all_within_budget"] else "NO"
    lines.insert(
        0,
        f"robust accuracy at eps={summary['eps']:g}: "
        f"{100 * summary['robust_accuracy'][summary['eps']]:.1f}%",
    )
    lines.insert(
        1,
        f"max {norm} norm: {summary['max_norm']:.6g} (eps {summary['eps']:g}); "
        f"all examples within budget: {within}",
    )
    return lines


def _print_run(store, run_id: int) -> None:
    from .evaluation.report import runs_table

    run = next(r for r in store.runs() if r["id"] == run_id)
    print(runs_table([run]))
    for line in _budget_lines(run["summary"]):
        print(line)


def _minimal_info(info: AttackInfo, settings: dict) -> AttackInfo:
    """The minimal-eps wrapper of a bounded attack for ``--minimal`` (its own hyperparameters
    and ``refine_steps`` are accepted; ``eps`` is what it searches)."""
    from .attacks.minimal import as_minimal_attack

    if info.minimal_norm:
        raise UsageError(f"--minimal: {info.name} is a minimal-norm attack already")
    if "eps" in settings:
        raise UsageError("--minimal: searches eps itself; do not --set eps")
    own = {k: v for k, v in settings.items() if k != "refine_steps"}
    check_hyperparameters(info, own | {"eps": None})
    return as_minimal_attack(info)


def _distortion_lines(summary: dict) -> list[str]:
    """Mean L1 / L2 / Linf / elastic-net distance, and the target cases of --all-targets."""
    means = summary.get("mean_norms", {})
    names = (("l1", "L1"), ("l2", "L2"), ("linf", "Linf"), ("en", "EN"))
    text = ", ".join(f"{label} {means[k]:.4g}" for k, label in names if k in means)
    lines = [f"mean distortion over successes: {text}"] if text else []
    cases = summary.get("target_cases")
    if cases:
        lines.append(
            f"all {cases['targets_per_sample']} targets of {cases['samples']} correctly "
            "classified images:"
        )
        for case in ("best", "average", "worst"):
            c = cases[case]
            values = ", ".join(f"{label} {c[k]:.4g}" for k, label in names)
            lines.append(f"  {case:<8} success {100 * c['success_rate']:.1f}%  {values}")
    return lines


def _command_attack(args: argparse.Namespace) -> int:
    from . import data, models
    from .evaluation import ResultsStore, run_attack
    from .evaluation.runner import resolve_norm

    settings = parse_settings(args.settings)
    try:
        info = attacks.get_attack(args.attack)
    except ValueError as error:
        raise UsageError(f"--attack: {error}") from None
    if args.minimal:
        info = _minimal_info(info, settings)
    else:
        check_hyperparameters(info, settings)
    try:
        resolve_norm(info, args.norm)
    except ValueError as error:
        raise UsageError(f"--norm: {error}") from None
    try:
        spec = models.resolve_spec(args.model)
    except ValueError as error:
        raise UsageError(f"--model: {error}") from None
    model = models.load(args.model, args.data_dir)
    images, labels = data.load_dataset(spec.dataset, args.split, args.data_dir)
    images, labels = images[: args.n], labels[: args.n]
    data_spec = {"dataset": spec.dataset, "split": args.split, "first": int(images.shape[0])}
    with ResultsStore(args.db) as store:
        result = run_attack(
            model,
            images,
            labels,
            info,
            norm=args.norm,
            targeted=args.targeted or args.all_targets,
            targets="all" if args.all_targets else None,
            hyperparameters=settings,
            batch_size=args.batch_size,
            store=store,
            model_name=args.model,
            data_spec=data_spec,
            seed=args.seed,
            progress=not args.quiet,
        )
        _print_run(store, result.run_id)
        for line in _distortion_lines(result.summary):
            print(line)
        print(f"stored as run {result.run_id} in {store.path}")
    return 0


def _command_report(args: argparse.Namespace) -> int:
    from .evaluation import ResultsStore, resolve_db_path
    from .evaluation.report import runs_table, write_report

    path = resolve_db_path(args.db)
    if not path.is_file():
        raise UsageError(f"--db: no results database at {path}")
    with ResultsStore(path) as store:
        print(runs_table(store.runs()))
        for written in write_report(store, args.out):
            print(f"wrote {written}")
    return 0


def demo_plan() -> list[tuple[str, str, dict]]:
    """The demo's attacks: (name, norm, hyperparameters): FGM-Linf eps 0.1, PGD-Linf eps 0.1 and
    0.3, PGD-L2 eps 1.5 (``DEMO_STEPS`` steps), and up to two minimal-norm attacks of the
    registry, preferring the fast ones (``DEMO_MINIMAL``) with shortened settings."""
    plan = [
        ("fgm", "inf", {"eps": 0.1}),
        ("pgd", "inf", {"eps": 0.1, "steps": DEMO_STEPS}),
        ("pgd", "inf", {"eps": 0.3, "steps": DEMO_STEPS}),
        ("pgd", "2", {"eps": 1.5, "steps": DEMO_STEPS}),
    ]
    registered = [n for n, info in sorted(attacks.ATTACKS.items()) if info.minimal_norm]
    preferred = [n for n in DEMO_MINIMAL if n in registered]
    chosen = (preferred or registered)[:DEMO_MAX_MINIMAL]
    for name in chosen:
        parameters = inspect.signature(attacks.ATTACKS[name].function).parameters
        settings = {k: v for k, v in DEMO_SETTINGS.get(name, {}).items() if k in parameters}
        plan.append((name, None, settings))
    return plan


def _run_demo(store, out: Path, quiet: bool) -> list[Path]:
    from . import data, models
    from .evaluation import run_attack
    from .evaluation.report import runs_table, write_report

    model = models.load_demo_model()
    images, labels = data.load_demo()
    images, labels = images[:DEMO_IMAGES], labels[:DEMO_IMAGES]
    data_spec = {"dataset": "mnist-demo", "first": int(images.shape[0])}
    run_ids = []
    for name, norm, settings in demo_plan():
        result = run_attack(
            model,
            images,
            labels,
            name,
            norm=norm,
            hyperparameters=settings,
            store=store,
            model_name="mnist-cnn (bundled)",
            data_spec=data_spec,
            progress=not quiet,
        )
        run_ids.append(result.run_id)
    print(runs_table([r for r in store.runs() if r["id"] in run_ids]))
    return write_report(store, out, run_ids)


def _command_demo(args: argparse.Namespace) -> int:
    from .evaluation import ResultsStore

    start = time.perf_counter()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db if args.db else Path(tmp) / "demo.sqlite"
        with ResultsStore(db) as store:
            written = _run_demo(store, out, args.quiet)
    for path in written:
        print(f"wrote {path}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0


COMMANDS = {
    "train": _command_train,
    "attack": _command_attack,
    "report": _command_report,
    "demo": _command_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``advx`` command line; return the exit status (2 for bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(str(error), file=sys.stderr)
        return 2
    except (ValueError, TypeError) as error:
        command = f"advx {args.command}" if "args" in locals() else "advx"
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, OSError) as error:
        print(f"advx: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("advx: interrupted (stored batches are kept; run again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
