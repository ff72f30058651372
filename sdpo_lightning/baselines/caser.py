"""Caser (Tang & Wang, WSDM 2018): convolutional sequence embedding.

The ``L`` most recent items form an ``L × d`` "image"; ``n_h`` horizontal filters of every
height ``1..L`` (ReLU, max-pooled over time) catch union-level patterns and ``n_v``
vertical filters (``L × 1``) weight the positions. Their concatenation → dropout → a
fully connected layer to ``d`` (ReLU) → item logits (the paper's output layer, without
the user embedding: candidate-list rows carry no user id). Left padding with id 0.

Defaults (the paper's / LLaRA's): ``d=64``, ``n_h=16``, ``n_v=4``, dropout 0.5, Adam lr
1e-3, ``L`` = the data module's ``max_len`` (10 here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdpo_lightning.baselines.seqrec_module import SeqRecModule

__all__ = ["Caser"]


class Caser(SeqRecModule):
    """Convolutional sequence recommender.

    Args:
        num_items: vocabulary size (linked from the data module).
        max_len: ``L``, the sequence length (linked from the data module).
        d: item embedding size.
        n_h: horizontal filters per height.
        n_v: vertical filters.
        dropout: dropout before the fully connected layer.
        **kwargs: :class:`SeqRecModule` options.
    """

    method_name = "Caser"

    def __init__(
        self,
        num_items: int,
        max_len: int = 10,
        d: int = 64,
        n_h: int = 16,
        n_v: int = 4,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        report_dir: str | None = None,
        method: str | None = None,
        item_table_dir: str | None = None,
    ) -> None:
        super().__init__(num_items, lr, weight_decay, report_dir, method, item_table_dir)
        self.save_hyperparameters()
        self.embed = nn.Embedding(num_items, d, padding_idx=0)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_h, (h, d)) for h in range(1, max_len + 1))
        self.vertical = nn.Conv2d(1, n_v, (max_len, 1))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(n_v * d + n_h * max_len, d)
        self.out = nn.Linear(d, num_items)

    def logits(self, seq: Tensor) -> Tensor:
        x = self.embed(seq).unsqueeze(1)  # (B, 1, L, d)
        v = self.vertical(x).flatten(1)  # (B, n_v * d)
        hs = [F.relu(conv(x).squeeze(3)).amax(dim=2) for conv in self.horizontal]  # (B, n_h) each
        z = F.relu(self.fc(self.drop(torch.cat([v, *hs], dim=1))))  # (B, d)
        return self.out(z)  # (B, V)
