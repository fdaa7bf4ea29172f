"""Registered pruning criteria. Importing this package registers every built-in criterion."""

from . import grasp, magnitude, ntksap, px, random, snip, synflow, synflow_l2  # noqa: E402,F401  (registers them)
from .base import (
    CRITERIA,
    Context,
    Criterion,
    DataOptions,
    InputSizeOptions,
    NoOptions,
    make_options,
    non_default_options,
    option_names,
    register_criterion,
)

__all__ = [
    "CRITERIA", "Context", "Criterion", "DataOptions", "InputSizeOptions", "NoOptions",
    "make_options", "non_default_options", "option_names", "register_criterion",
]
