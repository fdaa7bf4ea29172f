"""Training and evaluation of (masked) classifiers: SGD with a step or cosine schedule, mixed
precision, and resumable checkpoints (docs/design/CONTRACTS.md sections 5 and 6)."""

from .checkpoint import (
    global_rng_state,
    load_checkpoint,
    load_plain_state_dict,
    plain_state_dict,
    save_checkpoint,
)
from .loop import (
    AMP_MODES,
    Amp,
    EpochStats,
    EvalStats,
    default_workers,
    evaluate,
    make_loader,
    make_optimizer,
    make_scheduler,
    resolve_amp,
    seeded_rng,
    train_epoch,
)
from .trainer import Trainer

__all__ = [
    "AMP_MODES", "Amp", "EpochStats", "EvalStats", "Trainer", "default_workers", "evaluate",
    "global_rng_state", "load_checkpoint", "load_plain_state_dict", "make_loader",
    "make_optimizer", "make_scheduler", "plain_state_dict", "resolve_amp", "save_checkpoint",
    "seeded_rng", "train_epoch",
]
