"""advx against peer libraries (foolbox, torchattacks, adv-lib) on the same images, side by side:
DeepFool L2 (50 steps, overshoot 0.02, 10 candidates), Carlini-Wagner L2 (same search x steps
budget, c_0 = 1e-3, Adam lr 0.01, abort early), DDN (100 steps, epsilon_0 = 1, gamma = 0.05,
no quantisation), the trust-region attack (L2, adaptive, first order, each library's
defaults; only adv-lib has one) and EAD (foolbox EADAttack, torchattacks EADEN, ART
ElasticNet; same search x steps budget, beta = 1e-3, EN rule, c_0 = 1e-3, lr 0.01, abort
early). Prints median and mean L2 (L1 and the elastic-net distance for EAD) of the
successful examples, success rate (re-checked
here with a fresh forward pass, never taken from the library) and wall seconds per image.

The images are the harness's (``benchmarks/_harness.py``: the first N correctly classified
test images, the same for every library). The peers are never advx dependencies:
run this from a separate environment that has them, e.g.

    python3 -m venv /work/peers && /work/peers/bin/pip install torch==2.13.0 foolbox \
        torchattacks adv-lib && /work/peers/bin/pip install -e .
    /work/peers/bin/python benchmarks/peers.py --models mnist-cnn --n 200 --cw-n 100 \
        --cw-search 9 --cw-steps 1000 --out results/peers

(Where adv-lib's dependency visdom does not build, as under setuptools 84: install adv-lib with
``--no-deps`` beside torchvision, tqdm and scipy, and give the venv a stand-in ``visdom.py``
defining ``class Visdom``; adv-lib imports it only for logging that this script never enables.)

A peer that cannot be imported is skipped (the output says so). Batches are timed one at a time
and the order of the implementations rotates from one batch to the next, so that a slower or
faster spell of the shared machine does not favour one of them. advx's own rows are timed and
re-checked here in the same way as the peers' (not through ``run_attack``), so that the timing is
side by side and fair: the same loop, the same batches, the same wall clock. Rows are kept in
``<out>/results.jsonl`` (the harness's results format, with the command, date, machine and torch
version of the run; ``benchmarks/peers_report.py`` reads them); a rerun skips an attack family
whose rows for the same model, budget, images and libraries are there already (resume): to
measure again, give another ``--out``. The models must be trained already (``advx train NAME``);
the script never trains one.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import _harness as harness
import torch

from advx.attacks import carlini_wagner_l2, ddn, deepfool, ead, lp_norm, trust_region

Attack = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _import_adv_lib(module: str):
    """Import one adv-lib attack module without ``adv_lib.attacks.__init__``, which pulls in
    every attack (and torchvision through LPIPS)."""
    if "adv_lib.attacks" not in sys.modules:
        root = importlib.import_module("adv_lib")
        package = types.ModuleType("adv_lib.attacks")
        package.__path__ = [str(Path(root.__file__).parent / "attacks")]
        sys.modules["adv_lib.attacks"] = package
    return importlib.import_module(f"adv_lib.attacks.{module}")


def _foolbox_attack(make: Callable) -> Attack:
    import foolbox

    def run(model, x, y):
        fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
        raw, _, _ = make(foolbox.attacks)(fmodel, x, y, epsilons=None)
        return raw

    return run


def _deepfool_implementations(args) -> tuple[dict[str, Attack], list[str]]:
    steps, overshoot, candidates = args.df_steps, 0.02, 10
    impls: dict[str, Attack] = {
        "advx": lambda m, x, y: deepfool(
            m, x, y, norm=2, steps=steps, overshoot=overshoot, candidates=candidates
        )
    }
    missing = []
    try:
        impls["foolbox"] = _foolbox_attack(
            lambda a: a.L2DeepFoolAttack(steps=steps, candidates=candidates, overshoot=overshoot)
        )
    except ImportError as error:
        missing.append(f"foolbox ({error})")
    try:
        import torchattacks

        impls["torchattacks"] = lambda m, x, y: torchattacks.DeepFool(
            m, steps=steps, overshoot=overshoot
        )(x, y)
    except ImportError as error:
        missing.append(f"torchattacks ({error})")
    try:
        df = _import_adv_lib("deepfool").df  # all classes: the same as 10 candidates here
        impls["adv-lib"] = lambda m, x, y: df(m, x, y, steps=steps, overshoot=overshoot, norm=2)
    except ImportError as error:
        missing.append(f"adv-lib ({error})")
    return impls, missing


def _cw_implementations(args) -> tuple[dict[str, Attack], list[str]]:
    search, steps = args.cw_search, args.cw_steps
    impls: dict[str, Attack] = {
        "advx": lambda m, x, y: carlini_wagner_l2(
            m, x, y, c_init=1e-3, binary_search_steps=search, steps=steps, lr=0.01
        )
    }
    missing = ["torchattacks (its CW has no binary search over c: no matching budget)"]
    try:
        impls["foolbox"] = _foolbox_attack(
            lambda a: a.L2CarliniWagnerAttack(
                binary_search_steps=search, steps=steps, stepsize=0.01, initial_const=1e-3
            )
        )
    except ImportError as error:
        missing.append(f"foolbox ({error})")
    try:
        cw = _import_adv_lib("carlini_wagner.l2").carlini_wagner_l2
        impls["adv-lib"] = lambda m, x, y: cw(
            m,
            x,
            y,
            binary_search_steps=search,
            max_iterations=steps,
            learning_rate=0.01,
            initial_const=1e-3,
        )
    except ImportError as error:
        missing.append(f"adv-lib ({error})")
    return impls, missing


def _ddn_implementations(args) -> tuple[dict[str, Attack], list[str]]:
    steps = args.ddn_steps
    impls: dict[str, Attack] = {"advx": lambda m, x, y: ddn(m, x, y, steps=steps)}
    missing = ["torchattacks (no DDN)"]
    try:
        impls["foolbox"] = _foolbox_attack(
            lambda a: a.DDNAttack(init_epsilon=1.0, steps=steps, gamma=0.05)
        )
    except ImportError as error:
        missing.append(f"foolbox ({error})")
    try:
        run = _import_adv_lib("decoupled_direction_norm").ddn
        impls["adv-lib"] = lambda m, x, y: run(
            m, x, y, steps=steps, init_norm=1.0, γ=0.05, levels=None
        )
    except ImportError as error:
        missing.append(f"adv-lib ({error})")
    return impls, missing


def _hyperparameters(text: str) -> dict[str, float]:
    """'sigma2=0.8,eta=1.5' -> {'sigma2': 0.8, 'eta': 1.5} (numbers; integers stay int)."""
    options = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if not key or not value:
            raise SystemExit(f"--tr-variants: expected KEY=VALUE[,KEY=VALUE], got {text!r}")
        number = float(value)
        options[key.strip()] = int(number) if number.is_integer() and "." not in value else number
    return options


def _tr_implementations(args) -> tuple[dict[str, Attack], list[str]]:
    """Trust region, L2, adaptive radius, first order, each library with its own defaults
    (advx: at most 300 steps, the nearest of 9 candidate classes re-chosen per step, their
    gradients re-evaluated every 3rd step while the choice is in doubt, radius from 0.03 d0
    within [0.025 d0, d0]; adv-lib: 100 iterations, the nearest of 9 classes chosen once, radius
    from 1e-3 within [5e-4, 0.05]), no refinement."""
    impls: dict[str, Attack] = {
        "advx": lambda m, x, y: trust_region(m, x, y, norm=2, adaptive=True)
    }
    for variant in args.tr_variants or []:
        impls[f"advx ({variant})"] = functools.partial(
            trust_region, norm=2, adaptive=True, **_hyperparameters(variant)
        )
    missing = ["foolbox (no trust-region attack)", "torchattacks (no trust-region attack)"]
    try:
        tr = _import_adv_lib("trust_region").tr
        impls["adv-lib"] = lambda m, x, y: tr(m, x, y, adaptive=True, p=2)
    except ImportError as error:
        missing.append(f"adv-lib ({error})")
    return impls, missing


def _art_elastic_net(model, x, y, search: int, steps: int, beta: float):
    """ART's ElasticNet on a PyTorchClassifier (numpy in and out, its own batching)."""
    from art.attacks.evasion import ElasticNet
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    attack = ElasticNet(
        classifier,
        binary_search_steps=search,
        max_iter=steps,
        beta=beta,
        learning_rate=0.01,
        initial_const=1e-3,
        batch_size=x.shape[0],
        decision_rule="EN",
        verbose=False,
    )
    return torch.from_numpy(attack.generate(x.numpy(), y.numpy())).to(x.dtype)


def _ead_implementations(args) -> tuple[dict[str, Attack], list[str]]:
    search, steps, beta = args.cw_search, args.cw_steps, args.ead_beta
    impls: dict[str, Attack] = {
        "advx": lambda m, x, y: ead(
            m, x, y, beta=beta, c_init=1e-3, binary_search_steps=search, steps=steps, lr=0.01
        )
    }
    missing = []
    try:
        impls["foolbox"] = _foolbox_attack(
            lambda a: a.EADAttack(
                binary_search_steps=search,
                steps=steps,
                initial_stepsize=0.01,
                initial_const=1e-3,
                regularization=beta,
                decision_rule="EN",
            )
        )
    except ImportError as error:
        missing.append(f"foolbox ({error})")
    try:
        import torchattacks

        impls["torchattacks"] = lambda m, x, y: torchattacks.EADEN(
            m,
            kappa=0,
            lr=0.01,
            binary_search_steps=search,
            max_iterations=steps,
            initial_const=1e-3,
            beta=beta,
        )(x, y)
    except ImportError as error:
        missing.append(f"torchattacks ({error})")
    try:
        import art  # noqa: F401

        impls["art"] = lambda m, x, y: _art_elastic_net(m, x, y, search, steps, beta)
    except ImportError as error:
        missing.append(f"art ({error})")
    return impls, missing


def _median_all(values: torch.Tensor, success: torch.Tensor) -> float:
    """The median over every image with a failure counted as an infinite norm: the norm at
    which half of the images are broken, comparable between libraries whose successes differ."""
    return torch.where(success, values, torch.inf).double().quantile(0.5).item()


def _distortions(adv: torch.Tensor, x: torch.Tensor, success: torch.Tensor, beta: float) -> dict:
    """Median and mean L2, L1 and elastic-net distance over the successful examples, the median
    L2 over all images (failures infinite) and the per-image L2 (``inf`` where it failed)."""
    delta = adv - x
    columns = {
        "l2": lp_norm(delta, 2),
        "l1": lp_norm(delta, 1),
        "en": lp_norm(delta, 2) ** 2 + beta * lp_norm(delta, 1),
    }
    row = {}
    for name, values in columns.items():
        kept = values[success].tolist()
        row[f"median_{name}"] = statistics.median(kept) if kept else float("nan")
        row[f"mean_{name}"] = statistics.fmean(kept) if kept else float("nan")
    row["median_l2_all"] = _median_all(columns["l2"], success)
    row["l2_per_image"] = torch.where(success, columns["l2"], torch.inf).tolist()
    return row


def _compare(
    model, x, y, impls: dict[str, Attack], batch: int, beta: float = 1e-3
) -> dict[str, dict]:
    """Run every implementation batch by batch, rotating their order per batch."""
    names = list(impls)
    seconds = dict.fromkeys(names, 0.0)
    advs: dict[str, list] = {name: [] for name in names}
    for b, start in enumerate(range(0, x.shape[0], batch)):
        xb, yb = x[start : start + batch], y[start : start + batch]
        for name in names[b % len(names) :] + names[: b % len(names)]:
            tic = time.perf_counter()
            adv = impls[name](model, xb.clone(), yb.clone())
            seconds[name] += time.perf_counter() - tic
            advs[name].append(adv.detach().clamp(0, 1))  # every peer returns [0, 1] already
    rows = {}
    for name in names:
        adv = torch.cat(advs[name])
        with torch.no_grad():
            success = model(adv).argmax(1) != y
        rows[name] = {
            "success": success.float().mean().item(),
            **_distortions(adv, x, success, beta),
            "seconds_per_image": seconds[name] / x.shape[0],
        }
    return rows


def _key(row: dict) -> str:
    return json.dumps([row["model"], row["attack"], row["budget"], row["n"], row["library"]])


def _families(args) -> dict[str, tuple[Callable, int, str]]:
    """family -> (its implementations, number of images, budget as printed and stored)."""
    return {
        "deepfool": (_deepfool_implementations, args.n, f"L2, {args.df_steps} steps"),
        "ddn": (_ddn_implementations, args.n, f"{args.ddn_steps} steps"),
        "cw": (_cw_implementations, args.cw_n, f"L2, {args.cw_search}x{args.cw_steps}"),
        "tr": (_tr_implementations, args.n, "L2, adaptive, first order, library defaults"),
        "ead": (
            _ead_implementations,
            args.ead_n,
            f"EN rule, beta {args.ead_beta:g}, {args.cw_search}x{args.cw_steps}",
        ),
    }


def _provenance() -> dict:
    """How, when and where the rows were measured (stored with every row)."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _print_rows(family: str, budget: str, n: int, rows: list[dict]) -> None:
    print(f"{family} ({budget}) on {n} images")
    norm = "l1" if family == "ead" else "l2"
    head = f"  {'library':<13} {'success':>8} {'median ' + norm.upper():>10} "
    head += f"{'mean ' + norm.upper():>9} {'mean EN':>9} {'s/img':>8}"
    print(head)
    for row in rows:
        print(
            f"  {row['library']:<13} {row['success']:>8.3f} {row['median_' + norm]:>10.4f} "
            f"{row['mean_' + norm]:>9.4f} {row['mean_en']:>9.4f} "
            f"{row['seconds_per_image']:>8.4f}",
            flush=True,
        )


def run_model(name: str, args, results) -> None:
    """Every requested family on model ``name``: all its libraries side by side."""
    wanted = max(args.n, args.cw_n, args.ead_n)
    model, x, y = harness.evaluation_images(
        name, wanted, args.data_dir, weights=args.weights, dataset=args.dataset
    )
    print(f"model {name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    run = _provenance()
    for family in args.attacks:
        make, n, budget = _families(args)[family]
        n = min(n, x.shape[0])  # fewer when the split holds fewer correct images
        impls, missing = make(args)
        if args.libraries is not None:
            impls = {k: v for k, v in impls.items() if k.startswith("advx") or k in args.libraries}
        for line in missing:
            print(f"  {family}: skipped {line}")
        rows = [
            {"model": name, "attack": family, "budget": budget, "n": n, "library": library}
            for library in impls
        ]
        if not all(_key(row) in results for row in rows):
            measured = _compare(model, x[:n], y[:n], impls, args.batch_size, args.ead_beta)
            for row in rows:
                results.record(measured[row["library"]] | row | run)
        _print_rows(family, budget, n, [results[_key(row)] for row in rows])


def main(argv: list[str] | None = None) -> None:
    """Run the comparison (``argv``: the command-line arguments)."""
    parser = harness.parser(__doc__, models=["mnist-cnn"], n=200, out="results/peers")
    parser.add_argument("--cw-n", type=int, default=100, help="images for C&W")
    parser.add_argument("--ead-n", type=int, default=20, help="images for EAD")
    parser.add_argument("--ead-beta", type=float, default=1e-3)
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=["deepfool", "ddn", "cw", "tr"],
        choices=["deepfool", "ddn", "cw", "tr", "ead"],
    )
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=None,
        help="run only these (advx always runs), e.g. --libraries adv-lib for a two-way rotation",
    )
    parser.add_argument(
        "--tr-variants",
        nargs="+",
        help="extra advx trust-region rows in the rotation, e.g. sigma2=0.8 (library 'advx (...)')",
    )
    parser.add_argument("--df-steps", type=int, default=50)
    parser.add_argument("--ddn-steps", type=int, default=100)
    parser.add_argument("--cw-search", type=int, default=9)
    parser.add_argument("--cw-steps", type=int, default=1000)
    args = parser.parse_args(argv)
    results = harness.setup(args, key=_key)
    for name in args.models:
        run_model(name, args, results)


if __name__ == "__main__":
    main()
