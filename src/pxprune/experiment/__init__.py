"""Experiments: run configurations and recipes, single runs into run folders, the demo
(docs/design/CONTRACTS.md sections 5, 6 and 8). The CLI (``pxprune.cli``) is a thin layer over
this package."""

from .config import (
    AMP_MODES,
    DEFAULT_RECIPE,
    SCHEDULES,
    DataConfig,
    Flags,
    ModelConfig,
    PruneConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    list_recipes,
    read_recipe,
    recipe_comment,
    resolve_config,
    with_prune,
)
from .data import Data, build_model, load_data
from .demo import DEMO_CRITERIA, DEMO_OUT, DEMO_RECIPE, demo_config, demo_plans, demo_table
from .errors import UserError
from .folder import RunFolder, load_mask
from .run import (
    METRIC_KEYS,
    Observer,
    Plan,
    default_out,
    evaluate_run,
    execute,
    plan,
    read_config,
    run_label,
    train_config_for_mask,
)
from .sources import DENSE, SOURCES, MaskSource, register_source
from .spec import (
    CriterionSpec,
    criterion_label,
    normalise_options,
    parse_criterion,
    sparsity_label,
    split_criteria,
)
from .training import make_trainer

__all__ = [
    "AMP_MODES", "DEFAULT_RECIPE", "DEMO_CRITERIA", "DEMO_OUT", "DEMO_RECIPE", "DENSE",
    "METRIC_KEYS", "SCHEDULES", "SOURCES", "CriterionSpec", "Data", "DataConfig", "Flags",
    "MaskSource", "ModelConfig", "Observer", "Plan", "PruneConfig", "RunConfig", "RunFolder",
    "TrainConfig", "UserError", "build_model", "register_source",
    "config_from_dict", "criterion_label", "default_out", "demo_config", "demo_plans",
    "demo_table", "evaluate_run", "execute", "list_recipes", "load_data", "load_mask",
    "make_trainer", "normalise_options", "parse_criterion", "plan", "read_config", "read_recipe",
    "recipe_comment", "resolve_config", "run_label", "sparsity_label", "split_criteria",
    "train_config_for_mask", "with_prune",
]
