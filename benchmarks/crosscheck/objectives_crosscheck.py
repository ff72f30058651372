"""Numeric cross-check of the successor objectives against their authors' public code.

Each ``theirs_*`` function below transcribes, into a few lines, the formula an authors'
repository computes, in the order and form its code computes it (cited by repository, commit,
file and lines; nothing is imported from those repositories). Ours and theirs run on the same
random float64 tensors; the table gives the largest absolute difference of the per-example
losses and of their gradients with respect to every input. A check passes at <= 1e-6.

    python benchmarks/crosscheck/objectives_crosscheck.py [--rows 64] [--seed 0]

DynamicPO's fallback (no negative reaches the chosen item) clusters with scikit-learn's
``KMeans`` as its code does; without scikit-learn those rows are skipped and said so
(``pip install --target /tmp/skl "scikit-learn==1.5.1"``, the version DynamicPO pins, and
``PYTHONPATH=/tmp/skl`` run them).
Exit status 1 when a check fails. Results and the repositories read: docs/objectives.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sdpo_lightning.training.dynamicpo import boundary_negatives, dynamicpo_loss  # noqa: E402
from sdpo_lightning.training.multi_negative import dmpo_loss, ipo_loss  # noqa: E402
from sdpo_lightning.training.objectives import dpo_loss  # noqa: E402
from sdpo_lightning.training.reference_free import simpo_loss, softmax_simpo_loss  # noqa: E402

TOL = 1e-6

SRC = {
    "dynamicpo": "xingyuHuxingyu/DynamicPO@1d82aa35 trainer/dynamicpo_trainer.py:46-203",
    "dmpo_repo": "BZX667/DMPO@fe6ecb5b src/llmtuner/train/dpo/trainer.py:149-156 + "
    "huggingface/trl@v0.8.1 (8534f0ed) trl/trainer/dpo_trainer.py dpo_loss",
    "trl_ipo": "huggingface/trl@f2cd5771 trl/trainer/dpo_trainer.py:1440-1451",
    "simpo": "princeton-nlp/SimPO@1b3e8f35 scripts/simpo_trainer.py:560-595, 648-683",
    "recpo": "HoytWen/RecPO@0594d545 trainer/rec_cpo_trainer.py:397-479 (loss_type simpo, ln)",
}


# ------------------------------------------------------------------ transcriptions of their code
def theirs_dmpo(pc, pr: dict, rc, rr: dict, beta):
    """DynamicPO repo, ``preference_loss`` with ``filter_mode == 'DMPO'`` (lines 87-89): the
    rejected log-ratios are a dict of K tensors ``rejected1..rejectedK``."""
    chosen_logratios = pc - rc
    rejected_logratios = {key: pr[key] - rr[key] for key in pr}
    K = len(rejected_logratios.keys())
    return -F.logsigmoid(
        beta * chosen_logratios
        - sum(beta * rejected_logratios[key] for key in rejected_logratios) / K
    )


def theirs_dmpo_repo(pc, pr, rc, rr, beta):
    """BZX667/DMPO's ``get_batch_loss_metrics`` calls TRL's ``dpo_loss(policy_chosen,
    policy_rejected, reference_chosen, reference_chosen)``: the reference log-prob of the
    *chosen* completion is passed where the rejected one's belongs. TRL 0.8.1's sigmoid loss,
    label_smoothing 0: logits = (pc - pr) - (ref_chosen - ref_rejected)."""
    reference_chosen_logps, reference_rejected_logps = rc, rc  # as the call passes them
    pi_logratios = pc - pr
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios - ref_logratios
    return -F.logsigmoid(beta * logits)


def theirs_trl_ipo(per_tok, mask, ref_per_tok, beta):
    """TRL's ``loss_type == "ipo"``: token-summed log-probs of policy and reference (completion
    mask), log-ratio scores, each divided by its completion length (clamped at 1), squared
    distance of their difference from 1/(2 beta). Row 0 of dim 1 is chosen, row 1 rejected."""
    logps = (per_tok * mask).sum(dim=-1)  # (B, 2)
    ref_logps = (ref_per_tok * mask).sum(dim=-1)
    chosen_scores = logps[:, 0] - ref_logps[:, 0]
    rejected_scores = logps[:, 1] - ref_logps[:, 1]
    chosen_mask, rejected_mask = mask[:, 0], mask[:, 1]
    chosen_avg_score = chosen_scores / chosen_mask.sum(dim=1).clamp(min=1.0)
    rejected_avg_score = rejected_scores / rejected_mask.sum(dim=1).clamp(min=1.0)
    ipo_delta = chosen_avg_score - rejected_avg_score
    return (ipo_delta - 1 / (2 * beta)) ** 2


def _avg_logps(per_tok, mask):
    """SimPO's / RecPO's ``get_batch_logps(average_log_prob=True)`` tail."""
    return (per_tok * mask).sum(-1) / mask.sum(-1)


def theirs_simpo(per_tok, mask, beta, gamma_beta_ratio):
    """princeton-nlp/SimPO ``simpo_loss`` (sigmoid, label_smoothing 0) on average log-probs."""
    avg = _avg_logps(per_tok, mask)
    policy_chosen_logps, policy_rejected_logps = avg[:, 0], avg[:, 1]
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    logits = pi_logratios - gamma_beta_ratio
    return -F.logsigmoid(beta * logits)


def theirs_recpo_simpo(per_tok, mask, beta, simpo_gamma):
    """RecPO ``recpo_loss`` with ``loss_type == "simpo"``, ``use_score`` off, ``ln`` on:
    logits_k = l(d_k) - l(p) on average log-probs; sum of exp(beta (logits_k + gamma/beta));
    minus its log; -logsigmoid (label_smoothing 0). Raw exp / log as in the code."""
    avg = _avg_logps(per_tok, mask)
    policy_chosen_logps = avg[:, 0]
    logits_dict = {f"rejected{k}": avg[:, k] - policy_chosen_logps for k in range(1, avg.shape[1])}
    gamma_beta_ratio = simpo_gamma / beta
    logits = sum(torch.exp(beta * (logits_dict[key] + gamma_beta_ratio)) for key in logits_dict)
    logits = -torch.log(logits)
    return -F.logsigmoid(logits)


def theirs_dynamicpo(pc, pr: dict, rc, rr: dict, beta):
    """DynamicPO ``preference_loss`` with ``filter_mode ==
    "DMPO_hard_negative_dynamic_beta_fixed_margin"`` (lines 95-203), per example: borderline =
    negatives whose *policy* log-prob >= the chosen one's, else the top cluster of
    ``KMeans(n_clusters=3, random_state=42)`` on the negatives' policy log-probs; the
    discriminative mean of the others' policy log-probs (the borderline ones when all are);
    beta_j = float(beta * (1 + 0.5 tanh((a - c - 2) / (|c| + |a|)))); loss
    -logsigmoid(sum_j beta_j h(p)/K_b - beta_j h(d_j)/K_b). Also returns the borderline masks."""
    chosen_logratios = pc - rc
    keys = list(pr)
    losses, masks = [], []
    for i in range(pc.shape[0]):
        logratio = [pr[k][i] - rr[k][i] for k in keys]
        policy = [pr[k][i] for k in keys]
        border = [j for j, v in enumerate(policy) if v >= pc[i]]
        if not border:
            from sklearn.cluster import KMeans

            vals = np.array([float(v.detach()) for v in policy])
            labels = KMeans(n_clusters=3, random_state=42).fit(vals.reshape(-1, 1)).labels_
            top = int(np.argmax([np.mean(vals[labels == c]) for c in range(3)]))
            border = [j for j in range(len(keys)) if labels[j] == top]
        disc = [j for j in range(len(keys)) if j not in border] or border
        disc_mean = sum(policy[j] for j in disc) / len(disc)
        terms = []
        for j in border:
            a = pc[i] - policy[j]
            c = policy[j] - disc_mean
            adj = torch.tanh((a - c - 2.0) / (abs(c) + abs(a))) * 0.5
            beta_j = float((beta * (1 + adj)).detach())
            terms.append(
                beta_j * chosen_logratios[i] / len(border) - beta_j * logratio[j] / len(border)
            )
        losses.append(-F.logsigmoid(sum(terms)))
        masks.append([j in border for j in range(len(keys))])
    return torch.stack(losses), torch.tensor(masks)


# ------------------------------------------------------------------ harness
@dataclass
class Row:
    objective: str
    source: str
    k: int
    rows: int
    d_loss: float
    d_grad: float | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.d_loss <= TOL and self.d_grad is not None and self.d_grad <= TOL


def _compare(
    f_ours: Callable, f_theirs: Callable, inputs: list[torch.Tensor]
) -> tuple[float, float]:
    """Max |loss difference| and max |gradient difference| (w.r.t. every input)."""
    a = [t.detach().clone().requires_grad_() for t in inputs]
    b = [t.detach().clone().requires_grad_() for t in inputs]
    la, lb = f_ours(*a), f_theirs(*b)
    ga = torch.autograd.grad(la.sum(), a, allow_unused=True)
    gb = torch.autograd.grad(lb.sum(), b, allow_unused=True)
    pairs = list(zip(ga, gb, strict=True))
    if any((x is None) != (y is None) for x, y in pairs):
        d_grad = float("inf")  # one side has a gradient the other lacks
    else:
        d_grad = max((float((x - y).abs().max()) for x, y in pairs if x is not None), default=0.0)
    return float((la - lb).detach().abs().max()), d_grad


def _logps(gen, b, k):
    """Summed log-probs of chosen (B,) and K rejected (B, K), policy and reference."""
    return (
        -torch.rand(b, generator=gen, dtype=torch.float64) * 20,
        -torch.rand(b, k, generator=gen, dtype=torch.float64) * 20,
        -torch.rand(b, generator=gen, dtype=torch.float64) * 20,
        -torch.rand(b, k, generator=gen, dtype=torch.float64) * 20,
    )


def _tokens(gen, b, n, t=8):
    """Per-token log-probs (B, N, T) and a completion mask of 1..T tokens (left-aligned)."""
    per_tok = torch.log(torch.rand(b, n, t, generator=gen, dtype=torch.float64) * 0.99 + 0.01)
    lengths = torch.randint(1, t + 1, (b, n), generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).to(torch.float64)
    return per_tok, mask


def _as_dict(x):
    return {f"rejected{k + 1}": x[:, k] for k in range(x.shape[1])}


def _sums(p, mask):
    """Summed log-probs (B, N) and token counts (B, N) of per-token log-probs (B, N, T)."""
    return (p * mask).sum(-1), mask.sum(-1)


def _ours_ipo(mask, beta):
    def f(p, r):
        (lp, n), (lr, _) = _sums(p, mask), _sums(r, mask)
        return ipo_loss(
            lp[:, 0],
            lp[:, 1:],
            lr[:, 0],
            lr[:, 1:],
            beta,
            chosen_lengths=n[:, 0],
            rejected_lengths=n[:, 1:],
        ).losses

    return f


def _theirs_ipo(mask, beta):
    return lambda p, r: theirs_trl_ipo(p, mask, r, beta)


def _ours_simpo(mask, beta, gamma):
    def f(p):
        lp, n = _sums(p, mask)
        return simpo_loss(
            lp[:, 0],
            lp[:, 1],
            None,
            None,
            beta,
            chosen_lengths=n[:, 0],
            rejected_lengths=n[:, 1],
            gamma=gamma,
        ).losses

    return f


def _theirs_simpo(mask, beta, ratio):
    return lambda p: theirs_simpo(p, mask, beta, ratio)


def _ours_softmax_simpo(mask, beta, gamma):
    def f(p):
        lp, n = _sums(p, mask)
        return softmax_simpo_loss(
            lp[:, 0],
            lp[:, 1:],
            None,
            None,
            beta,
            chosen_lengths=n[:, 0],
            rejected_lengths=n[:, 1:],
            gamma=gamma,
        ).losses

    return f


def _theirs_recpo(mask, beta, gamma):
    return lambda p: theirs_recpo_simpo(p, mask, beta, gamma)


def run(n: int, seed: int) -> list[Row]:
    gen = torch.Generator().manual_seed(seed)
    out: list[Row] = []
    beta = 1.0

    # DMPO against DynamicPO's 'DMPO' branch
    for k in (1, 3, 5, 19):
        x = _logps(gen, n, k)
        out.append(
            Row(
                "dmpo",
                SRC["dynamicpo"] + " (filter_mode DMPO)",
                k,
                n,
                *_compare(
                    lambda pc, pr, rc, rr: dmpo_loss(pc, pr, rc, rr, beta).losses,
                    lambda pc, pr, rc, rr: theirs_dmpo(pc, _as_dict(pr), rc, _as_dict(rr), beta),
                    list(x),
                ),
            )
        )

    # BZX667/DMPO's code path: what it computes is our DPO with ref_rejected := ref_chosen
    x = _logps(gen, n, 1)
    out.append(
        Row(
            "dpo (ref_rejected := ref_chosen)",
            SRC["dmpo_repo"],
            1,
            n,
            *_compare(
                lambda pc, pr, rc, rr: dpo_loss(pc, pr, rc, rc.unsqueeze(-1), beta).losses,
                lambda pc, pr, rc, rr: theirs_dmpo_repo(pc, pr[:, 0], rc, rr[:, 0], beta),
                list(x),
            ),
            note="the repo's code is pairwise and drops the rejected reference; not DMPO's formula",
        )
    )
    theirs = theirs_dmpo_repo(x[0], x[1][:, 0], x[2], x[3][:, 0], beta)
    d_dmpo = float((dmpo_loss(*x, beta).losses - theirs).abs().max())
    out.append(
        Row(
            "dmpo",
            SRC["dmpo_repo"],
            1,
            n,
            d_dmpo,
            None,
            note="differs (expected: the repo's rejected side has no reference)",
        )
    )

    for b_ipo in (0.1, 1.0):  # IPO, token-mean, against TRL
        per_tok, mask = _tokens(gen, n, 2)
        ref_tok, _ = _tokens(gen, n, 2)
        out.append(
            Row(
                f"ipo (token_mean, beta={b_ipo})",
                SRC["trl_ipo"],
                1,
                n,
                *_compare(_ours_ipo(mask, b_ipo), _theirs_ipo(mask, b_ipo), [per_tok, ref_tok]),
            )
        )
    for b_s, ratio in ((2.0, 0.25), (10.0, 0.3)):  # SimPO: its defaults; Llama-3-Instruct v2
        per_tok, mask = _tokens(gen, n, 2)
        out.append(
            Row(
                f"simpo (beta={b_s}, gamma={b_s * ratio:g})",
                SRC["simpo"],
                1,
                n,
                *_compare(
                    _ours_simpo(mask, b_s, b_s * ratio), _theirs_simpo(mask, b_s, ratio), [per_tok]
                ),
            )
        )
    for k in (1, 3, 5):  # softmax SimPO against RecPO's multi-negative simpo
        per_tok, mask = _tokens(gen, n, 1 + k)
        out.append(
            Row(
                "softmax_simpo (beta=1, gamma=0.5)",
                SRC["recpo"],
                k,
                n,
                *_compare(
                    _ours_softmax_simpo(mask, 1.0, 0.5), _theirs_recpo(mask, 1.0, 0.5), [per_tok]
                ),
            )
        )

    # DynamicPO: rows with a boundary negative, and rows that fall back to k-means
    try:
        import sklearn  # noqa: F401

        have_sklearn = True
    except ImportError:
        have_sklearn = False
    for k in (3, 5, 19):
        for regime in ("boundary", "k-means fallback"):
            pc, pr, rc, rr = _logps(gen, n, k)
            if regime == "boundary":  # the chosen item inside the negatives' range
                lo, hi = pr.min(1).values, pr.max(1).values
                pc = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
            else:
                pc = pr.max(1).values + torch.rand(n, generator=gen, dtype=torch.float64) + 0.01
                if not have_sklearn:
                    out.append(
                        Row(
                            "dynamicpo",
                            SRC["dynamicpo"],
                            k,
                            0,
                            float("nan"),
                            None,
                            note=f"{regime}: skipped, scikit-learn not installed",
                        )
                    )
                    continue
            _, their_masks = theirs_dynamicpo(pc, _as_dict(pr), rc, _as_dict(rr), beta)
            ours_masks, _ = boundary_negatives(pc, pr)
            same = (ours_masks == their_masks).all(dim=1)
            note = regime
            if not same.all():
                worse = _sse_not_lower(pr[~same])
                note += (
                    f"; {int((~same).sum())} rows grouped otherwise by KMeans (ours has the "
                    f"lower k-means cost in {worse} of them), compared on the rest"
                )
            idx = same.nonzero().squeeze(-1)
            sub = [t[idx] for t in (pc, pr, rc, rr)]
            out.append(
                Row(
                    "dynamicpo",
                    SRC["dynamicpo"],
                    k,
                    int(same.sum()),
                    *_compare(
                        lambda pc, pr, rc, rr: dynamicpo_loss(pc, pr, rc, rr, beta).losses,
                        lambda pc, pr, rc, rr: theirs_dynamicpo(
                            pc, _as_dict(pr), rc, _as_dict(rr), beta
                        )[0],
                        sub,
                    ),
                    note=note,
                )
            )
    return out


def _sse_not_lower(values) -> int:
    """How many rows where our 3-group split of the values has a strictly lower k-means cost than
    the split KMeans found (the top groups differ, so the splits do)."""
    from sklearn.cluster import KMeans

    count = 0
    for v in values:
        x = v.numpy().reshape(-1, 1)
        km = KMeans(n_clusters=3, random_state=42).fit(x)
        ours = _best_split_cost(v.numpy())
        count += int(ours < km.inertia_ - 1e-12)
    return count


def _best_split_cost(v: np.ndarray) -> float:
    s = np.sort(v)
    best = float("inf")
    for i in range(1, len(s) - 1):
        for j in range(i + 1, len(s)):
            groups = (s[:i], s[i:j], s[j:])
            best = min(best, sum(float(((g - g.mean()) ** 2).sum()) for g in groups))
    return best


def table(rows: list[Row]) -> str:
    lines = [
        "| objective (ours) | authors' code | K | rows | max abs diff loss "
        "| max abs diff grad | result | note |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if r.rows == 0:
            result = "skipped"
        elif "differs" in r.note:
            result = "differs"
        else:
            result = "agrees" if r.ok else "FAILS"
        grad = "n/a" if r.d_grad is None else f"{r.d_grad:.2e}"
        lines.append(
            f"| {r.objective} | {r.source} | {r.k} | {r.rows} | {r.d_loss:.2e} | {grad} "
            f"| {result} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=64, help="random examples per check")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = run(args.rows, args.seed)
    print(table(rows))
    checked = [r for r in rows if r.rows and "differs" not in r.note]
    bad = [r for r in checked if not r.ok]
    skipped = sum(1 for r in rows if not r.rows)
    print(
        f"\n{len(checked) - len(bad)} of {len(checked)} checks agree to {TOL:g}; "
        f"{len(rows) - len(checked) - skipped} shown as differing on purpose; {skipped} skipped"
        + (f"; {len(bad)} FAIL" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
