"""pxprune: pruning at initialisation for vision models, centred on Path eXclusion (PX).

    mask = pxprune.prune(model, "px", batches, sparsity=0.98)
    mask.apply(model)
    scores = pxprune.score(model, "px", batches)
"""

__version__ = "0.1.0"

from . import data, masks, models  # noqa: E402,F401  (pxprune.data.pruning_split, pxprune.models.create_model)
from .api import list_criteria, prune, score  # noqa: E402
from .lottery import lottery  # noqa: E402
from .masks import Mask  # noqa: E402

__all__ = [
    "Mask", "__version__", "data", "list_criteria", "lottery", "masks", "models", "prune", "score",
]
