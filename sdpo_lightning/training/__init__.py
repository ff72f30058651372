"""Training: the LightningModule (:mod:`.module`), its argument groups (:mod:`.module_args`),
the loss functions (:mod:`.objectives`), negative selection (:mod:`.negatives`) and the
DeepSpeed strategies (:mod:`.strategies`)."""
