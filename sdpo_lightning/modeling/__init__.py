"""The model side: policy and tokenizer loading, LoRA and reference adapters
(:mod:`.models`), LLaRA hybrid item tokens (:mod:`.hybrid`) and the offline BPE tokenizer of
the demo and tests (:mod:`.tokenizer`)."""
