"""Naive fine-tuning: train on each experience in turn with plain cross-entropy (the lower bound)."""
from clbench.strategy import Strategy


class Naive(Strategy):
    """Fine-tuning on each experience, nothing against forgetting (lower bound)."""

    description = "fine-tuning on each experience in turn; nothing against forgetting (lower bound)"
    hparams: dict = {}
    seed_parallel = True    # seeds can train as one vectorised model (clbench/seed_parallel.py)
