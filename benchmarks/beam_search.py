"""All-item decoding: the project's constrained beam search against ``transformers``' beam search.

Both decode the same rows with the same model, history-only prompts and catalogue trie, and the
same history rule (history items can never be returned), and return the top ``N`` items of each
row:

* **ours** — :func:`sdpo_lightning.evaluation.beam_search.constrained_beam_search`: one prefill
  of the ``B`` prompts, the KV cache expanded to the beams, the trie walked with flat arrays;
* **transformers** — ``model.generate(num_beams=W, num_return_sequences=N,
  prefix_allowed_tokens_fn=..., length_penalty=0.0)``: every prompt repeated ``W`` times before
  its prefill, the allowed tokens of each beam from a trie walk per step (the same trie, the same
  exclusions; ``length_penalty=0`` so both rank by summed log-probs).

Reported: rows/s of each and the speed-up, and agreement — the mean overlap of the two top-N
sets, the rows whose lists are identical in order, and the largest score difference on items
both return.

Data: MovieLens-100K (``sdpo-prepare`` on ``../shared/data/ml-100k`` into the work folder, test
rows, its ``catalogue.json``: 1682 movies) or the public LastFM files (``valid.json`` rows,
catalogue derived from train + valid: 4606 artists). Model: SmolLM2-135M-Instruct (GGUF,
dequantized to fp32 once, as the other benchmarks do), or ``--tiny`` (a 2-layer LLaMA with
SmolLM2's tokenizer: the decoding machinery's cost without the model's FLOPs).

Usage::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/beam_search.py --rows 32
    python benchmarks/beam_search.py --tiny --rows 16          # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from _common import DEFAULT_GGUF, SHARED, prepare_model  # noqa: E402

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def load_data(name: str, work: Path) -> tuple[Any, list[dict[str, Any]], str]:
    """The catalogue, the evaluation rows (raw records) and the prompt domain."""
    from sdpo_lightning.data.catalogue import catalogue_from_candidate_lists, load_catalogue

    if name == "ml-100k":
        out = work / "ml-100k-prepared"
        if not (out / "catalogue.json").is_file():
            from sdpo_lightning.data.prepare import prepare

            prepare("movielens-100k", SHARED / "data" / "ml-100k", out)
        return (
            load_catalogue(out / "catalogue.json"),
            json.loads((out / "test.json").read_text()),
            "movies",
        )
    lastfm = SHARED / "data" / "lastfm"
    cat = catalogue_from_candidate_lists(
        [lastfm / "train.json", lastfm / "valid.json"], train=lastfm / "train.json"
    )
    return cat, json.loads((lastfm / "valid.json").read_text()), "music"


def history_of(row: dict[str, Any]) -> list[str]:
    h = row["historyList"]
    return h.split("::") if isinstance(h, str) else list(h)


def batches(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(map(len, seqs))
    ids = torch.full((len(seqs), P), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :], mask[i, P - len(s) :] = torch.tensor(s), 1
    return ids, mask


def run_ours(
    model, prompts, exclude, trie, args
) -> tuple[list[list[int]], list[list[float]], float, int, float]:
    """Items, scores, wall s, tokens decoded after the prefill, CPU s."""
    from sdpo_lightning.evaluation.beam_search import constrained_beam_search

    items, scores, steps = [], [], 0
    start, cpu = time.perf_counter(), time.process_time()
    for rows in batches(len(prompts), args.batch):
        p_ids, p_mask = left_pad([prompts[i] for i in rows], args.pad)
        out = constrained_beam_search(
            model,
            p_ids,
            p_mask,
            trie,
            args.top_n,
            args.beam_width,
            exclude=[exclude[i] for i in rows],
        )
        items += out.items.tolist()
        scores += out.scores.tolist()
        steps += out.beam_tokens
    return items, scores, time.perf_counter() - start, steps, time.process_time() - cpu


def run_hf(
    model, prompts, exclude, trie, args
) -> tuple[list[list[int]], list[list[float]], float, int, float]:
    """Items, scores, wall s, tokens decoded after the prefill (every beam of every step), CPU s."""
    eos = trie.eos_token_id
    items, scores, steps = [], [], 0
    start, cpu = time.perf_counter(), time.process_time()
    for rows in batches(len(prompts), args.batch):
        p_ids, p_mask = left_pad([prompts[i] for i in rows], args.pad)
        P = p_ids.shape[1]
        removed = trie.removed_counts([exclude[i] for i in rows])

        def allowed(batch_id: int, input_ids: torch.Tensor, P=P, removed=removed) -> list[int]:
            return trie.allowed(input_ids[P:].tolist(), removed, batch_id) or [eos]

        out = model.generate(
            input_ids=p_ids,
            attention_mask=p_mask,
            num_beams=args.beam_width,
            num_return_sequences=args.top_n,
            prefix_allowed_tokens_fn=allowed,
            max_new_tokens=trie.max_length,
            length_penalty=0.0,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=args.pad,
            return_dict_in_generate=True,
            output_scores=True,
        )
        steps += (
            (out.sequences.shape[1] - P - 1) * len(rows) * args.beam_width
        )  # every beam, every step
        seqs, sc = out.sequences[:, P:].tolist(), out.sequences_scores.tolist()
        for r in range(len(rows)):
            got, got_s = [], []
            for j in range(args.top_n):
                seq = seqs[r * args.top_n + j]
                seq = seq[: seq.index(eos) + 1] if eos in seq else seq
                got.append(trie.item_of(seq) if trie.item_of(seq) is not None else -1)
                got_s.append(sc[r * args.top_n + j])
            items.append(got)
            scores.append(got_s)
    return items, scores, time.perf_counter() - start, steps, time.process_time() - cpu


def brute_force_top(model, prompt, exclude, trie, top_n, pad, chunk=256) -> list[int]:
    """The true top ``N`` of one row: every catalogue item scored by the packed scorer."""
    from sdpo_lightning.scoring.logps import completion_logps

    p_ids, p_mask = left_pad([prompt], pad)
    scores = []
    for lo in range(0, trie.n_items, chunk):
        seqs = [trie.sequence(i) for i in range(lo, min(trie.n_items, lo + chunk))]
        C = max(map(len, seqs))
        ids = torch.full((1, len(seqs), C), pad, dtype=torch.long)
        mask = torch.zeros((1, len(seqs), C), dtype=torch.long)
        for j, q in enumerate(seqs):
            ids[0, j, : len(q)], mask[0, j, : len(q)] = torch.tensor(q), 1
        scores += (
            completion_logps(model, p_ids, p_mask, ids, mask, mode="shared_prefix")
            .logps[0]
            .tolist()
        )
    allowed = [i for i in range(trie.n_items) if i not in set(exclude)]
    return sorted(allowed, key=lambda i: (-scores[i], i))[:top_n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["ml-100k", "lastfm"], default="ml-100k")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--beam-width", type=int, default=None, help="default: --top-n")
    ap.add_argument("--batch", type=int, default=8, help="rows decoded together")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--model", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer LLaMA with SmolLM2's tokenizer")
    ap.add_argument("--skip-hf", action="store_true", help="time ours only")
    ap.add_argument(
        "--exact-rows",
        type=int,
        default=0,
        help="score every catalogue item on the first K rows (brute force, untimed) and "
        "report how much of the true top N each decoder finds",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "sdpo_step_cost")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args(argv)
    args.beam_width = args.beam_width or args.top_n
    args.work_dir.mkdir(parents=True, exist_ok=True)

    from sdpo_lightning.data.prompts import PromptBuilder
    from sdpo_lightning.evaluation.beam_search import CatalogueTrie
    from sdpo_lightning.modeling.models import build_policy, load_tokenizer

    model_dir = prepare_model(args.model, args.work_dir)
    tok = load_tokenizer(str(model_dir))
    model = build_policy(
        None if args.tiny else str(model_dir), tok, tiny_config=TINY if args.tiny else None
    )
    model.eval()
    args.pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cat, rows, domain = load_data(args.dataset, args.work_dir)
    pick = sorted(random.Random(args.seed).sample(range(len(rows)), args.rows))
    rows = [rows[i] for i in pick]
    builder = PromptBuilder(domain, seed=args.seed, history_only=True)
    prefix = builder.resolve_prefix(tok)
    t0 = time.perf_counter()
    trie = CatalogueTrie.from_titles(cat.titles, tok, prefix, source=cat.source)
    trie_s = time.perf_counter() - t0
    prompts, exclude = [], []
    for i, row in enumerate(rows):
        hist = history_of(row)
        prompts.append(builder.encode_history(hist, i, tok, args.max_length, trie.max_length)[1])
        exclude.append([cat.index[t] for t in hist if t in cat.index])
    n_prompt = sum(map(len, prompts)) / len(prompts)
    print(
        f"{args.dataset}: {len(cat)} items, trie {trie.n_nodes} nodes built in {trie_s:.2f} s, "
        f"longest completion {trie.max_length} tokens; {len(rows)} rows, mean prompt {n_prompt:.0f} "
        f"tokens; N={args.top_n}, W={args.beam_width}, batch {args.batch}, "
        f"{'tiny LLaMA' if args.tiny else 'SmolLM2-135M'} fp32, {torch.get_num_threads()} thread(s); "
        f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )

    with torch.no_grad():
        run_ours(model, prompts[:1], exclude[:1], trie, args)  # warm-up
        ours = run_ours(model, prompts, exclude, trie, args)
        hf = None if args.skip_hf else run_hf(model, prompts, exclude, trie, args)
    table = [
        "| decoder | rows | s (CPU s) | rows/s | tokens decoded after the prefill | speed-up (in CPU time) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    table.append(
        f"| ours (`constrained_beam_search`) | {len(rows)} | {ours[2]:.1f} ({ours[4]:.1f}) | "
        f"{len(rows) / ours[2]:.2f} | {ours[3]} | "
        + (f"{hf[2] / ours[2]:.1f}× ({hf[4] / ours[4]:.1f}×) |" if hf else "— |")
    )
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "rows": len(rows),
        "items": len(cat),
        "top_n": args.top_n,
        "beam_width": args.beam_width,
        "batch": args.batch,
        "model": "tiny" if args.tiny else "SmolLM2-135M",
        "ours_s": ours[2],
        "ours_cpu_s": ours[4],
        "threads": torch.get_num_threads(),
        "mean_prompt_tokens": n_prompt,
    }
    if hf is not None:
        table.append(
            f"| transformers `generate(num_beams={args.beam_width})` | {len(rows)} | {hf[2]:.1f} ({hf[4]:.1f}) | "
            f"{len(rows) / hf[2]:.2f} | {hf[3]} | 1.0× |"
        )
        overlap = [len(set(a) & set(b)) / args.top_n for a, b in zip(ours[0], hf[0], strict=True)]
        same = sum(a == b for a, b in zip(ours[0], hf[0], strict=True))
        diffs = [
            abs(sa[a.index(i)] - sb[j])
            for a, sa, b, sb in zip(ours[0], ours[1], hf[0], hf[1], strict=True)
            for j, i in enumerate(b)
            if i in a and i >= 0
        ]
        fin = [
            (sum(x for x in sa if x > -1e30), sum(x for x in sb if x > -1e30))
            for a, sa, b, sb in zip(ours[0], ours[1], hf[0], hf[1], strict=True)
            if a != b
        ]  # rows that differ
        better = sum(a > b + 1e-4 for a, b in fin)
        worse = sum(b > a + 1e-4 for a, b in fin)
        agree = (
            f"agreement: mean top-{args.top_n} set overlap {sum(overlap) / len(overlap):.3f}, "
            f"identical ordered lists {same}/{len(rows)}, largest score difference on common "
            f"items {max(diffs) if diffs else float('nan'):.2e}; where the lists differ, the summed "
            f"top-{args.top_n} log-likelihood is higher for ours in {better} rows, for transformers "
            f"in {worse}"
        )
        result.update(
            hf_s=hf[2],
            hf_cpu_s=hf[4],
            speedup=hf[2] / ours[2],
            speedup_cpu=hf[4] / ours[4],
            overlap=sum(overlap) / len(overlap),
            identical=same,
            max_score_diff=max(diffs) if diffs else None,
            ours_higher=better,
            hf_higher=worse,
        )
        table.append("")
        table.append(agree)
    if args.exact_rows:
        with torch.no_grad():
            truth = [
                brute_force_top(model, prompts[i], exclude[i], trie, args.top_n, args.pad)
                for i in range(args.exact_rows)
            ]
        recall = {
            name: sum(len(set(t) & set(r[0][i])) for i, t in enumerate(truth))
            / (args.top_n * len(truth))
            for name, r in (("ours", ours), ("transformers", hf))
            if r is not None
        }
        exact = {
            name: sum(r[0][i] == t for i, t in enumerate(truth))
            for name, r in (("ours", ours), ("transformers", hf))
            if r is not None
        }
        table.append(
            f"true top-{args.top_n} (every item scored, first {len(truth)} rows): recall "
            + ", ".join(f"{k} {v:.3f}" for k, v in recall.items())
            + "; exact ordered lists "
            + ", ".join(f"{k} {v}/{len(truth)}" for k, v in exact.items())
        )
        result.update(exact_rows=len(truth), recall=recall, exact=exact)
    table.append(
        f"load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1 / 5 / 15 min)"
    )
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
