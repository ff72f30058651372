"""Baselines in the report format: non-neural scorers (random, most popular, item
co-occurrence) and sequential recommenders (GRU4Rec, Caser, SASRec, MoRec).

Scorers: ``sdpo-baseline NAME --train T --test V --out DIR`` or :func:`run_baseline` from
Python. Sequential recommenders (Lightning modules in :mod:`.gru4rec`, :mod:`.caser`,
:mod:`.sasrec`, :mod:`.morec`): ``sdpo-baseline fit -c configs/baselines/MODEL_DATA.yaml``
(:mod:`.seqrec_cli`). Both kinds rank each row's candidate list or, in the all-item protocol,
the whole catalogue (:mod:`.all_item`).
"""

from sdpo_lightning.baselines.base import Scorer
from sdpo_lightning.baselines.item_knn import ItemKNNScorer
from sdpo_lightning.baselines.most_popular import MostPopularScorer
from sdpo_lightning.baselines.random_scores import RandomScorer
from sdpo_lightning.baselines.registry import SCORERS, make_scorer
from sdpo_lightning.baselines.runner import prediction_records, run_baseline

__all__ = [
    "SCORERS",
    "ItemKNNScorer",
    "MostPopularScorer",
    "RandomScorer",
    "Scorer",
    "make_scorer",
    "prediction_records",
    "run_baseline",
]
