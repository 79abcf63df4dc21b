"""Command-line interface: ``advx train | attack | report | bench | demo | attacks | models``.

Errors print one line ``advx <command>: error: ...`` naming the argument or file and what to do,
and exit with status 2 (bad arguments) or 1 (a file or run that failed); ``--debug`` shows the
traceback instead. Ctrl-C exits with status 130 and says what was kept and how to resume.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import pickle
import sqlite3
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from . import __version__, attacks
from .attacks.registry import AttackInfo

_RESERVED = {"model", "inputs", "labels", "targeted", "norm", "self", "generator", "callback"}
# Minimal-norm attacks of the demo, by preference (at most DEMO_MAX_MINIMAL of them), with
# settings that keep the demo short; settings an attack does not take are left out.
DEMO_MINIMAL = ("deepfool", "ddn", "anu")
DEMO_MAX_MINIMAL = 2
DEMO_SETTINGS = {"deepfool": {"steps": 20}, "ddn": {"steps": 20}, "anu": {"steps": 20}}
DEMO_IMAGES = 100
DEMO_STEPS = 10  # PGD steps in the demo (40 in the benchmarks), to finish well under a minute
DEFAULT_N = 1000  # images attacked by default from a zoo model's data set
LONG_RUN_SECONDS = 120.0  # warn before a run estimated to take longer than this
# Hyperparameters whose product bounds the gradient (or query) passes per sample.
_LOOP_PARAMETERS = (
    "steps",
    "max_iter",
    "iterations",
    "max_iterations",
    "binary_search_steps",
    "search_steps",
    "restarts",
    "num_restarts",
)


class UsageError(Exception):
    """A bad command-line argument (reported in one line, exit status 2)."""


class CommandError(Exception):
    """A file or run that cannot be used (reported in one line, exit status 1)."""


class Interrupted(Exception):
    """Ctrl-C, with what was kept and how to resume (exit status 130)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        raise UsageError(f"{self.prog}: error: {message}")


def _warn(command: str, message: str) -> None:
    print(f"advx {command}: warning: {message}", file=sys.stderr)


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


def hyperparameter_defaults(info: AttackInfo) -> dict:
    """The attack function's keyword hyperparameters and their defaults (``None`` shown for a
    required one as ``"required"``)."""
    defaults = {}
    for name, parameter in inspect.signature(info.function).parameters.items():
        if name in _RESERVED or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        empty = parameter.default is inspect.Parameter.empty
        defaults[name] = "required" if empty else parameter.default
    return defaults


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
                    f"(accepted: {', '.join(accepted)}; see `advx attacks {info.name}`)"
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


def _add_device_seed(parser: argparse.ArgumentParser, seed_default: int | None = 0) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--seed", type=int, default=seed_default, help="random seed")


def _add_debug(parser: argparse.ArgumentParser, top: bool = False) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the full traceback of an error",
    )


def _add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train a zoo model and cache its checkpoint")
    _add_debug(train)
    train.add_argument("name", help="zoo model name (see `advx models`)")
    train.add_argument("--data-dir", help="data directory (default: $ADVX_DATA or the cache)")
    train.add_argument("--epochs", type=_positive_int)
    _add_device_seed(train, seed_default=None)
    train.add_argument(
        "--save-as",
        metavar="NAME",
        help="cache name of a plain training run (e.g. mnist-cnn-seed1, the independently "
        "trained sources of thesis Table 10); default: the zoo name",
    )
    train.add_argument(
        "--adversarial", metavar="ATTACK", help="adversarial training on this attack (e.g. ddn)"
    )
    train.add_argument("--max-norm", type=float, help="perturbation limit for adversarial training")
    train.add_argument(
        "--norm",
        help="the norm of the --adversarial attack (1, 2 or inf; e.g. PGD-L2 for the linear-region "
        "paper's 'at' models, saved as <name>-adv-pgd-l2); default: the attack's own",
    )
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


def _add_attack_parser(commands) -> None:
    from .models import MODELS

    attack = commands.add_parser(
        "attack",
        help="evaluate an attack on a zoo model or your own model and data",
        description="Evaluate an attack; results go to a SQLite database (resumable).",
    )
    _add_debug(attack)
    attack.add_argument(
        "--model",
        required=True,
        help=f"zoo model ({', '.join(sorted(MODELS))}; details: `advx models`), "
        "path/to/file.py:factory (a function returning an nn.Module) or a TorchScript file.pt",
    )
    attack.add_argument("--weights", help="state dict (.pt) for a file.py:factory model")
    attack.add_argument("--mean", help="per-channel input mean applied inside the model, e.g. 0.5")
    attack.add_argument("--std", help="per-channel input std applied inside the model")
    attack.add_argument(
        "--data",
        help="npz:PATH (x (N,C,H,W) floats in [0,1] or uint8 (N,H,W[,C]); y labels) or "
        "folder:PATH (ImageFolder); default: the zoo model's dataset",
    )
    attack.add_argument("--size", help="resize folder: images to N or HxW")
    attack.add_argument(
        "--attack",
        required=True,
        help=f"attack name: {', '.join(sorted(attacks.ATTACKS))} (details: `advx attacks`)",
    )
    attack.add_argument("--norm", help="perturbation norm: 1, 2, inf (or any p >= 1 where taken)")
    attack.add_argument("--targeted", action="store_true", help="targeted attack")
    attack.add_argument(
        "--targets",
        choices=("random", "next", "all"),
        default="random",
        help="with --targeted: random other classes, label+1, or every other class "
        "(one run of N x (K-1) pairs; best/average/worst case)",
    )
    attack.add_argument(
        "--minimal",
        action="store_true",
        help="bounded attack: smallest eps per image on the Table 4 grid (advx.attacks.minimal_eps)",
    )
    attack.add_argument(
        "--n",
        type=_positive_int,
        help=f"first N images (default: {DEFAULT_N} of a zoo data set, all of --data)",
    )
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
    _add_device_seed(attack)
    attack.add_argument("--json", action="store_true", help="print the run as JSON")
    attack.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_report_parser(commands) -> None:
    report = commands.add_parser("report", help="table, plots and pages of the stored runs")
    _add_debug(report)
    report.add_argument(
        "--db", help="results database (default: $ADVX_RESULTS or ./advx-results.sqlite)"
    )
    report.add_argument(
        "--out",
        help="directory for the PNGs (default: advx-report, when neither --html nor --markdown "
        "is given)",
    )
    report.add_argument("--html", metavar="DIR", help="write a self-contained page DIR/index.html")
    report.add_argument(
        "--markdown",
        metavar="FILE",
        nargs="?",
        const="-",
        help="write the runs as Markdown to FILE (stdout without FILE)",
    )
    report.add_argument("--title", default="advx results", help="heading of the Markdown page")
    report.add_argument(
        "--reference",
        metavar="JSON",
        help='the paper\'s figures beside ours in the Markdown: a list of {"match": {"attack": '
        '"pgd", "eps": 0.3}, "column": "robust acc @eps", "value": "89.3%%", "source": "..."}',
    )
    report.add_argument(
        "--json", action="store_true", help="print every run (config, status, summary) as JSON"
    )


def _add_bench_parser(commands) -> None:
    bench = commands.add_parser("bench", help="run a declarative, resumable sweep (TOML)")
    _add_debug(bench)
    bench.add_argument("config", help="sweep configuration (TOML: [data], [[models]], [[attacks]])")
    bench.add_argument("--executor", choices=("local", "ray"), default="local")
    bench.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    bench.add_argument("--max-parallel", type=_positive_int, help="most jobs in flight (Ray)")
    bench.add_argument(
        "--db", help="results database (default: $ADVX_RESULTS or ./advx-results.sqlite)"
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="offline demo on the bundled model and images")
    _add_debug(demo)
    demo.add_argument("--out", default="advx-demo", help="directory for the PNGs and page")
    demo.add_argument("--db", help="results database (default: a temporary one)")
    _add_device_seed(demo)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_attacks_parser(commands) -> None:
    listing = commands.add_parser(
        "attacks", help="list the attacks: kind, norms, hyperparameters with defaults, paper"
    )
    _add_debug(listing)
    listing.add_argument("name", nargs="?", help="show one attack in full")
    listing.add_argument("--json", action="store_true", help="print as JSON")


def _add_models_parser(commands) -> None:
    listing = commands.add_parser(
        "models", help="list the zoo models: architecture, dataset, whether cached"
    )
    _add_debug(listing)
    listing.add_argument("--json", action="store_true", help="print as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The ``advx`` argument parser with its sub-commands."""
    parser = _Parser(prog="advx", description="Adversarial examples and robustness evaluation.")
    parser.add_argument("--version", action="version", version=f"advx {__version__}")
    _add_debug(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_train_parser,
        _add_attack_parser,
        _add_report_parser,
        _add_bench_parser,
        _add_demo_parser,
        _add_attacks_parser,
        _add_models_parser,
    ):
        add(commands)
    return parser


# -------------------------------------------------------------------------- shared pieces


def resolve_device(text: str):
    """``--device`` as a torch device; ``UsageError`` for an unknown or unavailable one."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {text!r} (e.g. cpu, cuda, cuda:0)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {text}: MPS is not available here; use --device cpu")
    return device


def _checkpoint_error(name: str, path: Path, error: BaseException) -> CommandError:
    reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
    if "weights_only" in str(error) or isinstance(error, pickle.UnpicklingError):
        reason = "not a readable PyTorch file"
    detail = f"{type(error).__name__}{': ' + reason if reason else ''}"
    return CommandError(
        f"--model {name}: checkpoint {path} is corrupted, empty or not for this architecture "
        f"({detail}); delete it or run `advx train {name}` again"
    )


_CHECKPOINT_ERRORS = (
    RuntimeError,
    EOFError,
    KeyError,
    AttributeError,
    TypeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def _zoo_spec(name: str):
    from . import models

    path = models.model_path(name)
    try:
        return models.resolve_spec(name)
    except ValueError as error:
        raise UsageError(f"--model: {error}") from None
    except _CHECKPOINT_ERRORS as error:
        raise _checkpoint_error(name, path, error) from error


def _is_cached(name: str) -> tuple[bool, Path]:
    from .models.checkpoints import BUNDLED, model_path

    path = model_path(name)
    if path.is_file():
        return True, path
    if name in BUNDLED and BUNDLED[name].is_file():
        return True, BUNDLED[name]
    return False, path


def load_zoo_model(name: str, data_dir=None, command: str = "attack", progress: bool = True):
    """Load a zoo model for the CLI: says so before training an uncached one, turns a broken
    checkpoint into one line naming the file, and Ctrl-C during training into
    :class:`Interrupted` saying where the finished epochs are kept."""
    from . import models
    from .models.checkpoints import resolve_cache_dir

    spec = _zoo_spec(name)
    cached, path = _is_cached(name)
    checkpoint = resolve_cache_dir() / f"{name}.ckpt"
    if not cached:
        resumes = " (resuming its checkpoint)" if checkpoint.is_file() else ""
        _warn(
            command,
            f"model {name} is not cached ({path} does not exist): training it now with its "
            f"recipe ({spec.epochs} epochs on {spec.dataset}){resumes}; this happens once. "
            f"Ctrl-C stops it; `advx train {name}` resumes from the last finished epoch",
        )
    try:
        return models.load(name, data_dir, progress=progress)
    except KeyboardInterrupt:
        if cached:
            raise
        raise Interrupted(
            f"advx {command}: interrupted while training {name}: the finished epochs are kept in "
            f"{checkpoint}; run `advx train {name}` (or this command again) to resume"
        ) from None
    except _CHECKPOINT_ERRORS as error:
        if not cached:
            raise
        raise _checkpoint_error(name, path, error) from error


def _open_store(db):
    from .evaluation import ResultsStore, resolve_db_path

    path = resolve_db_path(db)
    if path.is_dir():
        raise CommandError(
            f"--db: {path} is a directory; pass a file name such as {path}/runs.sqlite"
        )
    try:
        return ResultsStore(path)
    except sqlite3.DatabaseError as error:
        raise _db_error(path, error) from error
    except OSError as error:
        raise CommandError(
            f"--db: cannot open {path} ({error.strerror or error}); pass a --db in a writable "
            "directory"
        ) from error


def _db_error(path, error: BaseException) -> CommandError:
    if isinstance(error, sqlite3.OperationalError) and "unable to open" in str(error):
        return CommandError(
            f"--db: cannot open {path} ({error}); pass a --db in a writable directory"
        )
    return CommandError(
        f"--db: {path} is not a usable advx results database ({type(error).__name__}: "
        f"{str(error)[:120]}); pass another --db or move the file away"
    )


def _estimate_passes(info: AttackInfo, settings: dict) -> int:
    """An upper bound of the gradient (or query) passes per sample from the loop settings."""
    values = {**hyperparameter_defaults(info), **settings}
    passes = 1
    for key in _LOOP_PARAMETERS:
        value = values.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            passes *= value
    return passes


def _seconds_per_pass(model, images, black_box: bool) -> float:
    """Measured seconds of one forward (+ backward for white-box) pass per sample."""
    import torch

    from .attacks._core import attack_mode

    x = images.clone()
    with attack_mode(model):
        start = time.perf_counter()
        if black_box:
            with torch.no_grad():
                model(x)
        else:
            x.requires_grad_(True)
            torch.autograd.grad(model(x).sum(), x)  # no parameter gradients accumulated
        return (time.perf_counter() - start) / max(1, x.shape[0])


def warn_if_long(command, info, settings, model, images, n, device) -> float:
    """Print a warning when the run's settings would take long here: the passes per sample
    implied by its loop settings times one pass measured on this machine. Returns the estimate
    in seconds."""
    passes = _estimate_passes(info, settings)
    probe = images[: min(16, images.shape[0])].to(device)
    per_pass = _seconds_per_pass(model, probe, info.black_box)
    estimate = passes * per_pass * n
    if estimate > LONG_RUN_SECONDS:
        kind = "queries" if info.black_box else "gradient passes"
        _warn(
            command,
            f"{info.name} with these settings may take up to {_duration(estimate)} on this machine "
            f"(up to {passes} {kind} per sample x {n} samples x {per_pass * 1e3:.2g} ms per pass, "
            "measured now); lower --n or the steps (--set steps=...) for a quicker run",
        )
    return estimate


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else str(value)
    return value


# ------------------------------------------------------------------------------- commands


def _check_save_as(args: argparse.Namespace) -> None:
    """``--save-as``: plain training only, a file name that is not another zoo model's."""
    from . import models
    from .defenses.madry import madry_eps

    name = args.save_as
    if name is None:
        return
    if args.adversarial is not None or args.distill is not None or madry_eps(args.name):
        raise UsageError(
            "--save-as: only plain training takes it (adversarial, distilled and Madry models "
            "are named by their recipe)"
        )
    if not name or name != Path(name).name or name.startswith("."):
        raise UsageError(f"--save-as: expected a plain file name, got {name!r}")
    if name != args.name and name in models.MODELS:
        raise UsageError(f"--save-as: {name!r} is another zoo model's name; choose a new one")


def _command_train(args: argparse.Namespace) -> int:
    from . import models
    from .defenses.madry import madry_eps

    if madry_eps(args.name) is None:
        try:
            models.get_spec(args.name)
        except ValueError as error:
            raise UsageError(f"name: {error}") from None
    _check_save_as(args)
    device = resolve_device(args.device)
    common = {
        "epochs": args.epochs,
        "seed": args.seed,
        "init_from": args.init_from,
        "max_samples": args.max_samples,
    }
    checkpoint = models.resolve_cache_dir() / f"{args.name}.ckpt"
    try:
        if madry_eps(args.name) is not None:
            _model, metrics, saved = _madry_train(args, common, device)
        elif args.distill is not None:
            if device.type != "cpu":
                raise UsageError("--device: distillation runs on the CPU only")
            _model, metrics, saved = _distill_train(args, common)
            checkpoint = models.resolve_cache_dir() / f"{saved}.ckpt"
        elif args.adversarial is None:
            if args.settings or args.max_norm is not None or args.norm is not None:
                raise UsageError("--set, --max-norm and --norm need --adversarial ATTACK")
            saved = args.save_as or args.name
            checkpoint = models.resolve_cache_dir() / f"{saved}.ckpt"
            model, metrics = models.train(
                args.name, args.data_dir, device=device, save_as=args.save_as, **common
            )
        else:
            if device.type != "cpu":
                raise UsageError("--device: adversarial training runs on the CPU only")
            _model, metrics, saved = _adversarial_train(args, common)
            checkpoint = models.resolve_cache_dir() / f"{saved}.ckpt"
    except KeyboardInterrupt:
        raise Interrupted(
            f"advx train: interrupted: the finished epochs are kept in {checkpoint}; run the "
            "same command again to resume"
        ) from None
    accuracy = metrics.get("test_accuracy")
    print(f"trained {saved}: test accuracy {accuracy:.4f}, saved to {models.model_path(saved)}")
    return 0


def _madry_train(args: argparse.Namespace, common: dict, device):
    """``advx train mnist-madry`` (eps 0.3) or ``mnist-madry-eps<EPS>``: the Madry recipe, with
    ``--set method=fgsm-rs`` (Wong et al. 2020) or ``method=n-fgsm`` (de Jorge et al. 2022),
    ``--set steps=..``, ``--set step_size=..``, ``--set early_stopping=<images>``."""
    from .defenses.madry import MADRY_EPOCHS, madry_eps, madry_training

    if device.type != "cpu":
        raise UsageError("--device: adversarial training runs on the CPU only")
    if args.adversarial or args.distill is not None or args.init_from or args.max_norm is not None:
        raise UsageError(
            f"{args.name} is the Madry recipe: it takes --epochs, --seed, --max-samples and "
            "--set method=pgd|fgsm-rs|n-fgsm / steps= / step_size= / early_stopping=, not "
            "--adversarial, --distill, "
            "--init-from or --max-norm"
        )
    settings = parse_settings(args.settings)
    known = {"method", "steps", "step_size", "early_stopping"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(f"--set: {args.name} takes {', '.join(sorted(known))}, not {unknown}")
    common = {k: v for k, v in common.items() if k != "init_from"}
    common["epochs"] = common["epochs"] or MADRY_EPOCHS
    eps = madry_eps(args.name)
    try:
        model, metrics = madry_training(eps, data_dir=args.data_dir, **settings, **common)
    except ValueError as error:
        raise UsageError(f"--set: {error}") from None
    return model, metrics, args.name


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

    try:
        info = attacks.get_attack(args.adversarial)
    except ValueError as error:
        raise UsageError(f"--adversarial: {error}") from None
    settings = parse_settings(args.settings)
    if args.max_norm is None:
        raise UsageError("--max-norm is required with --adversarial (e.g. 2.4 for MNIST, L2)")
    check_hyperparameters(info, settings | ({} if info.minimal_norm else {"eps": args.max_norm}))
    saved = f"{args.name}-adv-{info.name}"
    if args.norm is not None:
        settings["norm"] = _training_norm(info, args.norm)
        saved += "-l" + ("inf" if math.isinf(settings["norm"]) else f"{settings['norm']:g}")
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


def _training_norm(info: AttackInfo, text: str) -> float:
    """``advx train --norm``: a norm the adversarial-training attack takes as ``norm=``."""
    from .evaluation.runner import resolve_norm

    if not info.takes_norm:
        raise UsageError(f"--norm: attack {info.name} has a fixed norm; leave --norm out")
    try:
        return resolve_norm(info, text)[0]
    except ValueError as error:
        raise UsageError(f"--norm: {error}") from None


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


def _model_arguments(args: argparse.Namespace, mean, std) -> dict:
    """The model's command-line arguments (absolute paths) kept in the run's data spec, so the
    report can print the command that resumes it."""
    from . import sources

    kept: dict = {}
    if sources.is_user_model(args.model):
        path, sep, factory = args.model.rpartition(":")
        if sep and path.endswith(".py"):
            kept["model_argument"] = f"{Path(path).resolve()}:{factory}"
        else:
            kept["model_argument"] = str(Path(args.model).resolve())
        if args.weights is not None:
            kept["weights"] = str(Path(args.weights).resolve())
    if mean is not None:
        kept["mean"], kept["std"] = mean, std
    return kept


def _attack_inputs(args: argparse.Namespace, device):
    """The model, images, labels, model name and data spec of an ``attack`` command."""
    from . import sources

    mean = sources.parse_channels(args.mean, "--mean")
    std = sources.parse_channels(args.std, "--std")
    size = sources.parse_size(args.size)
    if size is not None and not (args.data or "").startswith("folder:"):
        raise UsageError("--size: only for --data folder:PATH")
    if sources.is_user_model(args.model):
        loaded = sources.load_user_model(args.model, args.weights, mean, std)
        model, name = loaded.model, loaded.name
        extra = {"model_fingerprint": loaded.fingerprint, **_model_arguments(args, mean, std)}
    else:
        if args.weights is not None:
            raise UsageError("--weights: only for --model path/to/file.py:factory")
        spec = _zoo_spec(args.model)
        model = load_zoo_model(args.model, args.data_dir, "attack", progress=not args.quiet)
        if mean is not None or std is not None:
            if mean is None or std is None:
                raise UsageError("--mean/--std: give both, or neither")
            model = sources.Normalize(model, mean, std).eval()
        name, extra = args.model, _model_arguments(args, mean, std)
    model = model.to(device)
    if args.data is not None:
        data = sources.load_data_source(args.data, size)
        images, labels, data_spec = data.images, data.labels, dict(data.spec)
        sources.check_data_fits_model(model, data, device)
        split_name = f"{data_spec['source']} data {data_spec['path']}"
    else:
        if sources.is_user_model(args.model):
            raise UsageError("--data: your own model needs data: --data npz:PATH or folder:PATH")
        from . import data as zoo_data

        images, labels = zoo_data.load_dataset(spec.dataset, args.split, args.data_dir)
        data_spec = {"dataset": spec.dataset, "split": args.split}
        split_name = f"the {spec.dataset} {args.split} split"
    n = args.n if args.n is not None else (DEFAULT_N if args.data is None else len(images))
    if args.n is not None and args.n > images.shape[0]:
        _warn(
            "attack",
            f"--n {args.n} is more than the {images.shape[0]} images of {split_name}; "
            f"attacking all {images.shape[0]}",
        )
    images, labels = images[:n], labels[:n]
    data_spec["first"] = int(images.shape[0])
    data_spec.update(extra)
    return model, images, labels, name, data_spec


def _record_provenance(store, result, argv) -> None:
    """Keep the command, date and machine of a finished run with its summary (the Markdown
    and HTML reports print them)."""
    from .evaluation.provenance import provenance

    store.finish_run(result.run_id, {**result.summary, "provenance": provenance(argv)})


def _target_sets(args, labels, num_classes: int):
    """The runs' target modes: none, or ``random`` / ``next`` / ``all`` (one run that pairs
    every image with each other class, the runner's best/average/worst protocol)."""
    return [args.targets] if args.targeted else [None]


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
    """Mean L1 / L2 / Linf / elastic-net distance, and the target cases of ``--targets all``."""
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
    import torch

    from .evaluation import run_attack
    from .evaluation.report import load_runs, runs_table
    from .evaluation.runner import resolve_norm

    settings = parse_settings(args.settings)
    try:
        info = attacks.get_attack(args.attack)
    except ValueError as error:
        raise UsageError(f"--attack: {error}") from None
    try:
        resolve_norm(info, args.norm)
    except ValueError as error:
        raise UsageError(f"--norm: {error}") from None
    if args.minimal:
        info = _minimal_info(info, settings)
    else:
        check_hyperparameters(info, settings)
    if args.targets != "random" and not args.targeted:
        raise UsageError(f"--targets {args.targets}: needs --targeted")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, images, labels, name, data_spec = _attack_inputs(args, device)
    with torch.no_grad():
        num_classes = int(model(images[:1].to(device)).shape[1])
    target_sets = _target_sets(args, labels, num_classes)
    if args.targeted and args.targets != "random":
        data_spec["targets"] = args.targets
    warn_if_long("attack", info, settings, model, images, len(images) * len(target_sets), device)
    store = _open_store(args.db)
    run_ids: list[int] = []
    try:
        for targets in target_sets:
            result = run_attack(
                model,
                images,
                labels,
                info,
                norm=args.norm,
                targeted=args.targeted,
                targets=targets,
                hyperparameters=settings,
                batch_size=args.batch_size,
                store=store,
                model_name=name,
                data_spec=data_spec,
                seed=args.seed,
                progress=not (args.quiet or args.json),
            )
            _record_provenance(store, result, args.argv)
            run_ids.append(result.run_id)
    except KeyboardInterrupt:
        store.close()
        raise Interrupted(
            f"advx attack: interrupted: the finished batches are stored in {store.path} "
            "(status 'interrupted', see `advx report`); run the same command again to resume"
        ) from None
    try:
        runs = load_runs(store, run_ids)
        if args.json:
            print(json.dumps(_json_safe({"db": str(store.path), "runs": runs}), indent=2))
        else:
            print(runs_table(runs))
            for run in runs:
                for line in _budget_lines(run["summary"]) + _distortion_lines(run["summary"]):
                    print(line)
                for warning in (run["summary"] or {}).get("warnings", []):
                    _warn("attack", warning)
            for run_id in run_ids:
                print(f"stored as run {run_id} in {store.path}")
    finally:
        store.close()
    return 0


def _read_references(path) -> list:
    """The ``--reference`` JSON file: a list of the paper's figures."""
    if path is None:
        return []
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"--reference: cannot read {path} ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"--reference: {path} is not valid JSON ({error})") from None
    if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
        raise UsageError(f"--reference: {path} must hold a JSON list of objects")
    return found


def _command_report(args: argparse.Namespace) -> int:
    from .evaluation import resolve_db_path
    from .evaluation.html import write_html
    from .evaluation.markdown import render_markdown
    from .evaluation.provenance import command_text
    from .evaluation.report import incomplete_notes, load_runs, runs_table, write_report

    path = resolve_db_path(args.db)
    if not path.is_file():
        raise UsageError(
            f"--db: no results database at {path}; run `advx attack` first or pass --db"
        )
    store = _open_store(path)
    try:
        if args.json:
            from .evaluation.bench import runs_json

            print(runs_json(store.runs()))
            return 0
        runs = load_runs(store)
        references = _read_references(args.reference)
        if args.markdown == "-":
            page = render_markdown(
                store, title=args.title, command=command_text(args.argv), references=references
            )
            print(page, end="")
            return 0
        print(runs_table(runs))
        for line in incomplete_notes(runs, path if args.db else None):
            print(line)
        if args.markdown is not None:
            target = Path(args.markdown)
            target.parent.mkdir(parents=True, exist_ok=True)
            page = render_markdown(
                store, title=args.title, command=command_text(args.argv), references=references
            )
            target.write_text(page, encoding="utf-8")
            print(f"wrote {target}")
        out = args.out
        if out is None and args.html is None and args.markdown is None:
            out = "advx-report"
        if out is not None:
            for written in write_report(store, out):
                print(f"wrote {written}")
        if args.html is not None:
            print(f"wrote {write_html(store, args.html, command=command_text(args.argv))}")
    except (sqlite3.DatabaseError, json.JSONDecodeError, KeyError, IndexError) as error:
        raise _db_error(path, error) from error
    finally:
        store.close()
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


def _run_demo(store, out: Path, quiet: bool, device, seed: int, argv) -> list[Path]:
    from . import data, models
    from .evaluation import run_attack
    from .evaluation.html import write_html
    from .evaluation.provenance import command_text
    from .evaluation.report import load_runs, runs_table, write_report

    model = models.load_demo_model().to(device)
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
            seed=seed,
            progress=not quiet,
        )
        _record_provenance(store, result, argv)
        run_ids.append(result.run_id)
    print(runs_table(load_runs(store, run_ids)))
    command = command_text(argv)
    return [*write_report(store, out, run_ids), write_html(store, out, run_ids, command=command)]


def _command_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        store = _open_store(args.db if args.db else Path(tmp) / "demo.sqlite")
        try:
            written = _run_demo(store, out, args.quiet, device, args.seed, args.argv)
        finally:
            store.close()
    for path in written:
        print(f"wrote {path}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0


def _norms_text(info: AttackInfo) -> str:
    names = ["Linf" if math.isinf(p) else f"L{p:g}" for p in info.norms]
    return ", ".join(names) + (", any p>=1" if info.any_p else "")


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def attack_rows() -> list[dict]:
    """One dict per registered attack: name, kind, norms, access, randomized, paper and its
    hyperparameters with their defaults."""
    rows = []
    for name, info in sorted(attacks.ATTACKS.items()):
        rows.append(
            {
                "name": name,
                "kind": info.kind,
                "norms": _norms_text(info),
                "access": info.access,
                "randomized": info.randomized,
                "paper": info.paper,
                "hyperparameters": hyperparameter_defaults(info),
            }
        )
    return rows


def _command_attacks(args: argparse.Namespace) -> int:
    from .evaluation.report import format_table

    rows = attack_rows()
    if args.name is not None:
        try:
            info = attacks.get_attack(args.name)
        except ValueError as error:
            raise UsageError(f"name: {error}") from None
        rows = [r for r in rows if r["name"] == info.name]
    if args.json:
        print(json.dumps(_json_safe(rows), indent=2, default=str))
        return 0
    headers = ["attack", "kind", "norms", "access", "random", "paper"]
    cells = [
        [
            r["name"],
            r["kind"],
            r["norms"],
            r["access"],
            "yes" if r["randomized"] else "no",
            r["paper"],
        ]
        for r in rows
    ]
    print(format_table(headers, cells))
    print("\nhyperparameters (defaults; set them with --set KEY=VALUE):")
    for r in rows:
        values = " ".join(f"{k}={_value_text(v)}" for k, v in r["hyperparameters"].items())
        print(f"  {r['name']}: {values or '(none)'}")
    if args.name is not None:
        doc = inspect.getdoc(attacks.get_attack(args.name).function) or ""
        print("\n" + doc)
    return 0


def model_rows() -> list[dict]:
    """One dict per zoo model: name, dataset, input shape, architecture, expected accuracy,
    and whether it is cached (bundled, cached at a path, or to be trained on first use)."""
    from . import models

    rows = []
    for name, spec in sorted(models.MODELS.items()):
        cached, path = _is_cached(name)
        bundled = cached and "assets" in path.parts
        rows.append(
            {
                "name": name,
                "dataset": spec.dataset,
                "input": "x".join(str(s) for s in spec.input_shape),
                "architecture": spec.description or spec.builder.__class__.__name__,
                "task": spec.task,
                "expected accuracy": spec.expected_accuracy,
                "cached": "bundled" if bundled else ("yes" if cached else "no"),
                "path": str(path),
                "epochs": spec.epochs,
            }
        )
    return rows + _variant_rows()


def _variant_rows() -> list[dict]:
    """One dict per trained variant in the cache (a ``<name>.pt`` recording a zoo architecture
    under another name: ``mnist-madry``, ``mnist-cnn-distilled-t100``, ``mnist-cnn-adv-ddn``),
    with its measured test accuracy."""
    from . import models
    from .models.checkpoints import read_checkpoint

    rows = []
    for path in sorted(models.resolve_cache_dir().glob("*.pt")):
        if path.stem in models.MODELS:
            continue
        try:
            blob = read_checkpoint(path)
            spec = models.get_spec(blob["architecture"])
        except Exception:  # not an advx model file: not listed
            continue
        accuracy = (blob.get("metrics") or {}).get("test_accuracy")
        rows.append(
            {
                "name": path.stem,
                "dataset": spec.dataset,
                "input": "x".join(str(s) for s in spec.input_shape),
                "architecture": f"trained variant of {spec.name} (accuracy: as measured)",
                "task": spec.task,
                "expected accuracy": accuracy,
                "cached": "yes",
                "path": str(path),
                "epochs": (blob.get("metrics") or {}).get("epochs"),
            }
        )
    return rows


def _command_models(args: argparse.Namespace) -> int:
    from .evaluation.report import format_table

    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ["model", "dataset", "input", "cached", "expected acc", "architecture"]
    cells = [
        [
            r["name"],
            r["dataset"],
            r["input"],
            r["cached"]
            if r["cached"] != "no"
            else f"no (trains {r['epochs']} epochs on first use)",
            "-" if r["expected accuracy"] is None else f"{100 * r['expected accuracy']:.1f}%",
            r["architecture"],
        ]
        for r in rows
    ]
    print(format_table(headers, cells))
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    from .evaluation.bench import failure_report, run_sweep, summary_table

    result = run_sweep(
        args.config,
        executor=args.executor,
        db=args.db,
        address=args.address,
        max_parallel=args.max_parallel,
        progress=not args.quiet,
    )
    print(summary_table(result))
    print(f"results in {result.db}")
    if result.failed:
        print(f"{len(result.failed)} of {len(result.outcomes)} jobs failed:", file=sys.stderr)
        print(failure_report(result), file=sys.stderr)
        return 1
    return 0


COMMANDS = {
    "train": _command_train,
    "attack": _command_attack,
    "report": _command_report,
    "bench": _command_bench,
    "demo": _command_demo,
    "attacks": _command_attacks,
    "models": _command_models,
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_exit(error: BaseException, command: str, db) -> int:
    """Print one line for ``error`` and return the exit status."""
    from .evaluation import resolve_db_path

    prefix = f"advx {command}: error:" if command else "advx: error:"
    if isinstance(error, CommandError):
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return 1
    if isinstance(error, sqlite3.DatabaseError):
        print(f"{prefix} {_one_line(_db_error(resolve_db_path(db), error))}", file=sys.stderr)
        return 1
    if isinstance(error, (ValueError, TypeError)):
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return 2
    if isinstance(error, OSError):
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return 1
    print(
        f"{prefix} {type(error).__name__}: {_one_line(error)[:300]} "
        "(run again with --debug for the traceback)",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``advx`` command line; return the exit status (2 for bad arguments, 1 for a
    failed file or run, 130 after Ctrl-C). ``--debug`` re-raises errors with their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    command, db = "", None
    try:
        args = parser.parse_args(argv)
        args.argv = argv
        command, db = args.command, getattr(args, "db", None)
        return COMMANDS[args.command](args)
    except SystemExit as exit_:  # --help, --version
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    except UsageError as error:
        if debug:
            raise
        message = str(error)
        if not message.startswith("advx"):
            message = f"advx {command}: error: {message}"
        print(_one_line(message), file=sys.stderr)
        return 2
    except Interrupted as error:
        print(_one_line(error), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"advx {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        return _error_exit(error, command, db)


if __name__ == "__main__":
    sys.exit(main())
