"""sdpo_lightning: softmax DPO for LLM-based sequential recommendation on PyTorch Lightning."""

__version__ = "0.1.0"
