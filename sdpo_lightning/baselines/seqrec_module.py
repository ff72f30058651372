"""The LightningModule shared by the sequential recommenders (GRU4Rec, Caser, SASRec).

Subclasses implement :meth:`SeqRecModule.logits` (``seq`` (B, L) → (B, num_items)). The
module trains with full-softmax cross-entropy on the next item, validates with HR@1 /
MRR over each selection row's candidate list (``val/hr@1``, ``val/mrr``, ties against the
target) and, in ``test``, scores each test row's candidates by their logits and writes
``summary.json`` + ``predictions.jsonl`` (:mod:`.runner`) to ``report_dir`` (default: the
trainer's ``default_root_dir``).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from sdpo_lightning.baselines.runner import records_from_scores, write_report
from sdpo_lightning.evaluation.metrics import rank_of_target

__all__ = ["SeqRecModule"]


class SeqRecModule(pl.LightningModule):
    """Base class: next-item cross-entropy training, candidate-list evaluation.

    Args:
        num_items: vocabulary size (padding 0 and unknown 1 included; linked from the data).
        lr: Adam learning rate.
        weight_decay: Adam L2 penalty.
        report_dir: where ``test`` writes its report (default ``trainer.default_root_dir``).
        method: the report's method name (default: the class's).
        item_table_dir: ``test`` also writes the item table of hybrid prompts here (the fitted
            titles and this model's item embeddings, :class:`sdpo_lightning.modeling.hybrid.ItemTable`).
    """

    method_name = "SeqRec"

    def __init__(
        self,
        num_items: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        report_dir: str | None = None,
        method: str | None = None,
        item_table_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.num_items, self.lr, self.weight_decay = num_items, lr, weight_decay
        self.report_dir, self.method = report_dir, method or self.method_name
        self.item_table_dir = item_table_dir
        self._test_scores: dict[int, list[float]] = {}

    def logits(self, seq: Tensor) -> Tensor:
        """Next-item logits over the vocabulary: (B, L) → (B, num_items)."""
        raise NotImplementedError

    def candidate_scores(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, M) logits of each row's candidates."""
        return self.logits(batch["seq"]).gather(1, batch["candidates"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.logits(batch["seq"])  # (B, V)
        logits = logits.masked_fill(  # padding is no class; unknown (1) is, never chosen
            torch.arange(logits.shape[1], device=logits.device) == 0, float("-inf")
        )
        loss = F.cross_entropy(logits, batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranks = rank_of_target(self.candidate_scores(batch).float(), batch["target_index"]).float()
        n = len(ranks)
        self.log("val/hr@1", (ranks == 1).float().mean(), prog_bar=True, batch_size=n)
        self.log("val/mrr", (1.0 / ranks).mean(), batch_size=n)

    def on_test_epoch_start(self) -> None:
        self._test_scores = {}

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(dm, "protocol", "candidates") == "all_item":  # every catalogue item's logit
            ids = dm.catalogue_ids.to(batch["seq"].device)
            scores = self.logits(batch["seq"]).float()[:, ids]  # (B, n_items)
            for i, row in zip(batch["index"].tolist(), scores.cpu().numpy(), strict=False):
                self._test_scores[i] = row
            return
        scores = self.candidate_scores(batch).float()  # (B, M)
        for i, row in zip(batch["index"].tolist(), scores.tolist(), strict=False):
            self._test_scores[i] = row

    def on_test_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        examples = dm.test_examples
        missing = set(range(len(examples))) - self._test_scores.keys()
        if missing:
            raise RuntimeError(f"{len(missing)} test rows were not scored")
        scores = [self._test_scores[i] for i in range(len(examples))]
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
        protocol = getattr(dm, "protocol", "candidates")
        extra: dict = {"protocol": protocol}
        if protocol == "all_item":
            from sdpo_lightning.baselines.all_item import all_item_meta, all_item_records

            records, n_in_hist = all_item_records(examples, scores, dm.catalogue, dm.top_n, seed)
            extra["catalogue"] = all_item_meta(dm.catalogue, dm.top_n, n_in_hist)
        else:
            records = records_from_scores(examples, scores, seed)
        out = Path(self.report_dir or self.trainer.default_root_dir)
        meta = {
            "run": out.name,
            "method": self.method,
            "dataset": dm.dataset,
            "model": f"baseline:{type(self).__name__.lower()}",
            "baseline": type(self).__name__,
            "train_file": dm.train_file,
            "data_file": dm.test_file,
            "config": {k: v for k, v in self.hparams.items() if k != "report_dir"},
            "n_train": len(dm.fit_examples),
            "n_selection": len(dm.sel_examples),
            "seed": seed,
            "checkpoint": getattr(self.trainer, "ckpt_path", None),
            "epoch": int(self.current_epoch),
            **extra,
        }
        summary = write_report(records, out, meta)
        if self.item_table_dir:
            self.write_item_table(self.item_table_dir)
        name, metric = ("ranking", "hr@1")
        if protocol == "all_item":
            name, metric = "all_item", "hr@10" if dm.top_n >= 10 else "hr@1"
        hr = summary["protocols"][name][metric]
        self.log(f"test/{metric}", float(hr["value"]))
        self.print(
            f"{self.method} on {dm.dataset}: {name} {metric.upper()} {hr['value']:.4f} "
            f"[{hr['ci_low']:.4f}, {hr['ci_high']:.4f}] -> {out / 'summary.json'}"
        )

    def write_item_table(self, directory: str | os.PathLike) -> Path:
        """Write the fitted titles (vocabulary order) and their rows of ``self.embed`` as an
        :class:`~sdpo_lightning.modeling.hybrid.ItemTable` (padding and unknown rows left out)."""
        from sdpo_lightning.modeling.hybrid import ItemTable

        vocab = self.trainer.datamodule.vocab
        titles = sorted(vocab.ids, key=vocab.ids.get)  # ids 2, 3, ...
        rows = torch.tensor([vocab.ids[t] for t in titles])
        source = (
            f"{type(self).__name__} (checkpoint {getattr(self.trainer, 'ckpt_path', None)}, "
            f"train_file {self.trainer.datamodule.train_file})"
        )
        out = ItemTable(titles, self.embed.weight.detach().cpu()[rows], source).save(directory)
        self.print(f"item table ({len(titles)} items, d={self.embed.embedding_dim}) -> {out}")
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
