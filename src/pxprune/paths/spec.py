"""What every intercepted operation means in one pass of a path copy."""

from __future__ import annotations

import dataclasses

_CHOICES = {
    "activation": ("keep", "record", "replay", "structure", "identity"),
    "maxpool": ("keep", "record", "gather", "sum"),
    "bn": ("keep", "linear", "batch"),
    "scaling": ("none", "exp", "binary"),
}


@dataclasses.dataclass(frozen=True)
class CopySpec:
    """The meaning of one pass.

    - ``activation``: how data-dependent nonlinear operations are read (``pxprune.paths.handlers``):
      "record" (the real network: run them and put gates, derivatives, coefficients, statistics on
      the tape), "replay" (PX's data copy: every recorded factor squared), "structure" (PX's weight
      copy: every recorded factor 1, following the recorded kinds), "identity" (reachability), or
      "keep" (run them as they are, on the values the copy stands for).
    - ``maxpool``: "record", "gather" (take the recorded argmax), "sum" (every window position is
      a path), or "keep".
    - ``bn``: "keep" (as the model runs it), "linear" (eval form: scale ``|gamma/sqrt(var+eps)|**
      bn_power``, shift 0), or "batch" (real gamma/beta with this pass's batch statistics, running
      statistics untouched).
    - ``coef_power``: fixed linear maps (average pooling, ``mean``) with coefficient c contribute
      ``c**coef_power``: 0 in the PX data copy (sum), 2 in the weight copy, None leaves them as is.
    - ``drop_bias``: conv/linear biases are 0 (except for weights in ``keep_bias``).
    - ``scaling``: "none", "exp" (power-of-two exponents, ``pxprune.paths.scale``) or "binary"
      (values clamped to {0, 1} after every growing op, gradients likewise: reachability).
    - ``lazy``: with "exp", renormalise only when a static bound on the magnitude leaves the safe
      range (for big batches without gradients, the PX data copy); otherwise after every growing
      operation (exact for gradients, one sample).
    """

    activation: str = "keep"
    maxpool: str = "keep"
    bn: str = "keep"
    bn_power: int = 1
    coef_power: int | None = None
    drop_bias: bool = False
    scaling: str = "none"
    lazy: bool = False

    def __post_init__(self) -> None:
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"CopySpec.{field} must be one of {choices}, got {getattr(self, field)!r}")


REAL = CopySpec(activation="record", maxpool="record")
