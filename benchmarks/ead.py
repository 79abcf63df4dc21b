"""EAD benchmarks (issue 14): Tables 5 and 6 of chapter 4 of the ZOO/EAD thesis (Chen et al.,
"EAD: elastic-net attacks to deep neural networks", AAAI 2018) on the zoo models, and the
Markdown page docs/results/ead.md with the side-by-side peer comparison.

Every attack runs targeted towards all 9 other classes of the first N correctly classified test
images (``run_attack(..., targets='all')``), which gives the best, average and worst case of the
thesis's protocol (Sec. 4.3.2). Table 5: COV (tanh change of variables + L1, Adam) against EAD
(FISTA, EN rule) on mnist-cnn for several beta. Table 6: C&W L2, FGM-L1/L2/Linf and
I-FGM-L1/L2/Linf with the minimal eps per pair on the Table 4 grids
(``advx.attacks.minimal_eps``; I-FGM-L1 twice, with advx's sparse step and with the thesis's
normalised step grad / ||grad||_1), EAD with the EN and the L1 rule (beta 1e-3), average case.
C&W and EAD use 9 binary-search steps x 1000 iterations, c_0 = 1e-3, lr 0.01. The options,
the images and the runs are the benchmark harness's (``_harness``: ``--models --n --batch-size
--threads --data-dir --out``, ``evaluation_images``, ``run_attack``).

    python benchmarks/ead.py --tables 5 6 --models mnist-cnn --n 5 --out results/ead
    python benchmarks/ead.py --report --out results/ead --peers results/peers-ead \
        --doc docs/results/ead.md

Rows are appended to ``<out>/results.jsonl`` as they are measured and a rerun skips those already
there; the pairs of a row in progress are committed batch by batch to ``<out>/runs.sqlite``, so
an interrupted row resumes at its first unfinished batch. ``--report`` only reads stored rows
and writes the Markdown page. The models must be trained already; the script never trains one.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import _harness as harness
import torch

from advx.attacks.minimal import as_minimal_attack
from advx.evaluation.runner import target_cases
from advx.evaluation.store import ResultsStore

INF = float("inf")
BUDGET = {"binary_search_steps": 9, "steps": 1000, "c_init": 1e-3, "lr": 0.01}
TABLE5_BETAS = (1e-3, 1e-2, 1e-1, 5e-3, 5e-2)  # measured in this order

# Thesis Table 5 (MNIST): (method, beta) -> {case: (ASR, L1, L2, Linf)}; only these betas overlap.
THESIS_TABLE5 = {
    ("cov", 1e-3): {
        "best": (100, 13.8, 1.377, 0.381),
        "average": (100, 22.42, 1.977, 0.512),
        "worst": (99.9, 32.2, 2.639, 0.664),
    },
    ("cov", 1e-2): {
        "best": (100, 12.98, 1.38, 0.389),
        "average": (100, 22.27, 2.026, 0.53),
        "worst": (99.5, 31.41, 2.643, 0.673),
    },
    ("ead", 1e-3): {
        "best": (100, 9.808, 1.427, 0.452),
        "average": (100, 17.4, 2.001, 0.594),
        "worst": (100, 25.52, 2.582, 0.748),
    },
    ("ead", 1e-2): {
        "best": (100, 7.271, 1.718, 0.674),
        "average": (100, 13.56, 2.395, 0.852),
        "worst": (100, 20.77, 3.021, 0.976),
    },
}
# Thesis Table 6, average case: attack -> {dataset: (ASR, L1, L2, Linf)}.
THESIS_TABLE6 = {
    "C&W (L2)": {"mnist": (100, 22.46, 1.972, 0.514), "cifar10": (100, 13.62, 0.392, 0.044)},
    "FGM-L1": {"mnist": (39, 53.5, 4.186, 0.782), "cifar10": (48.8, 51.97, 1.48, 0.152)},
    "FGM-L2": {"mnist": (34.6, 39.15, 3.284, 0.747), "cifar10": (42.8, 39.5, 1.157, 0.136)},
    "FGM-Linf": {"mnist": (42.5, 127.2, 6.09, 0.296), "cifar10": (52.3, 127.81, 2.373, 0.047)},
    "I-FGM-L1": {"mnist": (100, 32.94, 2.606, 0.591), "cifar10": (100, 17.53, 0.502, 0.055)},
    "I-FGM-L1 (normalized step)": {
        "mnist": (100, 32.94, 2.606, 0.591),
        "cifar10": (100, 17.53, 0.502, 0.055),
    },
    "I-FGM-L2": {"mnist": (100, 30.32, 2.41, 0.561), "cifar10": (100, 17.12, 0.489, 0.054)},
    "I-FGM-Linf": {"mnist": (100, 71.39, 3.472, 0.227), "cifar10": (100, 33.3, 0.68, 0.018)},
    "EAD (EN rule)": {"mnist": (100, 17.4, 2.001, 0.594), "cifar10": (100, 8.18, 0.502, 0.097)},
    "EAD (L1 rule)": {"mnist": (100, 14.11, 2.211, 0.768), "cifar10": (100, 6.066, 0.613, 0.17)},
}


def table5_attacks(budget: dict = BUDGET) -> dict[str, tuple]:
    """label -> (attack, norm, hyperparameters, method, beta)."""
    out = {}
    for beta in TABLE5_BETAS:
        hyper = budget | {"beta": beta, "decision_rule": "en"}
        out[f"cov beta={beta:g}"] = ("cov", 1.0, hyper, "cov", beta)
        out[f"ead-en beta={beta:g}"] = ("ead", 1.0, hyper, "ead", beta)
    return out


def table6_attacks(budget: dict = BUDGET) -> dict[str, tuple]:
    """label -> (attack, norm, hyperparameters); FGM/I-FGM through minimal_eps (Table 4 grid)."""
    out: dict[str, tuple] = {"C&W (L2)": ("cw-l2", 2.0, dict(budget))}
    for name, p in (("L1", 1.0), ("L2", 2.0), ("Linf", INF)):
        fgm_hyper = {"l1_step": "normalized"} if p == 1 else {}  # CleverHans' L1 FGM
        out[f"FGM-{name}"] = (as_minimal_attack("fgm"), p, fgm_hyper)
        out[f"I-FGM-{name}"] = (as_minimal_attack("ifgm"), p, {"steps": 10})
    # the thesis's I-FGM-L1: CleverHans 2.0's L1 step grad / ||grad||_1, iterated
    normalized = {"steps": 10, "l1_step": "normalized"}
    out["I-FGM-L1 (normalized step)"] = (as_minimal_attack("ifgm"), 1.0, normalized)
    out["EAD (EN rule)"] = ("ead", 1.0, budget | {"beta": 1e-3, "decision_rule": "en"})
    out["EAD (L1 rule)"] = ("ead", 1.0, budget | {"beta": 1e-3, "decision_rule": "l1"})
    return out


def _key(row: dict) -> str:
    return json.dumps([row["model"], row["attack"], row["n"], row["hyperparameters"]])


def _config_key(row: dict) -> str:
    """Rows of different tables with the same attack and settings are measured once."""
    return json.dumps(
        [row["model"], row["function"], row["norm"], row["n"], row["hyperparameters"]]
    )


def _measure(model, x, y, attack, norm: float, hyper: dict, batch: int, store, name: str) -> dict:
    """Every target of every image through the runner (``harness.run``); the best, average and
    worst case and the cost per pair. Each batch of pairs is committed to ``store`` (the
    runner's SQLite store), so a row interrupted halfway resumes at its first unfinished batch."""
    result = harness.run(
        model,
        x,
        y,
        attack,
        norm=norm,
        hyperparameters=hyper,
        batch=batch,
        targeted=True,
        targets="all",
        store=store,
        model_name=name,
    )
    s = result.summary
    return {
        "cases": {c: s["target_cases"][c] for c in ("best", "average", "worst")},
        "pairs": int(s["n"]),
        "seconds_per_pair": s["seconds_per_sample"],
        "gradients_per_pair": s["backwards_per_sample"],
    }


def run_tables(args: argparse.Namespace) -> None:
    done = harness.setup(args, key=_key)
    same = {_config_key(r): r for r in done.values() if "function" in r}
    budget = BUDGET | {"binary_search_steps": args.search, "steps": args.steps}
    for model_name in args.models:
        # the first n correct of the whole test split (before: of its first 1000, the same
        # images for every n the tables use)
        model, x, y = harness.evaluation_images(
            model_name, args.n, args.data_dir, weights=args.weights, dataset=args.dataset
        )
        model.eval()
        plan: dict[str, tuple] = {}
        if "5" in args.tables and model_name == "mnist-cnn":
            plan |= {k: v[:3] for k, v in table5_attacks(budget).items()}
        if "6" in args.tables:
            plan |= table6_attacks(budget)
        for label, (attack, norm, hyper) in plan.items():
            if args.only and not any(word in label for word in args.only):
                continue
            row = {"model": model_name, "attack": label, "n": x.shape[0], "hyperparameters": hyper}
            if _key(row) in done:
                continue
            row |= {"function": attack if isinstance(attack, str) else attack.name, "norm": norm}
            if _config_key(row) in same:
                measured = {k: same[_config_key(row)][k] for k in ("cases", "pairs")}
                measured |= {
                    k: same[_config_key(row)][k]
                    for k in ("seconds_per_pair", "gradients_per_pair", "torch", "date", "threads")
                }
            else:
                with ResultsStore(Path(args.out) / "runs.sqlite") as store:
                    measured = _measure(
                        model, x, y, attack, norm, hyper, args.batch_size, store, model_name
                    )
            stamp = {
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "threads": torch.get_num_threads(),
            }
            row = done.record(row | stamp | measured)  # a reused row keeps its own stamp
            same[_config_key(row)] = row
            avg = row["cases"]["average"]
            print(
                f"{model_name:<10} {label:<18} n={row['n']} pairs={row['pairs']} "
                f"avg ASR {100 * avg['success_rate']:.1f} L1 {avg['l1']:.3f} L2 {avg['l2']:.4f} "
                f"Linf {avg['linf']:.4f}  {row['seconds_per_pair']:.2f} s/pair",
                flush=True,
            )


# ------------------------------------------------------------------------------ the report


def _fmt(value: float, digits: int = 3) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def _case_cells(case: dict) -> list[str]:
    return [
        _fmt(100 * case["success_rate"], 1),
        _fmt(case["l1"], 2),
        _fmt(case["l2"], 3),
        _fmt(case["linf"], 3),
    ]


def _thesis_cells(values) -> list[str]:
    return ["-"] * 4 if values is None else [f"{v:g}" for v in values]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _count(row: dict) -> str:
    """A row's image count; a run still in progress says of how many."""
    return f"{row['n']} (of {row['partial']}, in progress)" if row.get("partial") else str(row["n"])


def _latest(rows: list[dict], model: str, label: str) -> dict | None:
    matching = [r for r in rows if r["model"] == model and r["attack"] == label]
    return max(matching, key=lambda r: (r["n"], not r.get("partial"))) if matching else None


def _table5_lines(rows: list[dict]) -> list[str]:
    found = [r for r in rows if r["model"] == "mnist-cnn" and " beta=" in r["attack"]]
    if not found:
        return ["(no Table 5 rows measured)"]
    n = max(r["n"] for r in found)
    lines = [
        f"mnist-cnn, first {n} correctly classified test images x 9 targets "
        f"({9 * n} pairs per row); thesis figures (MNIST, its own CNN, 1000 images) below each "
        "row where the thesis has that beta.",
        "",
    ]
    headers = ["method", "beta", "source"]
    for case in ("best", "average", "worst"):
        headers += [f"{case} ASR", "L1", "L2", "Linf"]
    table = []
    for _, (_, _, _, method, beta) in table5_attacks().items():
        label = f"{'cov' if method == 'cov' else 'ead-en'} beta={beta:g}"
        row = _latest(found, "mnist-cnn", label)
        if row is None:
            continue
        name = "COV" if method == "cov" else "EAD (EN rule)"
        cells = [name, f"{beta:g}", f"advx n={_count(row)}"]
        for case in ("best", "average", "worst"):
            cells += _case_cells(row["cases"][case])
        table.append(cells)
        thesis = THESIS_TABLE5.get((method, beta))
        if thesis is not None:
            cells = [name, f"{beta:g}", "thesis"]
            for case in ("best", "average", "worst"):
                cells += _thesis_cells(thesis[case])
            table.append(cells)
    lines += _table(headers, table) + [""]
    for method in ("cov", "ead"):
        series = []
        for beta in sorted(TABLE5_BETAS):
            label = f"{'cov' if method == 'cov' else 'ead-en'} beta={beta:g}"
            row = _latest(found, "mnist-cnn", label)
            if row is not None:
                series.append(f"{beta:g}: {row['cases']['average']['l1']:.3f}")
        name = "COV" if method == "cov" else "EAD"
        lines.append(f"- {name} average-case L1 by beta: {', '.join(series) or 'none'}")
    return lines


def _table6_lines(rows: list[dict]) -> list[str]:
    datasets = {"mnist-cnn": "mnist", "cifar-cnn": "cifar10"}
    lines = []
    for model, dataset in datasets.items():
        measured = {label: _latest(rows, model, label) for label in THESIS_TABLE6}
        if not any(measured.values()):
            lines += [f"{model}: not measured.", ""]
            continue
        counts = sorted({_count(r) for r in measured.values() if r})
        lines += [
            f"**{model}** (average case over all 9 targets; images per row: "
            f"{', '.join(counts)} x 9 targets)",
            "",
        ]
        headers = ["attack", "ASR", "L1", "L2", "Linf", "s/pair", "thesis ASR", "L1", "L2", "Linf"]
        table = []
        for label in THESIS_TABLE6:
            row = measured[label]
            cells = [label] + (
                _case_cells(row["cases"]["average"]) + [_fmt(row["seconds_per_pair"], 2)]
                if row
                else ["not measured"] + ["-"] * 4
            )
            table.append(cells + _thesis_cells(THESIS_TABLE6[label][dataset]))
        lines += _table(headers, table) + [""] + _ordering_lines(measured) + [""]
    return lines


def _ordering_lines(measured: dict[str, dict | None]) -> list[str]:
    """Which attack of full average-case success has the least L1, L2 and Linf (the thesis:
    EAD, C&W and I-FGM-Linf)."""
    full = {k: r["cases"]["average"] for k, r in measured.items() if r}
    full = {k: c for k, c in full.items() if c["success_rate"] == 1.0}
    if not full:
        return ["No attack reached 100% average-case success."]
    out = [f"- compared: the {len(full)} measured attacks with 100% success ({', '.join(full)})"]
    for norm, expected in (("l1", "EAD"), ("l2", "C&W (L2)"), ("linf", "I-FGM-Linf")):
        winner = min(full, key=lambda k: full[k][norm])
        verdict = "as in the thesis" if winner.startswith(expected) else "thesis: " + expected
        out.append(
            f"- least {norm.upper()} among the attacks with 100% success: {winner} "
            f"({full[winner][norm]:.4g}; {verdict})"
        )
    return out


def _read_rows(place: str | Path) -> list[dict]:
    """The rows of a .jsonl file, or of ``<folder>/results.jsonl``; none if it does not exist."""
    path = Path(place) if str(place).endswith(".jsonl") else Path(place) / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _peer_lines(folders: list[str]) -> list[str]:
    rows = [row for folder in folders for row in _read_rows(folder)]
    rows = [r for r in rows if r.get("attack") == "ead"]
    if not rows:
        return ["(no EAD peer rows measured)"]
    lines = []
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["model"], r["n"], r["budget"], r.get("date", "")[:16]), []).append(r)
    for (model, n, budget, date), group in runs.items():
        lines += [
            f"**{model}**, {budget}, first {n} correctly classified images (untargeted), "
            f"run {date or 'undated'}:",
            "",
        ]
        headers = [
            "library",
            "success",
            "median L1",
            "mean L1",
            "median EN",
            "mean EN",
            "mean L2",
            "s/image",
        ]
        table = [
            [
                r["library"],
                _fmt(r["success"], 3),
                _fmt(r["median_l1"], 3),
                _fmt(r["mean_l1"], 3),
                _fmt(r["median_en"], 4),
                _fmt(r["mean_en"], 4),
                _fmt(r["mean_l2"], 4),
                _fmt(r["seconds_per_image"], 2),
            ]
            for r in group
        ]
        lines += _table(headers, table) + [""] + _peer_verdict(group) + [""]
    return lines


def _peer_verdict(group: list[dict]) -> list[str]:
    """advx's mean L1 against the best peer's and its time against foolbox's, in this run."""
    mine = next((r for r in group if r["library"] == "advx"), None)
    peers = [r for r in group if r["library"] != "advx" and r["success"] == 1.0]
    if mine is None or not peers:
        return []
    best = min(peers, key=lambda r: r["mean_l1"])
    out = [
        f"- mean L1: advx {mine['mean_l1']:.4f} vs the best fully successful peer "
        f"({best['library']}) {best['mean_l1']:.4f}: ratio {mine['mean_l1'] / best['mean_l1']:.4f}"
    ]
    fool = next((r for r in group if r["library"] == "foolbox"), None)
    if fool is not None:
        ratio = mine["seconds_per_image"] / fool["seconds_per_image"]
        out.append(
            f"- time: advx {mine['seconds_per_image']:.2f} s/image vs foolbox "
            f"{fool['seconds_per_image']:.2f}: ratio {ratio:.3f}"
        )
    return out


def _norm_name(p: float) -> str:
    return "linf" if p == INF else f"l{p:g}"


def _run_labels() -> dict[str, str]:
    """A run's (attack, norm, hyperparameters) as the runner stores them -> the table label."""
    plan = {k: v[:3] for k, v in table5_attacks().items()} | table6_attacks()
    labels = {}
    for label, (attack, norm, hyper) in plan.items():
        name = attack if isinstance(attack, str) else attack.name
        labels[json.dumps([name, _norm_name(norm), hyper], sort_keys=True)] = label
    return labels


def _unfinished_rows(folder: str | Path) -> list[dict]:
    """Rows of the runs in ``<folder>/runs.sqlite`` that were stopped before their last pair
    (the images whose 9 targets are all stored), marked ``partial`` with the planned image
    count; the complete runs are in ``results.jsonl`` already."""
    path = Path(folder) / "runs.sqlite"
    if not path.is_file():
        return []
    labels, rows = _run_labels(), []
    with ResultsStore(path) as store:
        for run in store.runs():
            config = run["config"]
            key = [config["attack"], config["norm"], config["hyperparameters"]]
            label = labels.get(json.dumps(key, sort_keys=True))
            if run["status"] == "complete" or label is None:
                continue
            samples = store.samples(run["id"])
            images = len(samples["sample_index"]) // 9
            if images == 0:
                continue
            samples = {k: v[: 9 * images] for k, v in samples.items()}
            cases = target_cases(samples, 9, config["norm"])
            rows.append(
                {
                    "model": config["model"],
                    "attack": label,
                    "n": images,
                    "partial": config["data"]["n"] // 9,
                    "cases": {c: cases[c] for c in ("best", "average", "worst")},
                    "pairs": 9 * images,
                    "seconds_per_pair": float(samples["seconds"].mean()),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["created"])),
                }
            )
    return rows


def write_report(args: argparse.Namespace) -> None:
    rows = []
    for folder in [args.out, *(args.also or [])]:
        rows += _read_rows(folder) + _unfinished_rows(folder)
    for path in args.rows or []:
        rows += _read_rows(path)
    if args.save_rows:
        Path(args.save_rows).write_text("".join(json.dumps(r) + "\n" for r in rows))
    dates = sorted({r.get("date", "") for r in rows if r.get("date")})
    versions = sorted({r.get("torch", "") for r in rows if r.get("torch")})
    text = [
        "# EAD: elastic-net attacks (thesis chapter 4, Tables 5 and 6)",
        "",
        f"Generated by `python {' '.join(sys.argv)}` from the stored rows (the commands that "
        "measured them are listed at the end).",
        "",
        f"Machine: {platform.machine()}, 2 cores shared with other jobs, 1 thread per process; "
        f"torch {', '.join(versions) or '?'}; measured {dates[0] if dates else '?'} to "
        f"{dates[-1] if dates else '?'}.",
        "",
        "## Table 5: COV against EAD",
        "",
        *_table5_lines(rows),
        "",
        "## Table 6: attacks compared (average case)",
        "",
        *_table6_lines(rows),
        "## Peers, side by side (same images, same budget, one run, rotating order)",
        "",
        *_peer_lines(args.peers or []),
    ]
    if args.notes and Path(args.notes).is_file():
        text += ["", Path(args.notes).read_text().strip()]
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(text).rstrip() + "\n")
    print(f"wrote {doc}")


def build_parser() -> argparse.ArgumentParser:
    """The harness's common options (``--n``: correctly classified images, x 9 targets) and
    this script's own."""
    parser = harness.parser(__doc__, models=["mnist-cnn"], n=5, out="results/ead", batch=45)
    parser.add_argument("--tables", nargs="+", default=["5", "6"], choices=["5", "6"])
    parser.add_argument("--only", nargs="+", help="run only the rows whose label contains these")
    parser.add_argument("--search", type=int, default=9, help="binary-search steps (C&W, EAD)")
    parser.add_argument("--steps", type=int, default=1000, help="iterations per search step")
    parser.add_argument("--report", action="store_true", help="write the Markdown page only")
    parser.add_argument("--also", nargs="+", help="--report: further result folders to read")
    parser.add_argument("--rows", nargs="+", help="--report: stored rows (.jsonl) to read too")
    parser.add_argument("--save-rows", help="--report: write every row it read to this .jsonl")
    parser.add_argument(
        "--peers", nargs="+", help="--report: peers.py output folders or their .jsonl (EAD rows)"
    )
    parser.add_argument("--notes", default="benchmarks/ead_notes.md", help="appended to the page")
    parser.add_argument("--doc", default="docs/results/ead.md")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Measure the tables' rows, or (``--report``) write the page (``argv``: the arguments)."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        write_report(args)
    else:
        run_tables(args)


if __name__ == "__main__":
    main()
