"""GRU4Rec (Hidasi et al., ICLR 2016): a GRU over the item sequence, next-item softmax.

Architecture as in the LLaRA / S-DPO baselines code: item embedding (``d``) → dropout →
GRU (``num_layers``, hidden ``hidden``) → the hidden state at the newest position →
linear layer to item logits. Sequences are left-padded with id 0, so the last position is
always the newest item; padding embeddings are zero (``padding_idx``).

Defaults (documented hyperparameters): ``d=64``, ``hidden=64``, one layer, dropout 0.2,
Adam lr 1e-3 (see ``configs/baselines/gru4rec_*.yaml``).
"""

from __future__ import annotations

from torch import Tensor, nn

from sdpo_lightning.baselines.seqrec_module import SeqRecModule

__all__ = ["GRU4Rec"]


class GRU4Rec(SeqRecModule):
    """GRU session-based recommender.

    Args:
        num_items: vocabulary size (linked from the data module).
        max_len: sequence length (linked from the data module; a GRU needs none, kept for
            a common signature).
        d: item embedding size.
        hidden: GRU hidden size.
        num_layers: GRU layers.
        dropout: dropout on the embeddings.
        **kwargs: :class:`SeqRecModule` options (``lr``, ``weight_decay``, ``report_dir``).
    """

    method_name = "GRU4Rec"

    def __init__(
        self,
        num_items: int,
        max_len: int = 10,
        d: int = 64,
        hidden: int = 64,
        num_layers: int = 1,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        report_dir: str | None = None,
        method: str | None = None,
        item_table_dir: str | None = None,
    ) -> None:
        super().__init__(num_items, lr, weight_decay, report_dir, method, item_table_dir)
        self.save_hyperparameters()
        self.embed = nn.Embedding(num_items, d, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(d, hidden, num_layers=num_layers, batch_first=True)
        self.out = nn.Linear(hidden, num_items)

    def logits(self, seq: Tensor) -> Tensor:
        h, _ = self.gru(self.drop(self.embed(seq)))  # (B, L, H)
        return self.out(h[:, -1])  # (B, V): the newest position
