"""Records, readers, prompts, negatives, collation and the data module."""
