"""Trust-region attack: the structure of Tables 1, 2 and 5 and Figure 4 of Yao, Gholami, Xu,
Keutzer & Mahoney, "Trust Region Based Adversarial Attack on Neural Networks", CVPR 2019
(../shared/papers/trust-region-attack.txt), on our models.

On the first ``--n`` correctly classified test images of each model:

* Table 1 (best class): average / worst relative perturbation rho_p = ||delta||_p / ||x||_p
  (eq. (4)) over the successful samples, success rate and seconds per image, for
  L2: DeepFool-L2, C&W L2 (9 x 1000 steps, initial constant 1e-3; ``--cw-search``,
  ``--cw-steps``, ``--cw-c-init``), TR fixed radius ("TR Non-Adap"), TR adaptive ("TR Adap");
  Linf: DeepFool-Linf; "I-FGSM": ``ifgm`` with 10 steps of 2.5 eps / 10 at the smallest eps per
  sample (eps doubled from 1/255 until it fools, then bisected ``--ifgsm-bisect`` times), a
  stronger baseline than the paper's; "I-FGSM fixed step": the paper's Sec. 4.1 iteration
  x <- clip(x + eps sign(grad CE)) with eps = 1/255 (``--ifgsm-step``), at most 128 steps
  (``--ifgsm-max-steps``); TR fixed, TR adaptive, and "TR adaptive + refine" (50 boundary
  refinement steps, ``--refine-steps``: not in the paper, see ``trust_region``). TR fixed keeps
  the attack's default first radius (0.03 d0, d0 the first linearised distance of each sample)
  for the whole run.
* Table 2 (hardest class): the class with the largest linearised distance at the start.
  "[hardest]" rows use ``trust_region(target='hardest')``'s own choice, success = any
  misclassification (the paper's protocol); "DeepFool [hardest]" is DeepFool's step towards
  that same class (``trust_region`` with an unbounded fixed radius: the first-order TR step
  then is the DeepFool step f / ||g||_q, with DeepFool's overshoot and box handling).
  "-> class" rows attack ``select_targets(mode='hardest')``'s class as a fixed target
  (``deepfool`` and ``trust_region`` with ``targeted=True``), success = that class wins.
* Table 5: model accuracy (on the first ``--t5-n`` test images, misclassified ones included, as
  the paper's baseline accuracy) after k = 1..10 iterations of first- and second-order TR (L2,
  best class, fixed radius ``--t5-radius``, default 0.2 in [0, 1] pixel units, which plays the
  paper's radius 1 on normalised inputs), on the Swish models, with seconds per image. Two
  variants (``--t5-variants``): "Alg.1" takes the minimiser of the model in the ball, as the
  paper's Algorithm 1 prints it (``stop_at_boundary=False``); "stop" stops each step at the
  model's zero plus the overshoot (the default of the minimal-norm attack). Second order uses
  each ``--t5-solvers`` (Lanczos/GLTR by default; Steihaug-CG for comparison).
* Figure 4: average and worst rho_2 against seconds per image, one point per (model, L2
  attack), ``<out>/fig4_perturbation_vs_time.png``.

The paper's target figures are checked at the end and printed as HOLDS / FAILS.

Where the rows come from: the rows a grid expresses (Table 1 but for "I-FGSM", Table 2 but for
the "-> class" rows) are the ``advx bench`` sweeps ``<configs>/trust_region_table1_<dataset>.toml``
and ``trust_region_table2_<dataset>.toml`` (``--configs``, default ``benchmarks/configs``) with
``--n``, ``--models``, ``--batch-size``, ``--threads`` and the budget options above applied, run
by ``run_sweep`` into ``<out>/sweep.sqlite`` (``--executor local|ray``; a rerun skips the
finished jobs; failed jobs are listed and end the run) and read back from the store (rho_p: the
per-sample ``rel_l2`` / ``rel_linf``). Other settings of those rows (e.g. an absolute TR fixed
radius) go into edited copies of the configs (``--configs``). The script computes itself, on the
shared harness (``_harness.measure``: ``run_attack``), the bisected I-FGSM row (an attack of its
own) and the "-> class" rows (their target tensor, which no targeted mode of a grid names),
appended to ``<out>/results.jsonl`` and skipped on a rerun (resume); Table 5 (``trust_region``'s
per-iteration callback, which ``run_attack`` cannot pass); the checks and the plot.

Measured with this script (notes moved here from the attack's docstrings):

* Lanczos vectors: on both Swish models ``cg_steps`` = 3, 5 and 10 gave the same Table 5
  accuracies, hence the default 5 (the fewest Hessian-vector products among them).
* Steihaug-CG: at radius 0.2 on the Swish models its Table 5 accuracies without the stop
  (``stop_at_boundary=False``) equal first order's at every k (its first direction, -g, leaves
  the ball at once, so it returns the steepest-descent step), hence Lanczos by default.

    python benchmarks/trust_region.py --models mnist-cnn cifar-cnn cifar-alexlike \
        cifar-alexlike-swish --n 1000 --out results/trust_region
    python benchmarks/trust_region.py --models mnist-cnn --n 100 --cw-search 9 --cw-steps 1000
    python benchmarks/trust_region.py --models cifar-mlp-swish --n 100 --t5-n 500
    python benchmarks/trust_region.py --models mnist-cnn --n 5 --tables 1 2 --cw-search 2 \
        --cw-steps 100 --cw-c-init 1 --refine-steps 3 --ifgsm-bisect 2 --ifgsm-max-steps 60 \
        --out /tmp/trust_region                                            # smoke run

Models whose checkpoint is not cached are skipped unless ``--train``.
"""

from __future__ import annotations

import time
from pathlib import Path

import _harness as harness
import torch

from advx.attacks import ifgm, select_targets, trust_region
from advx.attacks.registry import MINIMAL, AttackInfo
from advx.checks import INF
from advx.data import load_dataset
from advx.models import get_spec, load

DEFAULT_MODELS = [
    "mnist-cnn",
    "cifar-cnn",
    "cifar-alexlike",
    "cifar-alexlike-swish",
    "cifar-mlp-swish",
]
SWISH_MODELS = ("cifar-mlp-swish", "cifar-alexlike-swish")
CONFIGS = Path(__file__).parent / "configs"
REFINED = "TR adaptive + refine"
L2_BEST = ("DeepFool", "C&W", "TR fixed", "TR adaptive", REFINED)
LINF_BEST = ("DeepFool", "I-FGSM", "I-FGSM fixed step", "TR fixed", "TR adaptive", REFINED)
HARDEST = (
    "DeepFool [hardest]",
    "TR fixed [hardest]",
    "TR adaptive [hardest]",
    "TR adaptive [hardest] + refine",
    "DeepFool -> class",
    "TR adaptive -> class",
)
# The paper's fixed-step I-FGSM, as in the Table 1 configs (where the options are not given).
IFGSM_STEP, IFGSM_MAX_STEPS = 1 / 255, 128


# --------------------------------------------------------------------------- attacks


def _minimal_ifgsm(
    model, x, y, *, steps: int = 10, bisect: int = 6, eps0: float = 1 / 255, targeted=False
):
    """I-FGSM (Kurakin et al.; the paper's iterative FGSM baseline) with the smallest Linf budget
    per sample: eps doubles from ``eps0`` until the attack fools (at most 1), then ``bisect``
    bisection rounds; returns the adversarial found at the smallest fooling eps (untargeted
    only)."""
    if targeted:
        raise ValueError("targeted: the minimal-eps I-FGSM row is untargeted")
    n = x.shape[0]
    lo, hi = torch.zeros(n), torch.full((n,), float("nan"))
    best = x.clone()
    eps = torch.full((n,), eps0)

    def attempt(e):
        adv = ifgm(model, x, y, eps=e, norm=INF, steps=steps, step_size=2.5 * e / steps)
        with torch.no_grad():
            return adv, model(adv).argmax(1) != y

    while True:  # doubling, per sample, on those without an upper bound
        todo = torch.isnan(hi) & (eps <= 1.0)
        if not todo.any():
            break
        adv, ok = attempt(eps)
        hit = todo & ok
        hi[hit], best[hit] = eps[hit], adv[hit]
        lo[todo & ~ok] = eps[todo & ~ok]
        eps = torch.where(todo & ~ok, eps * 2, eps)
    found = ~torch.isnan(hi)
    for _ in range(bisect):
        if not found.any():
            break
        mid = torch.where(found, (lo + hi) / 2, torch.ones(n))
        adv, ok = attempt(mid)
        hit = found & ok
        hi[hit], best[hit] = mid[hit], adv[hit]
        lo[found & ~ok] = mid[found & ~ok]
    return best


MINIMAL_IFGSM = AttackInfo(
    name="i-fgsm-minimal-eps",
    function=_minimal_ifgsm,
    kind=MINIMAL,
    norms=(INF,),
    paper="Kurakin et al. 2017 (eps bisected per sample)",
)


def _table5_rows(model, x, y, args, **options) -> list[dict]:
    """Accuracy after k = 1..``args.t5_k`` fixed-radius (``args.t5_radius``) TR iterations (L2,
    best class) with the given ``trust_region`` options (order, solver, stop_at_boundary), from
    one run per batch (``trust_region``'s callback), with the cumulative seconds per image up to
    iteration k and per image-iteration (an image iterates at step k while it is not yet
    adversarial). Called directly, not through ``run_attack``: the runner passes no
    per-iteration callback and measures only the final examples."""
    steps = args.t5_k
    fooled = torch.zeros(steps + 1, x.shape[0], dtype=torch.bool)
    seconds = torch.zeros(steps + 1)
    for i in range(0, x.shape[0], args.batch_size):
        sl = slice(i, i + args.batch_size)
        start = time.perf_counter()
        marks = {}

        def record(k, _iterates, succeeded, marks=marks, start=start):
            marks[k] = (succeeded.clone(), time.perf_counter() - start)

        trust_region(
            model,
            x[sl],
            y[sl],
            adaptive=False,
            radius=args.t5_radius,
            steps=steps,
            callback=record,
            **options,
        )
        last = max(marks)
        for k in range(steps + 1):  # after the last call every sample has succeeded
            mask, elapsed = marks[min(k, last)]
            fooled[k, sl] = mask
            seconds[k] += elapsed
    iterations = (~fooled[:-1]).sum(1).cumsum(0)  # image-iterations up to step k = 1..steps
    return [
        {
            "k": k,
            "accuracy": 1 - fooled[k].float().mean().item(),
            "seconds_per_image": seconds[k].item() / x.shape[0],
            "seconds_per_iteration": seconds[k].item() / max(int(iterations[k - 1]), 1),
        }
        for k in range(1, steps + 1)
    ]


# --------------------------------------------------------------------------- bookkeeping


def _key(row: dict) -> tuple:
    return (row["model"], row["table"], row["attack"], row["norm"], row.get("k"), row["n"])


def _fmt(row: dict | None) -> str:
    if row is None:
        return f"{'-':>24}"
    if row["success"] == 0:
        return f"{'no success':>24}"
    text = f"{100 * row['avg_rho']:.2f}% / {100 * row['worst_rho']:.2f}%"
    return f"{text:>17} {100 * row['success']:>5.1f}%"


def _norm_name(p: float) -> str:
    return "linf" if p == INF else "l2"


# --------------------------------------------------------------------------- grid rows


def _grid_name(job) -> str:
    """The table row name of a sweep job of the trust-region configs."""
    hp = job.hyperparameters
    if job.attack == "deepfool":
        return "DeepFool"
    if job.attack == "cw-l2":
        return "C&W"
    if job.attack == "ifgm":
        return "I-FGSM fixed step"
    if job.attack != "trust-region":
        raise ValueError(f"no table row for the job {job.label()}")
    hardest = hp.get("target") == "hardest"
    if hardest and hp.get("adaptive") is False and hp.get("radius", 0) >= 1e9:
        return "DeepFool [hardest]"
    name = "TR fixed" if hp.get("adaptive") is False else "TR adaptive"
    name += " [hardest]" if hardest else ""
    return name + (" + refine" if hp.get("refine_steps", 0) else "")


def _overrides(args) -> dict:
    """The budget options given, as replacements of the configs' values."""
    cw = {
        key: value
        for key, value in (
            ("binary_search_steps", args.cw_search),
            ("steps", args.cw_steps),
            ("c_init", args.cw_c_init),
        )
        if value is not None
    }
    overrides = {"cw-l2": cw}
    if args.refine_steps is not None:
        overrides["trust-region"] = {"refine_steps": args.refine_steps}
    if args.ifgsm_step is not None or args.ifgsm_max_steps is not None:
        step = IFGSM_STEP if args.ifgsm_step is None else args.ifgsm_step
        count = IFGSM_MAX_STEPS if args.ifgsm_max_steps is None else args.ifgsm_max_steps
        overrides["ifgm"] = {"eps": min(1.0, step * count), "steps": count, "step_size": step}
    return overrides


def _grid_rows(dataset: str, models: list[str], args) -> list[dict]:
    """The Table 1 and 2 rows of ``models`` (all of ``dataset``) that the configs express, run as
    sweeps and read back from the store."""
    rows = []
    for table in ("1", "2"):
        if table not in args.tables:
            continue
        path = Path(args.configs) / f"trust_region_table{table}_{dataset}.toml"
        drop = ("cw-l2",) if args.cw_search == 0 else ()
        for entry in harness.sweep_rows(path, args, models, overrides=_overrides(args), drop=drop):
            job = entry["job"]
            row = _table_row(entry["figures"]) | {
                "model": job.model,
                "table": table,
                "attack": _grid_name(job),
                "n": entry["summary"]["n"],
                "run_id": entry["run_id"],
            }
            if job.attack == "cw-l2":
                hp = job.hyperparameters
                row["budget"] = f"{hp['binary_search_steps']}x{hp['steps']} c0={hp['c_init']:g}"
            rows.append(row)
    return rows


def _table_row(figures: dict) -> dict:
    """A Table 1/2 row from ``_harness.run_figures`` (of a stored run or of ``measure``)."""
    return {
        "norm": figures["norm"],
        "success": figures["success"],
        "avg_rho": figures["relative_mean"],
        "median_rho": figures["relative_median"],
        "worst_rho": figures["relative_worst"],
        "avg_norm": figures["mean"],
        "median_norm": figures["median"],
        "seconds_per_image": figures["seconds_per_image"],
        "gradients_per_image": figures["gradients_per_image"],
    }


# --------------------------------------------------------------------------- per model


def _load(name: str, args):
    try:
        return load(name, args.data_dir, train_if_missing=args.train).eval()
    except FileNotFoundError as err:
        print(f"\n{name}: skipped ({err}); use --train to train it")
        return None


def _script_rows(name: str, args, done) -> int:
    """The Table 1/2 rows no grid expresses, through ``run_attack`` (``_harness.measure``) on
    the first ``--n`` correct images, appended to ``done`` unless already there: the
    minimal-eps I-FGSM (Table 1, Linf) and the "-> class" rows (Table 2). Returns the number
    of images."""
    wanted = []
    if "1" in args.tables:
        wanted.append(("1", "I-FGSM", INF, MINIMAL_IFGSM, {"bisect": args.ifgsm_bisect}))
    if "2" in args.tables:
        for p in (2.0, INF):
            wanted += [("2", "DeepFool -> class", p, "deepfool", {})]
            wanted += [("2", "TR adaptive -> class", p, "trust-region", {})]

    def missing(n: int) -> list[tuple]:
        return [w for w in wanted if (name, w[0], w[1], _norm_name(w[2]), None, n) not in done]

    if not missing(args.n):
        return args.n
    model, x, y = harness.evaluation_images(name, args.n, args.data_dir)
    hard = {}
    for table, attack, p, function, hyperparameters in missing(x.shape[0]):
        run = {"norm": p, "hyperparameters": hyperparameters, "batch": args.batch_size}
        if attack.endswith("-> class"):
            if p not in hard:
                hard[p] = select_targets(model, x, y, mode="hardest", norm=p)
            run |= {"targeted": True, "targets": hard[p]}
        figures = harness.measure(model, x, y, function, **run)
        row = _table_row(figures) | {"model": name, "table": table, "attack": attack}
        done.record(row | {"n": x.shape[0]})
    return x.shape[0]


def _print_tables(name: str, rows: dict, n: int, args) -> None:
    """Tables 1 and 2 of model ``name`` on ``n`` images, rows from the sweep and the script."""
    for table, groups in (
        ("1", ((2.0, L2_BEST), (INF, LINF_BEST))),
        ("2", ((2.0, HARDEST), (INF, HARDEST))),
    ):
        if table not in args.tables:
            continue
        for p, attacks in groups:
            print(
                f"\n[{name}] Table {table} ({'best' if table == '1' else 'hardest'} class), "
                f"rho_{'inf' if p == INF else 2}: avg / worst, success, s/img"
            )
            for attack in attacks:
                if attack == "C&W" and args.cw_search == 0:
                    continue
                row = rows.get((name, table, attack, _norm_name(p), None, n))
                seconds = "" if row is None else f"{row['seconds_per_image']:>9.4f} s/img"
                print(f"  {attack:<24}{_fmt(row)} {seconds}", flush=True)


def _accuracy(name: str, model, args, done) -> float:
    """Accuracy of the model on the first 1000 test images (a row of ``done``, kept for reruns)."""
    n = harness.EVALUATED_TEST_IMAGES
    key = (name, "accuracy", "clean", "-", None, n)
    if key not in done:
        images, labels = load_dataset(get_spec(name).dataset, "test", args.data_dir)
        with torch.no_grad():
            correct = model(images[:n]).argmax(1) == labels[:n]
        row = {"model": name, "table": "accuracy", "attack": "clean", "norm": "-", "n": n}
        done.record(row | {"accuracy": correct.float().mean().item()})
    return done[key]["accuracy"]


T5_VARIANTS = {"Alg.1": False, "stop": True}  # name: stop_at_boundary


def _table5_attacks(args) -> list[tuple[str, str, dict]]:
    """(row name, printed label, trust_region options) of each Table 5 row: first order and
    second order (each ``--t5-solvers``), for each ``--t5-variants``."""
    rows = []
    for variant in args.t5_variants:
        stop = {"stop_at_boundary": T5_VARIANTS[variant]}
        rows.append((f"TR order 1 r={args.t5_radius} {variant}", f"First {variant}", stop))
        for solver in args.t5_solvers:
            rows.append(
                (
                    f"TR order 2 r={args.t5_radius} {variant} {solver}",
                    f"Second {variant} {solver}",
                    stop | {"order": 2, "solver": solver},
                )
            )
    return rows


def _table_5(name, model, args, done) -> None:
    images, labels = load_dataset(get_spec(name).dataset, "test", args.data_dir)
    x, y = images[: args.t5_n], labels[: args.t5_n]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    print(
        f"\n[{name}] Table 5: accuracy (%) after k TR iterations (L2, best class, fixed radius "
        f"{args.t5_radius}), first {len(y)} test images, clean {100 * clean:.2f}%"
    )
    print(f"  {'k':<24}" + "".join(f"{k:>7}" for k in range(1, args.t5_k + 1)))
    for attack, label, options in _table5_attacks(args):
        keys = [(name, "5", attack, "l2", k, len(y)) for k in range(1, args.t5_k + 1)]
        if not all(key in done for key in keys):
            for row in _table5_rows(model, x, y, args, **options):
                row |= {
                    "model": name,
                    "table": "5",
                    "attack": attack,
                    "norm": "l2",
                    "n": len(y),
                    "clean_accuracy": clean,
                }
                done.record(row)
        accs = [done[key]["accuracy"] for key in keys]
        secs = [done[key]["seconds_per_image"] for key in keys]
        per_iteration = done[keys[-1]].get("seconds_per_iteration", float("nan"))
        print(f"  {label:<24}" + "".join(f"{100 * a:>7.2f}" for a in accs))
        print(
            f"  {'  s/img':<24}" + "".join(f"{s:>7.3f}" for s in secs)
            + f"   {1000 * per_iteration:.2f} ms per image-iteration",
            flush=True,
        )  # fmt: skip
    print(
        "  (accuracy: clean-misclassified count as wrong; s/img: cumulative up to k; Alg.1: the\n"
        "   model's minimiser in the ball; stop: stopped at the model's zero, + overshoot)"
    )


# --------------------------------------------------------------------------- checks and plot


def _row(done, model, table, attack, norm, n=None):
    """The row of ``attack`` on ``n`` images, or on the most images measured when n is None."""
    rows = [r for k, r in done.items() if k[:4] == (model, table, attack, norm)]
    if n is not None:
        rows = [r for r in rows if r["n"] == n]
    return max(rows, key=lambda r: r["n"]) if rows else None


def _common_n(done, model, table, rows: tuple[tuple[str, str], ...]) -> int | None:
    """The largest image count at which every (attack, norm) in ``rows`` was measured, so that
    a target compares attacks on the same images."""
    counts = None
    for attack, norm in rows:
        ns = {r["n"] for k, r in done.items() if k[:4] == (model, table, attack, norm)}
        counts = ns if counts is None else counts & ns
    return max(counts) if counts else None


def _check(label: str, ok: bool | None, detail: str) -> None:
    state = "n/a" if ok is None else ("HOLDS" if ok else "FAILS")
    print(f"  [{state:>5}] {label}: {detail}")


def _targets(models, done) -> None:
    print("\nPaper targets")
    for m in models:
        for variant in ("TR adaptive", REFINED):
            _check_best_class(m, variant, done)
        for attack, ref in (
            ("TR adaptive [hardest]", "DeepFool [hardest]"),
            ("TR adaptive [hardest] + refine", "DeepFool [hardest]"),
            ("TR adaptive -> class", "DeepFool -> class"),
        ):
            n = _common_n(done, m, "2", ((attack, "l2"), (ref, "l2")))
            trh, dfh = _row(done, m, "2", attack, "l2", n), _row(done, m, "2", ref, "l2", n)
            if trh and dfh and dfh["success"] > 0:
                ratio = trh["avg_rho"] / dfh["avg_rho"]
                _check(
                    f"{m} hardest: {attack} avg rho_2 <= 0.75x {ref}",
                    ratio <= 0.75,
                    f"{ratio:.3f}x (success {trh['success']:.2f} vs {dfh['success']:.2f})",
                )
        _check_table5(m, done)


def _check_best_class(m: str, variant: str, done) -> None:
    """Table 1 targets for one TR variant: L2 median vs C&W and speed, Linf vs DeepFool/I-FGSM."""
    n = _common_n(done, m, "1", (("C&W", "l2"), (variant, "l2")))
    cw, tr = _row(done, m, "1", "C&W", "l2", n), _row(done, m, "1", variant, "l2", n)
    if cw and tr and cw["success"] > 0:
        ratio = tr["median_rho"] / cw["median_rho"]
        speed = cw["seconds_per_image"] / tr["seconds_per_image"]
        _check(
            f"{m} {variant} L2 median within 3% of C&W",
            ratio <= 1.03,
            f"ratio {ratio:.3f} (n={n}, C&W budget {cw.get('budget')})",
        )
        _check(
            f"{m} {variant} >= 30x faster than C&W",
            speed >= 30,
            f"{speed:.1f}x (n={n}, C&W budget {cw.get('budget')})",
        )
    n = _common_n(done, m, "1", (("DeepFool", "linf"), (variant, "linf")))
    df = _row(done, m, "1", "DeepFool", "linf", n)
    tri = _row(done, m, "1", variant, "linf", n)
    for baseline in ("I-FGSM fixed step", "I-FGSM"):
        fg = _row(done, m, "1", baseline, "linf", n)
        if df and fg and tri and fg["success"] == 0:
            _check(f"{m} {variant} Linf avg rho below {baseline}'s", None, "no success")
        elif df and fg and tri:
            _check(
                f"{m} {variant} Linf avg rho below DeepFool's and {baseline}'s",
                tri["avg_rho"] < min(df["avg_rho"], fg["avg_rho"]),
                f"{100 * tri['avg_rho']:.3f}% vs DF {100 * df['avg_rho']:.3f}%, "
                f"{baseline} {100 * fg['avg_rho']:.3f}%",
            )
    if df and tri:
        _check(
            f"{m} {variant} Linf worst <= 0.8x DeepFool's",
            tri["worst_rho"] <= 0.8 * df["worst_rho"],
            f"{tri['worst_rho'] / df['worst_rho']:.3f}x",
        )


def _check_table5(m: str, done) -> None:
    """Table 5 target, per variant and solver: second order never leaves a higher accuracy than
    first order at equal k, and a lower one at some k (largest run only)."""
    table5 = [r for r in done.values() if r["model"] == m and r["table"] == "5"]
    n5 = max((r["n"] for r in table5), default=0)

    def curve(attack: str) -> dict[int, float]:
        return {r["k"]: r["accuracy"] for r in table5 if r["n"] == n5 and r["attack"] == attack}

    def cost(attack: str) -> float:
        rows = [r for r in table5 if r["n"] == n5 and r["attack"] == attack]
        last = max(rows, key=lambda r: r["k"], default={})
        return last.get("seconds_per_iteration", float("nan"))

    for attack in sorted({r["attack"] for r in table5 if r["attack"].startswith("TR order 2")}):
        rest = attack.removeprefix("TR order 2 ")
        radius_variant = rest.rsplit(" ", 1)[0]
        first, second = curve(f"TR order 1 {radius_variant}"), curve(attack)
        ks = sorted(first.keys() & second.keys())
        if not ks:
            continue
        worse = [k for k in ks if second[k] > first[k]]
        wins = sum(second[k] < first[k] for k in ks)
        ratio = cost(attack) / cost(f"TR order 1 {radius_variant}")
        _check(
            f"{m} second order ({rest}) beats first at equal iterations",
            not worse and wins > 0,
            f"lower accuracy at {wins}/{len(ks)} k, higher at k = {worse or 'none'} (n={n5}); "
            f"cost per image-iteration {ratio:.2f}x first order's",
        )


def _plot(models, done, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = dict(zip(L2_BEST, "os^Dv"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    for ci, m in enumerate(models):
        for attack in L2_BEST:
            row = _row(done, m, "1", attack, "l2")
            if row is None or row["success"] == 0:
                continue
            plotted = True
            for ax, stat in zip(axes, ("avg_rho", "worst_rho")):
                ax.scatter(
                    row["seconds_per_image"],
                    100 * row[stat],
                    marker=markers[attack],
                    color=colors[ci % len(colors)],
                    label=f"{m} {attack}",
                )
    if not plotted:
        plt.close(fig)
        return
    for ax, title in zip(axes, ("average", "worst case")):
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="seconds per image",
            ylabel=f"{title} rho_2 (%)",
            title=f"L2 best class: {title} perturbation vs time",
        )
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out / "fig4_perturbation_vs_time.png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _arguments(argv):
    parser = harness.parser(__doc__, models=DEFAULT_MODELS, n=1000, out="results/trust_region")
    harness.sweep_options(parser)
    parser.add_argument("--tables", nargs="+", default=["1", "2", "5"], choices=["1", "2", "5"])
    parser.add_argument("--configs", default=str(CONFIGS), help="folder of the sweep configs")
    parser.add_argument(
        "--cw-search", type=int, default=None, help="C&W binary-search rounds (0: skip)"
    )
    parser.add_argument("--cw-steps", type=int, default=None, help="C&W Adam steps per round")
    parser.add_argument("--cw-c-init", type=float, default=None, help="C&W initial constant")
    parser.add_argument("--ifgsm-bisect", type=int, default=6)
    parser.add_argument("--refine-steps", type=int, default=None, help="for the '+ refine' rows")
    parser.add_argument("--ifgsm-step", type=float, default=None, help="fixed-step I-FGSM")
    parser.add_argument("--ifgsm-max-steps", type=int, default=None)
    parser.add_argument("--t5-n", type=int, default=500)
    parser.add_argument("--t5-k", type=int, default=10)
    parser.add_argument("--t5-radius", type=float, default=0.2, help="L2 radius in [0,1] units")
    parser.add_argument(
        "--t5-variants", nargs="+", default=["Alg.1", "stop"], choices=list(T5_VARIANTS)
    )
    parser.add_argument(
        "--t5-solvers", nargs="+", default=["lanczos"], choices=["lanczos", "steihaug"]
    )
    parser.add_argument("--train", action="store_true", help="train missing models")
    args = parser.parse_args(argv)
    harness.require_zoo_models(parser, args)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the trust-region benchmark (Yao et al., CVPR 2019, Tables 1, 2, 5 and Figure 4);
    return every row (the script's and this run's sweep rows), keyed by
    (model, table, attack, norm, k, n)."""
    args = _arguments(argv)
    done = harness.setup(args, key=_key)
    models = {name: m for name in args.models if (m := _load(name, args)) is not None}
    by_dataset: dict[str, list[str]] = {}
    for name in models:
        by_dataset.setdefault(get_spec(name).dataset, []).append(name)
    grid = [r for d, names in by_dataset.items() for r in _grid_rows(d, names, args)]
    for name, model in models.items():
        if "1" in args.tables or "2" in args.tables:
            n = _script_rows(name, args, done)
            print(
                f"\n{name}: accuracy {100 * _accuracy(name, model, args, done):.2f}% on the first "
                f"{harness.EVALUATED_TEST_IMAGES} test images; attacking the first {n} correct"
            )
            _print_tables(name, dict(done) | {_key(r): r for r in grid}, n, args)
        if "5" in args.tables and name in SWISH_MODELS:
            _table_5(name, model, args, done)
    rows = dict(done) | {_key(r): r for r in grid}
    _targets(list(models), rows)
    _plot(list(dict.fromkeys(r["model"] for r in rows.values())), rows, Path(args.out))
    return rows


if __name__ == "__main__":
    main()
