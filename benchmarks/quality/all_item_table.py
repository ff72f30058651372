"""Tables of the all-item study (``all_item_study.py --table``), from committed results only.

Per data set: every model's HR@10 and NDCG@10 with 95 % intervals over rows (the summary's
bootstrap) and over users (a cluster bootstrap, 10,000 resamples, seed 0), HR@1 and what the
top 10 looks like (coverage, popularity lift); then the paired differences against SFT
continued — the registered primary comparison first, as registered — and the LM against
SASRec on the same rows; then what the on-policy negatives were during training.
"""

from __future__ import annotations

import csv
import functools
import json

from all_item_study import ARMS, LABELS, PRIMARY, RESULTS, SUCCESSORS

BASELINES = {  # data set → [(results dir under results/, label)]
    "lastfm": [
        (f"baselines/all_item_lastfm/{b}", f"{label} (train.json)")
        for b, label in [
            ("random", "Random"),
            ("most_popular", "Most popular"),
            ("item_knn", "Item-kNN"),
            ("gru4rec", "GRU4Rec"),
            ("sasrec", "SASRec"),
            ("morec", "MoRec"),
        ]
    ],
    "ml100k": [
        (f"all_item/ml100k/baselines/{b}_{rows}", f"{label} ({'LM rows' if rows == 'lm_rows' else 'all train'})")
        for rows in ("lm_rows", "full")
        for b, label in [
            ("random", "Random"),
            ("most_popular", "Most popular"),
            ("item_knn", "Item-kNN"),
            ("gru4rec", "GRU4Rec"),
            ("sasrec", "SASRec"),
            ("morec", "MoRec"),
        ]
    ],
}  # fmt: skip
SASREC = {
    "lastfm": "baselines/all_item_lastfm/sasrec",
    "ml100k": "all_item/ml100k/baselines/sasrec_lm_rows",
}
METRICS = ("hr@10", "ndcg@10")
LM_RUNS = ["sft", *(a[0] for a in ARMS + SUCCESSORS)]
N_BOOT = 10_000
ROOT = RESULTS.parent  # benchmarks/quality/results


@functools.cache
def values(run: str, metric: str) -> dict[int, float]:
    """Per-row values of ``metric`` of a committed run (``run`` relative to results/)."""
    from sdpo_lightning.evaluation.report import all_item_values_by_index

    return all_item_values_by_index(ROOT / run / "predictions.jsonl", metric)


def users(dataset: str) -> list[str]:
    """The user of each test row, by row index (written by the runner's split)."""
    return json.loads((RESULTS / dataset / "test_users.json").read_text())


def have(run: str) -> bool:
    return (ROOT / run / "summary.json").is_file()


def _ci(v: float, lo: float, hi: float, sign: bool = False) -> str:
    f = "{:+.4f}" if sign else "{:.4f}"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def model_rows(dataset: str) -> list[tuple[str, str]]:
    lm = [(f"all_item/{dataset}/{n}", LABELS[n]) for n in LM_RUNS]
    return [(r, label) for r, label in BASELINES[dataset] + lm if have(r)]


def models_table(dataset: str) -> str:
    """One row per model: HR@10 / NDCG@10 with row and user intervals, HR@1, coverage, lift."""
    from sdpo_lightning.evaluation.bootstrap import cluster_bootstrap_ci

    u = users(dataset)
    lines = [
        "| model | HR@10 [rows] | HR@10 [users] | NDCG@10 [rows] | NDCG@10 [users] | HR@1 | Coverage@10 | PopLift@10 |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run, label in model_rows(dataset):
        m = json.loads((ROOT / run / "summary.json").read_text())["protocols"]["all_item"]
        cells = []
        for metric in METRICS:
            v = values(run, metric)
            idx = sorted(v)
            row = m[metric]
            user = cluster_bootstrap_ci([v[i] for i in idx], [u[i] for i in idx], N_BOOT, seed=0)
            cells += [_ci(row["value"], row["ci_low"], row["ci_high"]), _ci(*user)]
        extra = [f"{m[k]['value']:.4f}" for k in ("hr@1", "coverage@10")]
        extra.append(f"{m['popularity_lift@10']['value']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def paired(dataset: str, mine: str, theirs: str, metric: str) -> tuple[int, str, str]:
    """Rows, and the paired difference ``mine - theirs`` of ``metric`` with 95 % intervals over
    rows and over users (10,000 resamples, seed 0)."""
    from sdpo_lightning.evaluation.bootstrap import cluster_bootstrap_ci, paired_bootstrap_ci

    a, b = values(mine, metric), values(theirs, metric)
    idx = sorted(set(a) & set(b))
    d = [a[i] - b[i] for i in idx]
    u = users(dataset)
    rows = paired_bootstrap_ci([a[i] for i in idx], [b[i] for i in idx], N_BOOT, seed=0)
    return len(idx), _ci(*rows, sign=True), _ci(*cluster_bootstrap_ci(d, [u[i] for i in idx], N_BOOT, seed=0), sign=True)  # fmt: skip


def pairs_table(dataset: str) -> str:
    """The registered comparison, then every other run against the control and SASRec."""
    control = f"all_item/{dataset}/{PRIMARY['control']}"
    treat = f"all_item/{dataset}/{PRIMARY['treatment']}"
    pairs = [(treat, control, "**registered primary**")]
    pairs += [
        (f"all_item/{dataset}/{n}", control, "secondary")
        for n in LM_RUNS
        if n not in (PRIMARY["treatment"], PRIMARY["control"])
    ]
    pairs += [
        (
            f"all_item/{dataset}/{n}",
            f"all_item/{dataset}/{PRIMARY['treatment']}",
            "successor vs S-DPO",
        )
        for n, *_ in SUCCESSORS
    ]
    pairs += [(f"all_item/{dataset}/{n}", SASREC[dataset], "LM vs SASRec") for n in ["sft", PRIMARY["treatment"]]]  # fmt: skip
    lines = [
        "| comparison | minus | role | rows | Δ HR@10 [rows] | Δ HR@10 [users] | Δ NDCG@10 [rows] | Δ NDCG@10 [users] |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for mine, theirs, role in pairs:
        if not (have(mine) and have(theirs)):
            continue
        n, hr_rows, hr_users = paired(dataset, mine, theirs, "hr@10")
        _, nd_rows, nd_users = paired(dataset, mine, theirs, "ndcg@10")
        name = lambda r: r.rsplit("/", 1)[-1]  # noqa: E731
        lines.append(f"| `{name(mine)}` | `{name(theirs)}` | {role} | {n} | {hr_rows} | {hr_users} | {nd_rows} | {nd_users} |")  # fmt: skip
    return "\n".join(lines)


def negatives_table(dataset: str) -> str:
    """Training-time logs of the alignment runs: the on-policy ones' target-in-beams rate, the
    policy's training-time HR@1, the negatives' mean rank; the final validation loss; time."""
    timings_path = RESULTS / dataset / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    keys = [
        "train/negatives/target_top1",
        "train/negatives/target_in_beams",
        "train/negatives/mean_rank",
    ]
    lines = [
        "| run | target top-1 (train) | target in beams (train) | negatives' mean rank | fit s | test s |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    for name in LM_RUNS:
        path = RESULTS / dataset / name / "fit_metrics.csv"
        if not path.is_file():
            continue
        with path.open() as f:
            rows = list(csv.DictReader(f))
        cells = []
        for k in keys:
            xs = [float(r[k]) for r in rows if r.get(k)]
            cells.append(f"{sum(xs) / len(xs):.3f}" if xs else "—")
        t = [timings.get(f"{s}_{name}") for s in ("fit", "test")]
        tt = [f"{x:.0f}" if x else "—" for x in t]
        lines.append(f"| `{name}` | " + " | ".join(cells + tt) + " |")
    return "\n".join(lines)


def render() -> str:
    out = [f"Registered primary comparison: {json.dumps(PRIMARY)}", ""]
    for dataset in ("lastfm", "ml100k"):
        if not (RESULTS / dataset / "test_users.json").is_file():
            out.append(f"## {dataset}: no results yet\n")
            continue
        split = RESULTS / dataset / "split.json"
        out += [f"## {dataset}", "", f"split: {split.read_text().strip() if split.is_file() else '?'}", ""]  # fmt: skip
        out += [models_table(dataset), "", pairs_table(dataset), "", negatives_table(dataset), ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
