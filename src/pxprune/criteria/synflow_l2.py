"""SynFlow-L2 (``synflow_l2``): the data-free counterpart of PX, on the path-flow engine of
``pxprune.criteria.synflow``."""

from __future__ import annotations

from ..paths import CopySpec
from .base import register_criterion
from .synflow import _PathFlow

# SynFlow-L2: weights theta**2, max-pool summed over its window (every position is a path), BN
# scale and every other fixed coefficient squared, biases 0; on ReLU networks exactly PX's weight
# copy (docs/design/PX.md section 2). Other operations run as they are on the copy's values (SynFlow's rule).
SYNFLOW_L2_SPEC = CopySpec(activation="keep", maxpool="sum", bn="linear", bn_power=2,
                           coef_power=2, drop_bias=True, scaling="exp")


@register_criterion
class SynFlowL2(_PathFlow):
    """SynFlow-L2: the L2 path norm of Gebhart, Saxena, Schrater, "A Unified Paths Perspective for
    Pruning at Initialization", arXiv 2101.10552 (2021); here the data-free counterpart of PX
    (Iurada, Ciccone, Tommasi, CVPR 2024, docs/design/PX.md section 2).

    Score: ``S_j = theta_j**2 * dR2/d(theta_j**2) = sum_k sum_{p in P_k, p contains j} v_p**2``
    with ``R2 = sum_k z2[k]`` the output sum of PX's weight copy: prunable weights
    ``M * theta**2``, activations the identity, max-pool a sum over its window, BatchNorm the scale
    ``(gamma / sqrt(running_var + eps))**2`` with shift 0, average pooling with squared
    coefficients, biases 0, one all-ones input sample. Scores are >= 0, pruned weights score 0,
    and each layer of a plain layered net sums to R2.

    Relation to PX: with default options PX's first round (all-ones mask) ranks *exactly* like
    this criterion (every output receives the same data term); the data enter PX only in later
    rounds. ``pxprune.masks.overlap`` of the two masks measures how data-driven a PX mask is.

    Data: none (the input shape comes from the first batch or ``input_size=(C, H, W)``).
    Mode: every module in eval mode. Cost per round: one forward and one backward of one sample.
    Default schedule: 100 rounds, exponential (as PX).
    """

    name = "synflow_l2"
    spec = SYNFLOW_L2_SPEC
    power = 2
