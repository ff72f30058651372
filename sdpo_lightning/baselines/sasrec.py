"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Item embedding (scaled by ``sqrt(d)``) + learned position embedding → dropout →
``num_blocks`` pre-LayerNorm Transformer blocks (causal multi-head attention, point-wise
two-layer ReLU feed-forward of width ``d``, residuals, dropout) → final LayerNorm. The
output at the newest position is dotted with the (shared) item embeddings to give the
logits, as in the paper. Padding positions (left, id 0) are zeroed and masked as keys
(each position may always attend to itself, so no attention row is empty).

Defaults (the paper's for sparse data): ``d=64``, 2 blocks, 1 head, dropout 0.2, Adam lr 1e-3.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sdpo_lightning.baselines.seqrec_module import SeqRecModule

__all__ = ["SASRec"]


class SASRec(SeqRecModule):
    """Self-attentive sequential recommender.

    Args:
        num_items: vocabulary size (linked from the data module).
        max_len: longest sequence (linked from the data module).
        d: hidden size.
        num_blocks: Transformer blocks.
        num_heads: attention heads.
        dropout: dropout rate.
        **kwargs: :class:`SeqRecModule` options.
    """

    method_name = "SASRec"

    def __init__(
        self,
        num_items: int,
        max_len: int = 10,
        d: int = 64,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        report_dir: str | None = None,
        method: str | None = None,
        item_table_dir: str | None = None,
    ) -> None:
        super().__init__(num_items, lr, weight_decay, report_dir, method, item_table_dir)
        self.save_hyperparameters()
        self.num_heads = num_heads
        self.embed = nn.Embedding(num_items, d, padding_idx=0)
        # std d^-1/2: inputs (scaled by sqrt(d)) start at unit scale and so do the logits
        # (LayerNormed h · embedding); nn.Embedding's N(0, 1) made them ~N(0, d), a start
        # loss of ~55 nats that 40 epochs of LastFM did not bring below ln(num_items)
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.pos = nn.Embedding(max_len, d)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            num_heads,
            dim_feedforward=d,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, num_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def _mask(self, seq: Tensor) -> Tensor:
        """(B·heads, L, L) bool, True = may not attend: future keys, padded keys (not self)."""
        b, n = seq.shape
        eye = torch.eye(n, dtype=torch.bool, device=seq.device)
        future = torch.ones(n, n, dtype=torch.bool, device=seq.device).triu(1)
        padded = (seq == 0)[:, None, :] & ~eye  # (B, L, L)
        return (future | padded).repeat_interleave(self.num_heads, dim=0)

    def item_table(self) -> Tensor:
        """(num_items, d) item representations, shared by the input and the output layer."""
        return self.embed.weight

    def embed_items(self, seq: Tensor, table: Tensor) -> Tensor:
        """(B, L, d) input embeddings of ``seq`` (rows of ``table``)."""
        return self.embed(seq)

    def logits(self, seq: Tensor) -> Tensor:
        keep = (seq != 0).unsqueeze(-1)  # (B, L, 1)
        pos = torch.arange(seq.shape[1], device=seq.device)
        table = self.item_table()
        x = self.embed_items(seq, table) * self.pos.embedding_dim**0.5 + self.pos(pos)
        x = self.drop(x) * keep
        h = self.norm(self.blocks(x, mask=self._mask(seq)))  # (B, L, d)
        return h[:, -1] @ table.T  # (B, V)
