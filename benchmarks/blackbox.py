"""Black-box attacks: Table 1 of P.-Y. Chen's thesis, ch. 3 (../shared/papers/zoo-and-ead-thesis.txt),
ZOO's query throughput, and ART's ZooAttack side by side.

Parts (``--parts``, each resumable: one jsonl row per attacked image as it finishes):

* ``cw``: white-box C&W L2 (``carlini_wagner_l2``, ``--cw-search`` x ``--cw-steps``, c from 0.01,
  the thesis's settings), untargeted and targeted.
* ``substitute``: ``train_substitute`` (Papernot et al. 2017) on ``--holdout`` test images
  (indices 9000..), the oracle's architecture, ``--rounds`` rounds, lambda 0.1, every oracle
  query counted; then FGSM (Linf, eps 0.4) and C&W (kappa 20, ``--sub-cw-steps`` steps) on the
  substitute, transferred to the oracle.
* ``zoo-adam`` / ``zoo-newton``: ``advx.attacks.zoo`` (``--zoo-search`` x ``--zoo-steps``,
  B = 128, h = 1e-4, lr 0.01 (Newton ``--newton-lr``), c from ``--zoo-c-init``, box clip, no
  reduction), through a QueryModel: queries per image are exact.
* ``throughput``: ZOO's queries per second against the model's raw no-grad forward throughput
  at the same batch size (the probes of ``--tp-images`` images per iteration), interleaved,
  medians of ``--tp-repeats``.
* ``art``: ART's ``ZooAttack`` (run this part with the peers environment's python) on the same
  images and budget as ``zoo-adam`` (binary steps, iterations, 128 coordinates, c, lr, no
  resize, no importance sampling), queries counted by a wrapper.
* ``square``: torchattacks' Square Attack, L2, untargeted (peers environment), the query-efficient
  attack a user would pick instead: on the ``zoo-adam`` images, with ZOO's query budget per image
  (``--zoo-search`` x ``--zoo-steps`` x 257), at eps = the median L2 of advx's white-box C&W on
  them; queries counted by a wrapper.
* ``ablation``: Table 3 (run it with ``--models cifar-cnn-128``, a model with 128 x 128 inputs,
  ``advx train cifar-cnn-128 --max-samples 20000``): ZOO-Adam towards the least likely class of
  the first ``--ablation-n`` images, ``--ablation-steps`` iterations at one c
  (``--ablation-c``), attack space 32 -> 64 -> 128; all techniques, and each left out.
* ``report``: writes ``--doc`` (Markdown) from the stored rows only.

Images: the first ``--n`` correctly classified test images (``_harness.correct_test_images``,
as every benchmark selects them); targeted: the first ``--n-targeted`` of them, each towards all
9 other classes. The options ``--models --n --threads --data-dir --out`` are the benchmark
harness's (``--model`` is kept as another spelling of ``--models``; ``--batch-size`` is unused:
one image per run); rows are ``_results.Results`` in ``<out>/results.jsonl`` (``--out`` may
also name that file, as before), one per attacked image (or image-target pair).
White-box C&W and ZOO run through the evaluation runner (``_harness.run``: ``run_attack`` with
one image per call, so every image is its own resumable row; the runner counts the forward and
backward passes, gives ZOO query access through a ``QueryModel`` and counts its queries per
sample, and re-checks success with a fresh forward pass), the substitute's FGSM and C&W through
``advx.evaluation.transfer`` (made on the substitute, judged on the oracle, the runner's checks).
Not through the runner: the substitute's training (``train_substitute`` counts its own oracle
queries), ART's ZooAttack (a peer library: its queries go through ART's classifier, which the
runner's counting model cannot see, so a wrapper counts them) and the throughput timing loop
(it measures ZOO's query rate against the raw forward rate).

    python benchmarks/blackbox.py --parts throughput cw zoo-adam substitute zoo-newton
    /work/peers-venv/bin/python benchmarks/blackbox.py --parts art square   # PYTHONPATH=src
    python benchmarks/blackbox.py --parts report
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import _harness as harness
import torch

from advx.attacks import zoo
from advx.blackbox import QueryModel, train_substitute
from advx.data import load_dataset
from advx.evaluation import transfer
from advx.models.registry import get_spec

# Table 1 of the thesis: (success %, mean L2, minutes per attack) untargeted and targeted
THESIS = {
    "mnist-cnn": {
        "white-box C&W": ((100, 1.48066, "0.48 min"), (100, 2.00661, "0.53 min")),
        "substitute + FGSM": ((40.6, None, "0.002 s (+6.16 min)"), (7.48, None, "0.002 s")),
        "substitute + C&W": ((33.3, 3.6111, "0.76 min (+6.16 min)"), (26.74, 5.272, "0.80 min")),
        "ZOO-Adam": ((100, 1.49550, "1.38 min"), (98.9, 1.987068, "1.62 min")),
        "ZOO-Newton": ((100, 1.51502, "2.75 min"), (98.9, 2.057264, "2.06 min")),
    },
    "cifar-cnn": {
        "white-box C&W": ((100, 0.17980, "0.20 min"), (100, 0.37974, "0.16 min")),
        "substitute + FGSM": ((76.1, None, "0.005 s (+7.81 min)"), (11.48, None, "0.005 s")),
        "substitute + C&W": ((25.3, 2.9708, "0.47 min (+7.81 min)"), (5.3, 5.7439, "0.49 min")),
        "ZOO-Adam": ((100, 0.19973, "3.43 min"), (96.8, 0.39879, "3.95 min")),
        "ZOO-Newton": ((100, 0.23554, "4.41 min"), (97.0, 0.54226, "4.40 min")),
    },
}
ROWS = ("white-box C&W", "substitute + FGSM", "substitute + C&W", "ZOO-Adam", "ZOO-Newton")
PEER_ROWS = ("ART ZooAttack", "Square (torchattacks)")  # run in the peers environment
QUERIES_PER_ITERATION = 2 * 128 + 1  # ZOO with B = 128: symmetric differences and the centre


def attack_cases(x, y, index, n_targeted: int):
    """(case key, image, label or target, targeted, true label) for untargeted then targeted
    attacks (``index``: the images' indices in the test split, which name the cases)."""
    cases = [(f"u{index[i]}", x[i], y[i], False, y[i]) for i in range(len(index))]
    for i in range(min(n_targeted, len(index))):
        for t in range(10):
            if t != int(y[i]):
                cases.append((f"t{index[i]}-{t}", x[i], torch.tensor(t), True, y[i]))
    return cases


def success_of(model, adv, label, targeted) -> bool:
    with torch.no_grad():
        pred = int(model(adv[None]).argmax(1))
    return pred == int(label) if targeted else pred != int(label)


def record(results, key, model, x, adv, label, targeted, seconds, queries, **extra):
    ok = success_of(model, adv, label, targeted)
    l2 = float((adv - x).flatten().norm())
    linf = float((adv - x).abs().max())
    row = {"success": ok, "l2": l2, "linf": linf, "seconds": seconds, "queries": queries}
    results.add(key, {**row, **extra})
    print(key, row, flush=True)


def record_run(results, key, model, x, label, targeted, true_label, attack, hyper, **options):
    """Attack one image (towards ``label`` when ``targeted``) through the runner, on ``model``
    or, given ``options['source']``, on the source and judged on ``model``
    (``advx.evaluation.transfer``), in ``options['norm']``, and store its row: success
    (re-checked by the runner on ``model``), L2, Linf, seconds, queries (ZOO: the runner's
    ``QueryModel`` count; otherwise ``model``'s forward passes, none for a transfer) and
    gradients (``model``'s backward passes)."""
    source = options.get("source")
    run = {"hyperparameters": hyper, "targeted": targeted, "norm": options.get("norm")}
    run["targets"] = label[None] if targeted else None
    if source is None:
        result = harness.run(model, x[None], true_label[None], attack, batch=1, **run)
    else:
        names = {"source_names": ["substitute"], "target_name": key.split("|", 1)[0]}
        result = transfer(
            source,
            model,
            attack,
            x[None],
            true_label[None],
            batch_size=1,
            progress=False,
            **names,
            **run,
        )
    s = result.samples
    row = {
        "success": bool(s["success"][0]),
        "l2": float(s["l2"][0]),
        "linf": float(s["linf"][0]),
        "seconds": float(s["seconds"][0]),
        "queries": float(s["queries"][0]),
        "gradients": float(s["backwards"][0]),
    }
    results.add(key, row)
    print(key, row, flush=True)


def run_cw(args, results, model, cases):
    hyper = {"c_init": 0.01, "binary_search_steps": args.cw_search, "steps": args.cw_steps}
    for case, x, label, targeted, true_label in cases:
        key = f"{args.model}|white-box C&W|{case}"
        if key in results or (targeted and not args.targeted):
            continue
        record_run(results, key, model, x, label, targeted, true_label, "cw-l2", hyper)


def run_zoo(args, results, model, cases, solver: str):
    row = "ZOO-Adam" if solver == "adam" else "ZOO-Newton"
    limit = args.zoo_n if solver == "adam" else args.newton_n
    untargeted = [c for c in cases if not c[3]][:limit]
    targeted = [c for c in cases if c[3]][: args.zoo_targeted] if args.targeted else []
    hyper = {
        "solver": solver,
        "steps": args.zoo_steps,
        "binary_search_steps": args.zoo_search,
        "c_init": args.zoo_c_init,
        "lr": args.zoo_lr if solver == "adam" else args.newton_lr,
    }
    for case, x, label, is_targeted, true_label in untargeted + targeted:
        key = f"{args.model}|{row}|{case}"
        if key in results:
            continue
        seeded = hyper | {"generator": torch.Generator().manual_seed(0)}
        record_run(results, key, model, x, label, is_targeted, true_label, "zoo", seeded)


def run_substitute(args, results, model, cases, images, labels):
    key = f"{args.model}|substitute-training"
    path = results.path.parent / f"substitute-{args.model}.pt"
    spec = get_spec(args.model)
    if key not in results or not path.is_file():
        holdout = images[9000 : 9000 + args.holdout]
        oracle = QueryModel(model)
        result = train_substitute(
            oracle,
            holdout,
            architecture=spec.build,
            rounds=args.rounds,
            lam=0.1,
            epochs=10,
            test=(
                images[:1000],
                torch.cat([model(images[i : i + 500]).argmax(1).detach() for i in (0, 500)]),
            ),
        )
        torch.save(result.model.state_dict(), path)
        results.add(
            key,
            {
                "queries": result.queries,
                "seconds": result.seconds,
                "size": int(result.images.shape[0]),
                "history": result.history,
            },
        )
        print(key, results[key], flush=True)
    substitute = spec.build()
    substitute.load_state_dict(torch.load(path))
    substitute.eval()
    # made on the substitute, judged on the oracle (a transfer: no oracle queries); targeted
    # FGSM steps down the target's loss (Papernot et al.'s transfer setting)
    fgsm = ("fgm", float("inf"), {"eps": 0.4})
    cw = ("cw-l2", 2.0, {"confidence": 20.0, "c_init": 0.01, "binary_search_steps": args.cw_search})
    cw[2]["steps"] = args.sub_cw_steps
    for case, x, label, targeted, true_label in cases:
        if targeted and not args.targeted:
            continue
        for row, (attack, norm, hyper) in (("substitute + FGSM", fgsm), ("substitute + C&W", cw)):
            key = f"{args.model}|{row}|{case}"
            if key not in results:
                case_of = (x, label, targeted, true_label)
                record_run(
                    results, key, model, *case_of, attack, hyper, source=substitute, norm=norm
                )


def run_throughput(args, results, model, x, y):
    """Queries per second of ZOO vs the raw forward throughput at the same batch size."""
    key = f"{args.model}|throughput|{args.tp_images}"
    if key in results:
        return
    n = min(args.tp_images, x.shape[0])
    rows = n * QUERIES_PER_ITERATION
    batch = torch.rand(rows, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    zoo_rates, raw_rates = [], []
    with torch.no_grad():
        model(batch)
    for _ in range(args.tp_repeats):
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(args.tp_steps):
                model(batch)
        raw_rates.append(rows * args.tp_steps / (time.perf_counter() - start))
        query = QueryModel(model, batch_size=rows)
        start = time.perf_counter()
        zoo(
            query,
            x[:n],
            y[:n],
            steps=args.tp_steps,
            binary_search_steps=1,
            c_init=1.0,
            abort_early=False,
            generator=torch.Generator().manual_seed(0),
        )
        zoo_rates.append(query.total_queries / (time.perf_counter() - start))
    row = {
        "batch": rows,
        "images": n,
        "raw": raw_rates,
        "zoo": zoo_rates,
        "raw_median": statistics.median(raw_rates),
        "zoo_median": statistics.median(zoo_rates),
    }
    row["ratio"] = row["zoo_median"] / row["raw_median"]
    results.add(key, row)
    print(key, row, flush=True)


class _CountingModule(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.queries = model, 0

    def forward(self, x):
        self.queries += x.shape[0]
        return self.model(x)


def run_art(args, results, model, cases):
    import numpy as np  # noqa: PLC0415
    from art.attacks.evasion import ZooAttack  # noqa: PLC0415
    from art.estimators.classification import PyTorchClassifier  # noqa: PLC0415

    counted = _CountingModule(model).eval()
    shape = tuple(cases[0][1].shape)
    classifier = PyTorchClassifier(
        counted,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    untargeted = [c for c in cases if not c[3]][: args.zoo_n]
    for case, x, label, _, _ in untargeted:
        key = f"{args.model}|ART ZooAttack|{case}"
        if key in results:
            continue
        attack = ZooAttack(
            classifier,
            confidence=0.0,
            targeted=False,
            learning_rate=args.zoo_lr,
            max_iter=args.zoo_steps,
            binary_search_steps=args.zoo_search,
            initial_const=args.zoo_c_init,
            abort_early=True,
            use_resize=False,
            use_importance=False,
            nb_parallel=128,
            batch_size=1,
            variable_h=1e-4,
            verbose=False,
        )
        counted.queries = 0
        start = time.perf_counter()
        adv = attack.generate(x[None].numpy())
        seconds = time.perf_counter() - start
        adv = torch.from_numpy(np.asarray(adv, dtype=np.float32))[0]
        record(results, key, model, x, adv, label, False, seconds, counted.queries, gradients=0)


ABLATION = {  # thesis Table 3: all techniques, and each left out in turn
    "All techniques": {},
    "No hierarchical attack": {"hierarchy": (), "attack_size": None},
    "No importance sampling": {"importance_sampling": False},
    "No Adam state reset": {"reset_adam": False},
}
THESIS_TABLE3 = {  # (success, first valid iteration, final L2, final loss); Inception-v3
    "All techniques": ("yes", 15227, 3.425, 11.735),
    "No hierarchical attack": ("no", None, None, 62.439),
    "No importance sampling": ("yes", 17403, 3.63486, 13.216),
    "No Adam state reset": ("yes", 15227, 3.47935, 12.111),
}


def ablation_settings(args) -> dict:
    """ZOO-Adam as in thesis Sec. 3.3.3's hard targeted attack, scaled to ``--ablation-steps``
    iterations: attack space 32 x 32 x 3, grown to 64 at 10% and 128 at 50% of the iterations
    (the thesis: 2,000 and 10,000 of 20,000), importance sampling, Adam reset, one constant c
    (``--ablation-c``, no binary search), step size ``--ablation-lr``, no early abort."""
    steps = args.ablation_steps
    return {
        "solver": "adam",
        "targeted": True,
        "steps": steps,
        "binary_search_steps": 1,
        "c_init": args.ablation_c,
        "lr": args.ablation_lr,
        "abort_early": False,
        "attack_size": 32,
        "hierarchy": ((steps // 10, 64), (steps // 2, 128)),
        "importance_sampling": True,
        "reset_adam": True,
    }


class _Trace:
    """``zoo``'s ``trace`` for one sample: its loss per iteration and the first iteration
    (counted from 1) with a successful iterate."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.first_valid: int | None = None

    def __call__(self, _round, iteration, _rows, loss, found) -> None:
        self.losses.append(float(loss[0]))
        if self.first_valid is None and bool(found[0]):
            self.first_valid = iteration + 1


def run_ablation(args, results, model, x, y):
    """Thesis Table 3 on ``x[:--ablation-n]`` of a model with 128 x 128 inputs: ZOO-Adam towards
    each image's least likely class, with all techniques and with each left out; per run the
    success, the first valid iteration (from ``zoo``'s ``trace``), the final L2 and the final
    loss ||x - x0||^2 + c f(x), the queries and the seconds."""
    with torch.no_grad():
        targets = model(x).argmin(1)
    for i in range(min(args.ablation_n, x.shape[0])):
        for variant, change in ABLATION.items():
            key = f"{args.model}|ablation|{variant}|{i}|{args.ablation_steps}|{args.ablation_c:g}"
            key += f"|{args.ablation_lr:g}"
            if key in results:
                continue
            trace = _Trace()
            query = QueryModel(model)
            settings = ablation_settings(args) | change
            start = time.perf_counter()
            adv = zoo(
                query,
                x[i : i + 1],
                targets[i : i + 1],
                generator=torch.Generator().manual_seed(0),
                trace=trace,
                **settings,
            )[0]
            seconds = time.perf_counter() - start
            row = {"part": "ablation", "variant": variant, "image": i, "target": int(targets[i])}
            row |= {"first_valid": trace.first_valid, "final_loss": trace.losses[-1]}
            row |= {"queries": float(query.queries[0]), "settings": repr(settings)}
            row |= {"loss_every_100": trace.losses[::100]}
            queries = row.pop("queries")
            record(results, key, model, x[i], adv, targets[i], True, seconds, queries, **row)


def zoo_query_budget(args) -> int:
    """The most queries one ZOO attack may spend: 2 B + 1 per iteration (B = 128)."""
    return args.zoo_search * args.zoo_steps * QUERIES_PER_ITERATION


def run_square(args, results, model, cases):
    """torchattacks' Square Attack (Andriushchenko et al. 2020), L2, untargeted, on the images
    of ``zoo-adam`` with ZOO's query budget per image, at eps = the median L2 of advx's
    white-box C&W on them (run the ``cw`` part first); queries counted by a wrapper."""
    import torchattacks  # noqa: PLC0415

    cw = [r for r in _rows(results, args.model, "white-box C&W", False) if r["success"]]
    if not cw:
        raise SystemExit("--parts square: run the cw part first (eps is C&W's median L2)")
    eps = statistics.median(r["l2"] for r in cw)
    # in eval mode: torchattacks puts the model back in the mode it found it in, and a fresh
    # wrapper is in training mode (dropout would then make the re-check below random)
    counted = _CountingModule(model).eval()
    untargeted = [c for c in cases if not c[3]][: args.zoo_n]
    budget = args.square_queries or zoo_query_budget(args)
    name = (
        PEER_ROWS[1] if args.square_queries is None else f"{PEER_ROWS[1][:-1]}, {budget} queries)"
    )
    for case, x, label, _, _ in untargeted:
        key = f"{args.model}|{name}|{case}"
        if key in results:
            continue
        attack = torchattacks.Square(counted, norm="L2", eps=eps, n_queries=budget, seed=0)
        counted.queries = 0
        start = time.perf_counter()
        adv = attack(x[None], label[None])[0].detach()
        seconds = time.perf_counter() - start
        assert not model.training, "the re-check needs the model in eval mode"
        extra = {"eps": eps, "budget": args.square_queries}
        record(results, key, model, x, adv, label, False, seconds, counted.queries, **extra)


# ------------------------------------------------------------------------------- report


def _rows(results, model_name, row, targeted):
    prefix = f"{model_name}|{row}|{'t' if targeted else 'u'}"
    return [r for k, r in results.items() if k.startswith(prefix)]


def _summary(rows):
    if not rows:
        return None
    ok = [r for r in rows if r["success"]]
    return {
        "n": len(rows),
        "success": 100.0 * len(ok) / len(rows),
        "l2": statistics.mean(r["l2"] for r in ok) if ok else float("nan"),
        "seconds": statistics.mean(r["seconds"] for r in rows),
        "queries": statistics.mean(r["queries"] for r in rows),
        "keys": {r["key"].rsplit("|", 1)[1] for r in rows},
    }


def _fmt(value, spec=".4g"):
    return "-" if value is None or value != value else format(value, spec)


def _paired_l2(results, model_name, row, reference, targeted):
    """Mean L2 of ``row`` and ``reference`` over the images both attacked successfully."""
    a = {r["key"].rsplit("|", 1)[1]: r for r in _rows(results, model_name, row, targeted)}
    b = {r["key"].rsplit("|", 1)[1]: r for r in _rows(results, model_name, reference, targeted)}
    common = [k for k in a if k in b and a[k]["success"] and b[k]["success"]]
    if not common:
        return None
    return (
        len(common),
        statistics.mean(a[k]["l2"] for k in common),
        statistics.mean(b[k]["l2"] for k in common),
    )


def _substitute_rounds(results, args) -> int:
    rows = [r for k, r in results.items() if k.endswith("|substitute-training")]
    return len(rows[0]["history"]) if rows else args.rounds


def _side_by_side(results, model_name):
    """ART ZooAttack against advx ZOO-Adam on the images both attacked (untargeted)."""
    art = {
        r["key"].rsplit("|", 1)[1]: r for r in _rows(results, model_name, "ART ZooAttack", False)
    }
    ours = {r["key"].rsplit("|", 1)[1]: r for r in _rows(results, model_name, "ZOO-Adam", False)}
    common = sorted(set(art) & set(ours))
    if not common:
        return None
    side = {"n": len(common)}
    for name, rows in (("art", art), ("ours", ours)):
        side[f"{name}_ok"] = sum(bool(rows[k]["success"]) for k in common)
        side[f"{name}_s"] = statistics.mean(rows[k]["seconds"] for k in common)
        side[f"{name}_q"] = statistics.mean(rows[k]["queries"] for k in common)
    side["ratio"] = side["art_s"] / side["ours_s"]
    return side


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("HOLDS" if ok else "FAILS")


def _targets(results, model_name):
    lines = []
    ours = _summary(_rows(results, model_name, "ZOO-Adam", False))
    if ours:
        lines.append(
            f"- ZOO-Adam untargeted success >= 99%: {ours['success']:.1f}% on {ours['n']} "
            f"images: {_verdict(ours['success'] >= 99)} (too few images to support a 99% claim)."
        )
    targeted = _summary(_rows(results, model_name, "ZOO-Adam", True))
    if targeted:
        lines.append(
            f"- ZOO-Adam targeted success >= 97%: {targeted['success']:.1f}% on {targeted['n']} "
            f"image-target pairs: {_verdict(targeted['success'] >= 97)}."
        )
    pair = _paired_l2(results, model_name, "ZOO-Adam", "white-box C&W", False)
    if pair:
        excess = pair[1] / pair[2] - 1
        lines.append(
            f"- Mean L2 within 5% of white-box C&W: {100 * excess:+.1f}% on {pair[0]} images: "
            f"{_verdict(excess <= 0.05)}."
        )
    side = _side_by_side(results, model_name)
    if side:
        lines.append(
            f"- >= 10x less wall time than ART ZooAttack at equal or higher success, on the "
            f"{side['n']} images both ran: ART fooled {side['art_ok']}, advx {side['ours_ok']}; "
            f"ART / advx seconds per image {side['ratio']:.2f}x: "
            f"{_verdict(side['ours_ok'] >= side['art_ok'] and side['ratio'] >= 10)}."
        )
    for key, r in results.items():
        if key.startswith(f"{model_name}|throughput"):
            lines.append(
                f"- Query throughput >= 80% of raw forward throughput: {100 * r['ratio']:.0f}%: "
                f"{_verdict(r['ratio'] >= 0.8)}."
            )
    return lines


def _square_rows(results, model_name) -> list[str]:
    """The Square rows stored for ``model_name``: ZOO's budget, and any ``--square-queries``."""
    names = {k.split("|")[1] for k in results if k.startswith(f"{model_name}|Square")}
    return sorted(names, key=len)


def _square_lines(results, model_name) -> list[str]:
    lines = []
    for name in _square_rows(results, model_name):
        rows = _rows(results, model_name, name, False)
        ok = [r for r in rows if r["success"]]
        budget = rows[0].get("budget")
        allowed = f"a budget of {budget}" if budget else "ZOO's budget of"
        line = (
            f"- {name}, L2, at eps {rows[0]['eps']:.4f} (the median L2 of advx's white-box C&W "
            f"here), {allowed} queries per image: fooled {len(ok)} of "
            f"{len(rows)}, median {statistics.median(r['queries'] for r in rows):.4g} queries "
            f"and {statistics.median(r['seconds'] for r in rows):.3g} s per image"
        )
        lines.append(
            line + (f", mean L2 {statistics.mean(r['l2'] for r in ok):.4f}." if ok else ".")
        )
    return lines


def _ablation_lines(results) -> list[str]:
    rows = [r for r in results.values() if r.get("part") == "ablation"]
    if not rows:
        return []
    lines = [
        "## Table 3: ZOO-Adam techniques (hard targeted attack, least likely class)",
        "",
        f"Model {rows[0]['key'].split('|')[0]}, inputs 128 x 128 x 3 (the thesis: Inception-v3, "
        "299 x 299 x 3, one image, 20,000 iterations). Settings: "
        f"`{rows[0]['settings']}` with the variant's change.",
        "",
        "| variant | image | success | first valid iteration | final L2 | final loss | queries "
        "| seconds | thesis: success / first valid / L2 / loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["image"], list(ABLATION).index(r["variant"]))):
        t = THESIS_TABLE3[r["variant"]]
        lines.append(
            f"| {r['variant']} | {r['image']} | {'yes' if r['success'] else 'no'} | "
            f"{_fmt(r['first_valid'])} | {_fmt(r['l2']) if r['success'] else '-'} | "
            f"{r['final_loss']:.4g} | {r['queries']:.4g} | {r['seconds']:.0f} | "
            f"{t[0]} / {_fmt(t[1])} / {_fmt(t[2])} / {_fmt(t[3])} |"
        )
    return lines + [""]


def report(args, results):
    lines = [
        "# Black-box attacks: ZOO, substitute models and ART's ZooAttack",
        "",
        f"Generated by `python benchmarks/blackbox.py --parts report --out {results.path}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the stored rows (the runs' "
        "commands are in the notes at the end). Machine: shared 2-core CPU "
        f"(`OMP_NUM_THREADS=1`, one thread per job, two or three jobs at a time), torch "
        f"{torch.__version__}, Python {platform.python_version()}. Thesis: P.-Y. Chen, ch. 3, "
        "Tables 1 and 3.",
        "",
        f"Settings: ZOO {args.zoo_search} binary-search steps x {args.zoo_steps} iterations, "
        f"B = 128, h = 1e-4, lr {args.zoo_lr} (Newton {args.newton_lr}), c from "
        f"{args.zoo_c_init}, box clip, early abort; white-box C&W {args.cw_search} x "
        f"{args.cw_steps}, c from 0.01; substitute: {args.holdout} hold-out images, "
        f"{_substitute_rounds(results, args)} rounds, lambda 0.1, 10 epochs per round; transfer FGSM eps 0.4 (Linf), "
        f"C&W kappa 20, {args.cw_search} x {args.sub_cw_steps}. "
        "Success is re-checked on the oracle; mean L2 over successes. "
        "Seconds and queries are per attack (one image, or one image-target pair).",
        "",
    ]
    for model_name in THESIS:
        present = any(k.startswith(model_name + "|") for k in results)
        if not present:
            lines += [f"## {model_name}", "", "Not run (see the notes below).", ""]
            continue
        lines += [f"## {model_name}: Table 1", ""]
        lines.append(
            "| attack | targeted | n | success % | mean L2 | s / attack | queries / attack "
            "| thesis success % | thesis L2 | thesis time |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for targeted in (False, True):
            for row in (*ROWS, *PEER_ROWS[:1], *_square_rows(results, model_name)):
                s = _summary(_rows(results, model_name, row, targeted))
                if s is None:
                    continue
                thesis = THESIS[model_name].get(row, ((None, None, ""), (None, None, "")))
                t = thesis[1 if targeted else 0]
                l2 = "(Linf 0.4)" if row == "substitute + FGSM" else _fmt(s["l2"])
                lines.append(
                    f"| {row} | {'yes' if targeted else 'no'} | {s['n']} | {s['success']:.1f} | "
                    f"{l2} | {s['seconds']:.3g} | {s['queries']:.4g} | "
                    f"{_fmt(t[0])} | {_fmt(t[1])} | {t[2]} |"
                )
        lines.append("")
        sub = results.get(f"{model_name}|substitute-training")
        if sub:
            agreement = [round(h.get("agreement", float("nan")), 3) for h in sub["history"]]
            lines += [
                f"Substitute training: {sub['queries']} oracle queries, {sub['seconds']:.1f} s, "
                f"final set {sub['size']} images; agreement with the oracle on the first 1000 "
                f"test images per round: {agreement}.",
                "",
            ]
        pairs = []
        for row, targeted in (("ZOO-Adam", False), ("ZOO-Newton", False), ("ZOO-Adam", True)):
            p = _paired_l2(results, model_name, row, "white-box C&W", targeted)
            if p:
                what = "image-target pairs" if targeted else "images"
                pairs.append(
                    f"- {row} vs white-box C&W, {'targeted' if targeted else 'untargeted'}, on "
                    f"the {p[0]} {what} both fooled: mean L2 {p[1]:.4f} vs {p[2]:.4f} "
                    f"({100 * (p[1] / p[2] - 1):+.1f}%)."
                )
        pairs += _square_lines(results, model_name)
        side = _side_by_side(results, model_name)
        if side:
            pairs.append(
                f"- ART ZooAttack vs advx ZOO-Adam on the {side['n']} images both attacked, same "
                f"budget: fooled {side['art_ok']} vs {side['ours_ok']}, "
                f"{side['art_s']:.1f} s vs {side['ours_s']:.1f} s per image (ART / advx "
                f"{side['ratio']:.2f}x), {side['art_q']:.4g} vs {side['ours_q']:.4g} queries per "
                f"image, {side['art_q'] / side['art_s']:.0f} vs {side['ours_q'] / side['ours_s']:.0f}"
                " queries/s."
            )
        tp = [r for k, r in results.items() if k.startswith(f"{model_name}|throughput")]
        for r in tp:
            pairs.append(
                f"- Query throughput: ZOO {r['zoo_median']:.0f} queries/s vs raw no-grad "
                f"forward {r['raw_median']:.0f} images/s at batch {r['batch']} "
                f"({r['images']} images x {QUERIES_PER_ITERATION} probes): {100 * r['ratio']:.0f}% "
                f"(medians of {len(r['raw'])} interleaved repeats; per-repeat ratios "
                f"{', '.join(f'{z / w:.2f}' for z, w in zip(r['zoo'], r['raw']))}, while the "
                "machine's load changed)."
            )
        if pairs:
            lines += ["Comparisons:", "", *pairs, ""]
    lines += ["## Targets (issue 16), as measured here", "", *_targets(results, "mnist-cnn"), ""]
    lines += _ablation_lines(results)
    notes = Path(args.notes)
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


PARTS = (
    "throughput", "cw", "zoo-adam", "zoo-newton", "substitute", "art", "square", "ablation",
    "report",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The harness's common options and this script's own (``--model``: ``--models``)."""
    parser = harness.parser(__doc__, models=["mnist-cnn"], n=5, out="results/blackbox")
    parser.add_argument("--model", dest="models", type=lambda name: [name], help="= --models")
    parser.add_argument("--parts", nargs="+", default=["report"], choices=PARTS)
    parser.add_argument("--n-targeted", type=int, default=1)
    parser.add_argument("--targeted", action="store_true", help="run the targeted cases too")
    parser.add_argument("--zoo-n", type=int, default=5)
    parser.add_argument("--newton-n", type=int, default=2)
    parser.add_argument("--zoo-targeted", type=int, default=0)
    parser.add_argument("--zoo-steps", type=int, default=300)
    parser.add_argument("--zoo-search", type=int, default=3)
    parser.add_argument("--zoo-c-init", type=float, default=1.0)
    parser.add_argument("--zoo-lr", type=float, default=0.01)
    parser.add_argument("--newton-lr", type=float, default=0.01)
    parser.add_argument("--cw-search", type=int, default=9)
    parser.add_argument("--cw-steps", type=int, default=1000)
    parser.add_argument("--sub-cw-steps", type=int, default=2000)
    parser.add_argument("--holdout", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tp-images", type=int, default=8)
    parser.add_argument("--tp-steps", type=int, default=3)
    parser.add_argument("--tp-repeats", type=int, default=5)
    parser.add_argument(
        "--square-queries", type=int, default=None, help="square: a budget other than ZOO's"
    )
    parser.add_argument("--ablation-n", type=int, default=1, help="images for Table 3")
    parser.add_argument("--ablation-steps", type=int, default=1000)
    parser.add_argument("--ablation-c", type=float, default=10.0)
    parser.add_argument("--ablation-lr", type=float, default=0.02)
    parser.add_argument("--doc", default="docs/results/blackbox.md")
    parser.add_argument("--notes", default="benchmarks/blackbox_notes.md", help="appended")
    return parser


def run_parts(args, results, model_name: str) -> None:
    """Every part of ``--parts`` but the report, on one zoo model."""
    args.model = model_name  # the row keys name the model
    model, dataset = harness.load_model(model_name, args.data_dir)
    model.eval()
    images, labels = load_dataset(dataset, "test", args.data_dir)
    x, y, index = harness.correct_test_images(model, dataset, args.n, args.data_dir)
    cases = attack_cases(x, y, index.tolist(), args.n_targeted)
    for part in args.parts:
        if part == "throughput":
            run_throughput(args, results, model, x, y)
        elif part == "cw":
            run_cw(args, results, model, cases)
        elif part in ("zoo-adam", "zoo-newton"):
            run_zoo(args, results, model, cases, part.split("-")[1])
        elif part == "substitute":
            # the substitute trains on the hold-out test images 9000.. (not the attacked ones)
            run_substitute(args, results, model, cases, images, labels)
        elif part == "art":
            run_art(args, results, model, cases)
        elif part == "square":
            run_square(args, results, model, cases)
        elif part == "ablation":
            run_ablation(args, results, model, x, y)


def main(argv: list[str] | None = None) -> None:
    """Run the ``--parts`` (``report`` last; ``argv``: the arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    harness.require_zoo_models(parser, args)  # the substitute copies the oracle's architecture
    # rows stored under explicit keys (Results.add); --out may also name the jsonl file itself
    results = harness.setup(args)
    if set(args.parts) - {"report"}:
        for model_name in args.models:
            run_parts(args, results, model_name)
    if "report" in args.parts:
        report(args, results)


if __name__ == "__main__":
    main()
