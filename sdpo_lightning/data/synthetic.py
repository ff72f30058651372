"""Seeded synthetic candidate-list data with learnable sequential structure.

Used by the offline demo (``make demo``) and by tests: a catalogue of short ASCII titles
grouped in themed categories, users with category tastes, interaction sequences with a
Markov structure, and sliding-window candidate-list examples in the public S-DPO format.

Generative story (all knobs are arguments of :func:`generate_dataset`):

* Each category has a theme noun pool (``Harbor``, ``Tide`` … for ``sea``); a title is
  1–3 words: ``Noun`` | ``Adjective Noun`` | ``Adjective Adjective Noun``. Titles are
  unique and no title is a whole-word substring of another, so answers parse exactly.
  The category is therefore visible in the title's noun.
* Each item has a fixed *successor* in its own category (a random cycle per category).
* A user likes 2–3 categories (Dirichlet weights, plus a little uniform mass). After the
  current item the next one is its successor with ``p_successor``; otherwise another
  item of the same category with ``p_same_category``; otherwise a fresh draw from the
  user's taste. Within a category, items follow a Zipf-like popularity.
* A user never interacts with an item twice, so a history window never contains its
  target nor repeats an item. Negatives are drawn uniformly from the items the user
  never interacted with (not only outside the window).

Same seed and arguments → byte-identical files.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sdpo_lightning.data.prompts import PRESETS

THEMES: dict[str, str] = {
    "sea": "Harbor Tide Reef Shore Lagoon Anchor Wave Island Coral Sail Pearl Current",
    "forest": "Pine Fern Grove Thicket Acorn Moss Willow Cedar Bramble Birch Timber Clearing",
    "sky": "Comet Cloud Thunder Aurora Horizon Star Eclipse Orbit Nebula Zenith Meteor Rainbow",
    "fire": "Ember Flame Spark Cinder Blaze Forge Torch Ash Furnace Lantern Candle Beacon",
    "city": "Avenue Tower Bridge Station Market Alley Plaza Subway Rooftop Bazaar Arcade Boulevard",
    "mountain": "Summit Ridge Glacier Canyon Cliff Boulder Peak Valley Crag Quarry Avalanche Cavern",
    "music": "Ballad Chorus Anthem Lullaby Rhythm Melody Echo Sonata Drum Violin Harmony Refrain",
    "animal": "Falcon Wolf Fox Raven Tiger Otter Heron Badger Lynx Stag Sparrow Panther",
    "treasure": "Crown Jewel Coin Chalice Scepter Amulet Ruby Emerald Locket Medallion Relic Vault",
    "machine": "Engine Gear Piston Rocket Circuit Signal Robot Dynamo Turbine Lever Magnet Compass",
    "garden": "Rose Tulip Orchard Blossom Ivy Lily Meadow Petal Daisy Hedge Sunflower Orchid",
    "winter": "Snow Frost Icicle Blizzard Sleigh Mitten Hearth Snowflake Tundra Chill Igloo Sled",
}
ADJECTIVES = (
    "Crimson Quiet Golden Silver Hidden Broken Silent Wild Bright Dark Lost Frozen Burning "
    "Gentle Ancient Distant Electric Velvet Scarlet Midnight Northern Restless Sleeping "
    "Wandering Lonely Secret Endless Amber Iron Paper Glass Little Final Hollow Faded Royal "
    "Savage Tender Cosmic Rusty"
).split()
#: Sentences with the words of typical S-DPO prompt templates, for tokenizer training.
PROMPT_TEXTS: tuple[str, ...] = (
    "This user has watched [History] in the previous. Please predict the next movie this "
    "user will watch. Choose the answer from the following 20 movie titles: [Candidates]. Answer:",
    "Given the user's history of items, which item will the user choose next? Options: "
    "1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. 15. 16. 17. 18. 19. 20. 0",
    '### Instruction:\n### Input:\n### Response:\nQuestion: "item", (song) {title}; music books movies',
)


@dataclass(frozen=True)
class Item:
    """One catalogue item."""

    item_id: int
    title: str
    category: str
    successor: int


def _contains(longer: str, shorter: str) -> bool:
    """Whether ``shorter`` occurs in ``longer`` as a whole-word substring."""
    return f" {shorter} " in f" {longer} "


def generate_catalogue(
    n_items: int = 200,
    n_categories: int = 10,
    seed: int = 0,
    noun_first: bool = False,
    p_article: float = 0.0,
) -> list[Item]:
    """Build ``n_items`` unique titled items spread round-robin over ``n_categories`` themes.

    Args:
        n_items: Catalogue size.
        n_categories: Number of themes used (the first ``n_categories`` of :data:`THEMES`).
        seed: Seed of titles and successor cycles.
        noun_first: Put the theme noun first (``Harbor Silent``) instead of last
            (``Silent Harbor``). Greedy decoding then commits to a category with its first
            token, as a recommender that knows the category should.
        p_article: Probability that a title starts with ``The`` (``The Harbor Silent``), a
            first word many titles share, as in real catalogues. Greedy decoding must then
            choose ``The`` by the summed probability of all such candidates.

    Raises:
        ValueError: If more categories are asked for than themes exist.
    """
    if not 1 <= n_categories <= len(THEMES):
        raise ValueError(f"n_categories must be in [1, {len(THEMES)}], got {n_categories}")
    rng = random.Random(f"catalogue:{seed}")
    cats = list(THEMES)[:n_categories]
    titles: list[str] = []
    categories: list[str] = []
    for i in range(n_items):
        cat = cats[i % n_categories]
        nouns = THEMES[cat].split()
        for _ in range(10_000):
            n_words = rng.choices((1, 2, 3), weights=(0.1, 0.65, 0.25))[0]
            adjs = rng.sample(ADJECTIVES, n_words - 1)
            noun = rng.choice(nouns)
            title = " ".join([noun, *adjs] if noun_first else [*adjs, noun])
            if p_article > 0 and rng.random() < p_article:
                title = f"The {title}"
            if not any(_contains(t, title) or _contains(title, t) for t in titles):
                break
        else:  # pragma: no cover - only for absurd catalogue sizes
            raise ValueError(f"cannot build {n_items} distinct titles for {n_categories} themes")
        titles.append(title)
        categories.append(cat)
    successor = [0] * n_items
    for cat in cats:
        members = [i for i in range(n_items) if categories[i] == cat]
        rng.shuffle(members)
        for pos, item in enumerate(members):  # one random cycle per category
            successor[item] = members[(pos + 1) % len(members)]
    return [Item(i, titles[i], categories[i], successor[i]) for i in range(n_items)]


def _user_sequence(
    items: list[Item], rng: random.Random, length: int, p_successor: float, p_same: float
) -> list[int]:
    """Sample one user's interaction sequence (item ids, no repeats)."""
    cats = sorted({it.category for it in items})
    by_cat = {c: [it.item_id for it in items if it.category == c] for c in cats}
    # Zipf-like global popularity: the k-th item of a category has weight 1 / (1 + k).
    pop = {i: 1.0 / (1 + rank) for c in cats for rank, i in enumerate(by_cat[c])}
    liked = rng.sample(cats, min(len(cats), rng.choice((2, 3))))
    raw = [rng.gammavariate(1.0, 1.0) for _ in liked]
    taste = {c: 0.05 / len(cats) for c in cats}
    for c, w in zip(liked, raw, strict=False):
        taste[c] += 0.95 * w / sum(raw)

    seen: list[int] = []

    def draw(cat: str | None) -> int:
        pool = [i for i in by_cat[cat] if i not in seen] if cat is not None else []
        if not pool:  # category exhausted or fresh draw: pick a category by taste
            open_cats = [c for c in cats if any(i not in seen for i in by_cat[c])]
            cat = rng.choices(open_cats, weights=[taste[c] for c in open_cats])[0]
            pool = [i for i in by_cat[cat] if i not in seen]
        return rng.choices(pool, weights=[pop[i] for i in pool])[0]

    seen.append(draw(None))
    while len(seen) < length:
        last = items[seen[-1]]
        u = rng.random()
        if u < p_successor and last.successor not in seen:
            seen.append(last.successor)
        elif u < p_successor + (1 - p_successor) * p_same:
            seen.append(draw(last.category))
        else:
            seen.append(draw(None))
    return seen


def _negatives(
    unseen: list[int], items: list[Item], context: str, k: int, p_context: float, rng: random.Random
) -> list[int]:
    """``k`` distinct negatives from ``unseen``: uniform draws, except that with ``p_context``
    (per draw) the draw comes from the items of the ``context`` category while any remain."""
    if p_context <= 0:
        return rng.sample(unseen, k)
    near = [i for i in unseen if items[i].category == context]
    far = [i for i in unseen if items[i].category != context]
    n_near = min(len(near), sum(rng.random() < p_context for _ in range(k)))
    return [*rng.sample(near, n_near), *rng.sample(far, k - n_near)]


def _examples(
    user_id: int,
    seq: list[int],
    items: list[Item],
    rng: random.Random,
    history_len: int,
    n_candidates: int,
    min_history: int,
    p_context_negative: float = 0.0,
) -> list[dict]:
    """Turn one sequence into sliding-window candidate-list examples."""
    unseen = sorted(set(range(len(items))) - set(seq))
    out = []
    for t in range(min_history, len(seq)):
        context = items[seq[t - 1]].category
        negs = _negatives(unseen, items, context, n_candidates - 1, p_context_negative, rng)
        cands = [seq[t], *negs]
        rng.shuffle(cands)
        out.append(
            {
                "historyList": [items[i].title for i in seq[max(0, t - history_len) : t]],
                "itemList": [items[i].title for i in cands],
                "trueSelection": items[seq[t]].title,
                "user_id": user_id,
            }
        )
    return out


def generate_dataset(
    out_dir: str | Path | None = None,
    seed: int = 0,
    n_items: int = 200,
    n_categories: int = 10,
    n_users: int = 170,
    history_len: int = 10,
    n_candidates: int = 20,
    min_history: int = 3,
    seq_len: tuple[int, int] = (8, 20),
    p_successor: float = 0.5,
    p_same_category: float = 0.6,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    noun_first: bool = False,
    p_context_negative: float = 0.0,
    p_article: float = 0.0,
) -> dict[str, list[dict]]:
    """Generate the catalogue and train/valid/test candidate-list splits (split by user).

    Args:
        out_dir: If given, write ``train.json``, ``valid.json``, ``test.json`` (JSON lists
            of ``{"historyList": [titles], "itemList": [titles], "trueSelection": title,
            "user_id": int}``) and ``items.json`` (the catalogue) there.
        seed: Seed of every random choice.
        n_items: Catalogue size.
        n_categories: Number of themed categories (at most ``len(THEMES)``).
        n_users: Number of users; each contributes ``len(seq) - min_history`` examples.
        history_len: Most recent items kept in a history window.
        n_candidates: Candidates per example (target + ``n_candidates - 1`` negatives).
        min_history: Shortest history (first window).
        seq_len: Inclusive range of a user's sequence length.
        p_successor: Probability that the next item is the last item's successor.
        p_same_category: Otherwise, probability of staying in the last item's category.
        split_fractions: User fractions for train/valid/test.
        noun_first: Titles start with their theme noun (see :func:`generate_catalogue`).
        p_context_negative: Probability that a negative is drawn from the category of the
            user's last item (the context), as a retrieval stage proposing similar items
            would; otherwise it is drawn from all unseen items. The candidate list then tells
            no more about the target's category than the history does, but the choice within
            the category needs the item-level successor rule. 0 keeps uniform draws.
        p_article: Share of titles that start with ``The`` (see :func:`generate_catalogue`).

    Returns:
        ``{"train": [...], "valid": [...], "test": [...], "items": [Item dicts]}``.
    """
    if not 1 <= min_history <= seq_len[0] - 1 or seq_len[0] > seq_len[1]:
        raise ValueError(
            f"need 1 <= min_history < seq_len[0] <= seq_len[1], got "
            f"min_history={min_history}, seq_len={seq_len}"
        )
    if not 0.0 <= p_context_negative <= 1.0:
        raise ValueError(f"p_context_negative must be in [0, 1], got {p_context_negative}")
    if n_items - seq_len[1] < n_candidates - 1:
        raise ValueError(
            f"n_items={n_items} leaves too few unseen items for "
            f"{n_candidates - 1} negatives with sequences up to {seq_len[1]}"
        )
    items = generate_catalogue(n_items, n_categories, seed, noun_first, p_article)
    rng = random.Random(f"users:{seed}")
    users = list(range(n_users))
    rng.shuffle(users)
    n_valid = round(n_users * split_fractions[1])
    n_test = round(n_users * split_fractions[2])
    groups = {
        "valid": users[:n_valid],
        "test": users[n_valid : n_valid + n_test],
        "train": users[n_valid + n_test :],
    }
    seqs = {
        u: _user_sequence(
            items,
            random.Random(f"seq:{seed}:{u}"),
            random.Random(f"len:{seed}:{u}").randint(*seq_len),
            p_successor,
            p_same_category,
        )
        for u in range(n_users)
    }
    result: dict[str, list[dict]] = {}
    for split in ("train", "valid", "test"):
        result[split] = [
            ex
            for u in sorted(groups[split])
            for ex in _examples(
                u,
                seqs[u],
                items,
                random.Random(f"neg:{seed}:{u}"),
                history_len,
                n_candidates,
                min_history,
                p_context_negative,
            )
        ]
    result["items"] = [asdict(it) for it in items]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in result.items():
            (out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="ascii")
    return result


def tokenizer_texts(items: Sequence[Item | dict]) -> list[str]:
    """All texts for tokenizer training: each title with and without a leading space
    (the spaced form twice, as titles mostly follow a space in prompts), the words of
    :data:`PROMPT_TEXTS` and of the prompt presets of :mod:`sdpo_lightning.data.prompts`."""
    titles = [it.title if isinstance(it, Item) else it["title"] for it in items]
    presets = [
        t.format(history="", candidates="") for name in sorted(PRESETS) for t in PRESETS[name]
    ]
    spaced = [f" {t}" for t in titles]
    return [*PROMPT_TEXTS, *presets, *spaced, *spaced, *titles]


def rule_scores(
    history: Sequence[str],
    candidates: Sequence[str],
    items: Sequence[Item | dict],
    use_successor: bool = True,
) -> list[float]:
    """Scores of the generator's own rule, one per candidate (higher is better): 4 if the
    candidate is the last item's successor (``use_successor``), + 2 if it shares the last
    item's category, + the share of the history in its category. It knows the hidden
    successor cycles, so it is a ceiling hint for the models, not a fair baseline."""
    info = {d["title"]: d for d in (asdict(it) if isinstance(it, Item) else it for it in items)}
    last = info[history[-1]]
    freq = Counter(info[t]["category"] for t in history)

    def score(title: str) -> float:
        it = info[title]
        succ = 4.0 if use_successor and it["item_id"] == last["successor"] else 0.0
        return (
            succ + 2.0 * (it["category"] == last["category"]) + freq[it["category"]] / len(history)
        )

    return [score(c) for c in candidates]


def heuristic_hit_rate(
    examples: list[dict], items: Sequence[Item | dict], use_successor: bool = False
) -> float:
    """HR@1 of :func:`rule_scores` (prefer the last item's successor if ``use_successor``,
    then its category, then the history's most frequent categories); ties go to the
    earlier (randomly placed) candidate."""
    hits = 0
    for ex in examples:
        scores = rule_scores(ex["historyList"], ex["itemList"], items, use_successor)
        hits += ex["itemList"][scores.index(max(scores))] == ex["trueSelection"]
    return hits / max(1, len(examples))


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m sdpo_lightning.data.synthetic --out DIR [--config YAML] [--seed 0] ...``.

    Generator settings come from ``--config`` (a YAML mapping of :func:`generate_dataset`
    arguments, e.g. ``configs/quickstart_data.yaml``), then from the flags given explicitly.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--config", help="YAML file of generator settings (generate_dataset arguments)"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--n-items", type=int)
    parser.add_argument("--n-categories", type=int)
    parser.add_argument("--n-users", type=int)
    parser.add_argument(
        "--history-len", type=int, help="most recent items kept in a history window"
    )
    parser.add_argument("--n-candidates", type=int, help="candidates per example, target included")
    parser.add_argument("--min-history", type=int, help="shortest history (first window)")
    parser.add_argument(
        "--seq-len", type=int, nargs=2, metavar=("MIN", "MAX"), help="user sequence length range"
    )
    parser.add_argument("--p-successor", type=float)
    parser.add_argument("--p-same-category", type=float)
    parser.add_argument("--p-article", type=float, help="share of titles that start with 'The'")
    parser.add_argument(
        "--p-context-negative",
        type=float,
        help="probability that a negative comes from the last item's category",
    )
    parser.add_argument(
        "--noun-first", action="store_true", default=None, help="titles start with their theme noun"
    )
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--no-tokenizer", action="store_true", help="skip tokenizer training")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config) if args.config else {}
    except (OSError, ValueError) as err:  # missing / unreadable / invalid file: one error line
        parser.error(f"--config: {err}")
    for key in (
        "seed",
        "n_items",
        "n_categories",
        "n_users",
        "history_len",
        "n_candidates",
        "min_history",
        "seq_len",
        "p_successor",
        "p_same_category",
        "noun_first",
        "p_context_negative",
        "p_article",
    ):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if "seq_len" in settings:
        settings["seq_len"] = tuple(settings["seq_len"])
    data = generate_dataset(args.out, **settings)
    sizes = ", ".join(f"{k}={len(data[k])}" for k in ("train", "valid", "test", "items"))
    print(f"wrote {args.out}: {sizes}")
    for flag in (False, True):
        rate = heuristic_hit_rate(data["valid"], data["items"], use_successor=flag)
        print(
            f"heuristic HR@1 on valid ({'category+successor' if flag else 'category'}): {rate:.3f}"
        )
    if not args.no_tokenizer:
        from sdpo_lightning.modeling.tokenizer import train_tokenizer

        tok = train_tokenizer(
            tokenizer_texts(data["items"]),
            vocab_size=args.vocab_size,
            save_dir=Path(args.out) / "tokenizer",
        )
        print(f"tokenizer: vocab {len(tok)} -> {Path(args.out) / 'tokenizer'}")
    return 0


_SETTINGS = frozenset(inspect.signature(generate_dataset).parameters) - {"out_dir"}


def load_settings(path: str | Path) -> dict:
    """Read a YAML mapping of :func:`generate_dataset` arguments; unknown keys are an error."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: expected a mapping of generator settings, got {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - _SETTINGS)
    if unknown:
        raise ValueError(
            f"{path}: unknown generator setting(s) {unknown}; known: {sorted(_SETTINGS)}"
        )
    return dict(raw)


if __name__ == "__main__":
    raise SystemExit(main())
