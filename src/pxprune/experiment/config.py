"""Run configuration: frozen dataclasses, recipes and their overrides (docs/design/CONTRACTS.md section 6).

Precedence: dataclass defaults < recipe YAML < ``--set key=value`` (in order; later ones win) <
flags (``--criterion``, ``--sparsity``/``--density``, ``--rounds``, ``--seed``, ``--epochs``).
Values are type-checked against their field; a bad key or value is a :class:`UserError` naming the
valid keys or the expected type. Recipes are package data (``pxprune/recipes/*.yaml``); a recipe's
``comment`` (what it is, expected GPU time) is not part of the configuration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..threshold import SCOPES
from ..train.loop import AMP_MODES, SCHEDULES
from .errors import UserError
from .spec import _plain, parse_criterion, yaml_scalar

DEFAULT_RECIPE = "demo"
META_KEYS = ("comment", "recipe", "provenance")
"""Top-level keys of a recipe or config.yaml that describe it and are not configuration."""


NORMALIZE = ("weights", "dataset")


def _field(default: Any, kind: str, *, choices: Sequence[str] = (), since: bool = False) -> Any:
    """``since``: a key added after run folders already existed; config.yaml (and a run's
    identity) holds it only when it differs from its default, so earlier folders still match."""
    meta = {"kind": kind, "choices": tuple(choices), "since": since}
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``model.*``: a registered (or torchvision) model name and optional pre-trained weights:
    a torchvision weight name (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``; ``imagenet`` is
    ``IMAGENET1K_V1``) or a checkpoint file, its layout detected from its keys or forced with
    ``torchvision:``, ``mocov2:``, ``dino:`` or ``clip:`` (docs/design/PRETRAINED.md)."""

    name: str = _field("resnet20", "str")
    pretrained: str | None = _field(None, "str?")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data.*``: dataset, where its files are, and the pruning split (``per_class`` examples of
    every class drawn from the first ``train_subset`` training examples, or all of them).

    ``normalize``: ``weights`` (default) normalises inputs with the statistics the pre-trained
    weights were trained with (ImageNet's for torchvision, MoCo v2 and DINO, CLIP's for clip), since
    a backbone's first layer and BN statistics expect them; without pre-trained weights that is the
    dataset's own statistics, as before. ``dataset`` always uses the dataset's statistics, which is
    what the paper's code does for every backbone. ``image_size``: resize inputs to this square size
    (e.g. 224 for transfer from ImageNet backbones), after the dataset's own augmentation; null keeps
    the dataset's size. ``crop_size``: a segmentation dataset's training crop and evaluation size,
    which is also the size criteria score at (null: the dataset's default, 513 for VOC).
    ``options``: the dataset's own options (``pxprune list datasets`` names them; e.g. VOC's
    ``label_pad: background`` or ``val: full``).
    """

    name: str = _field("fashion-mnist", "str")
    root: str = _field("data", "str")
    download: bool = _field(False, "bool")
    per_class: int = _field(10, "int")
    train_subset: int | None = _field(None, "int?")
    normalize: str = _field("weights", "str", choices=NORMALIZE, since=True)
    image_size: int | None = _field(None, "int?", since=True)
    crop_size: int | None = _field(None, "int?", since=True)
    options: dict[str, Any] = _field({}, "options", since=True)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """``prune.*``: the bare criterion name and its non-default options, target sparsity,
    rounds (None: the criterion's own default), scope, and the shuffled-mask sanity check."""

    criterion: str = _field("px", "str")
    options: dict[str, Any] = _field({}, "options")
    sparsity: float = _field(0.982, "float")
    rounds: int | None = _field(None, "int?")
    scope: str = _field("global", "str", choices=SCOPES)
    shuffle: bool = _field(False, "bool")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train.*``: SGD and its schedule (``step``: x0.1 at each milestone epoch; ``cosine``: to 0
    over all steps), mixed precision, and the re-initialisation sanity check. ``batch_size`` is
    the global batch (split over the processes of a ``torchrun`` job); ``sync_bn`` synchronises
    BatchNorm statistics across those processes (CUDA only; no effect in one process).
    ``backbone_lr``: the learning rate of the parameters under ``backbone.`` (a segmentation
    network's pre-trained encoder); null: ``lr`` for every parameter."""

    epochs: int = _field(2, "int")
    batch_size: int = _field(128, "int")
    lr: float = _field(0.1, "float")
    momentum: float = _field(0.9, "float")
    weight_decay: float = _field(1e-4, "float")
    nesterov: bool = _field(False, "bool")
    schedule: str = _field("cosine", "str", choices=SCHEDULES)
    milestones: tuple[int, ...] = _field((), "ints")
    amp: str = _field("auto", "str", choices=AMP_MODES)
    reinit: bool = _field(False, "bool")
    sync_bn: bool = _field(False, "bool", since=True)
    backbone_lr: float | None = _field(None, "float?", since=True)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "prune": PruneConfig, "train": TrainConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A resolved configuration. ``recipe`` names where it came from (the default output folder
    uses it); it is not part of the run's identity (:meth:`identity`)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    prune: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    seed: int = 0
    recipe: str = DEFAULT_RECIPE

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the order config.yaml is written."""
        out: dict[str, Any] = {"recipe": self.recipe}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {
                f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)
                if not (f.metadata.get("since") and getattr(section, f.name) == _default(f))
            }
        out["seed"] = self.seed
        return out

    def identity(self) -> dict[str, Any]:
        """What must be equal for two folders to hold the same run."""
        d = self.to_dict()
        del d["recipe"]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------ type checking
def _kind_name(kind: str) -> str:
    return {
        "str": "a string", "str?": "a string or null", "bool": "true or false",
        "int": "an integer", "int?": "an integer or null", "float": "a number",
        "float?": "a number or null",
        "ints": "a list of integers like [80, 120]", "options": "a mapping like {bn: train}",
    }[kind]


def _coerce(key: str, kind: str, choices: tuple[str, ...], value: Any) -> Any:
    def bad() -> UserError:
        return UserError(f"bad value for {key}: expected {_kind_name(kind)}, got {value!r}")

    if kind in ("str", "str?"):
        if value is None and kind == "str?":
            return None
        if isinstance(value, bool) and choices:
            # YAML 1.1 reads an unquoted off/on as a boolean
            word = "on" if value else "off"
            if word in choices:
                return word
        if not isinstance(value, str) or (kind == "str" and not value):
            raise bad()
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind in ("int", "int?"):
        if value is None and kind == "int?":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind in ("float", "float?"):
        if value is None and kind == "float?":
            return None
        if isinstance(value, str):
            # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if not math.isfinite(value):
            raise bad()
        return float(value)
    if kind == "ints":
        if isinstance(value, str):
            text = value.strip().strip("[]")
            try:
                value = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise bad() from None
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise bad()
        return tuple(value)
    if kind == "options":
        if value is None:
            return {}
        if not isinstance(value, Mapping) or any(not isinstance(k, str) for k in value):
            raise bad()
        return dict(value)
    raise AssertionError(kind)


def _fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def _valid_keys() -> str:
    keys = [f"{s}.{f}" for s in SECTIONS for f in _fields(s)] + ["seed"]
    return ", ".join(keys)


def _set_value(raw: dict[str, Any], key: str, value: Any, *, parse: bool) -> None:
    """Set ``key`` (``section.field``, ``prune.options.NAME`` or ``seed``) in the nested dict.
    With ``parse``, ``value`` is command-line text: string fields take it verbatim, other fields
    read it as YAML."""
    if key == "seed":
        value = yaml_scalar(value) if parse else value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"bad value for seed: expected a non-negative integer, got {value!r}")
        raw["seed"] = value
        return
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise UserError(f"unknown configuration key {key!r}; valid keys: {_valid_keys()}")
    if section in ("prune", "data") and name.startswith("options."):
        option = name[len("options."):]
        if not option:
            raise UserError(f"bad key {key!r}: write {section}.options.NAME=VALUE")
        raw[section]["options"] = dict(raw[section]["options"])
        raw[section]["options"][option] = yaml_scalar(value) if parse else value
        return
    fields = _fields(section)
    if name not in fields:
        raise UserError(
            f"unknown configuration key {key!r}; valid keys: {_valid_keys()}"
        )
    meta = fields[name].metadata
    if parse:
        if meta["kind"] == "str":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
        elif meta["kind"] == "str?":
            value = None if value.strip() in ("null", "~", "") else value.strip()
        else:
            value = yaml_scalar(value)
    raw[section][name] = _coerce(key, meta["kind"], meta["choices"], value)


# ------------------------------------------------------------------------------ recipes
def _recipe_dir() -> Any:
    return resources.files("pxprune").joinpath("recipes")


def list_recipes() -> list[str]:
    """The names of the shipped recipes (file stems of ``pxprune/recipes/*.yaml``)."""
    return sorted(p.name[:-5] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def _is_path(recipe: str) -> bool:
    return recipe.endswith((".yaml", ".yml")) or "/" in recipe or Path(recipe).is_file()


def read_recipe(recipe: str) -> tuple[str, dict[str, Any]]:
    """``(name, mapping)`` of a shipped recipe NAME or a YAML file path (not yet validated)."""
    if not isinstance(recipe, str) or not recipe.strip():
        raise UserError(f"empty recipe; choose one of: {', '.join(list_recipes())} or a YAML file")
    if _is_path(recipe):
        path = Path(recipe).expanduser()
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist; give a YAML file or one of: "
                            f"{', '.join(list_recipes())}")
        text = path.read_text()
        name = path.stem
    else:
        if recipe not in list_recipes():
            raise UserError(
                f"unknown recipe {recipe!r}; choose one of: {', '.join(list_recipes())} "
                "(or the path of a YAML file)"
            )
        text = _recipe_dir().joinpath(f"{recipe}.yaml").read_text()
        name = recipe
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"recipe {recipe!r} is not valid YAML ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"recipe {recipe!r} must be a YAML mapping of sections (model, data, ...)")
    if isinstance(data.get("recipe"), str) and data["recipe"]:
        name = data["recipe"]  # a config.yaml used as a recipe keeps its recipe's name
    return name, data


def recipe_comment(recipe: str) -> str:
    """The ``comment`` of a recipe (what it is and its expected GPU time)."""
    _, data = read_recipe(recipe)
    return " ".join(str(data.get("comment", "")).split())


def _merge_mapping(raw: dict[str, Any], data: Mapping[str, Any], where: str) -> None:
    for top, value in data.items():
        if top in META_KEYS:
            continue
        if top == "seed":
            _set_value(raw, "seed", value, parse=False)
            continue
        if top not in SECTIONS:
            raise UserError(
                f"{where}: unknown section {top!r}; valid: {', '.join([*SECTIONS, 'seed'])}"
            )
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: section {top!r} must be a mapping of keys to values")
        for name, v in value.items():
            try:
                _set_value(raw, f"{top}.{name}", v, parse=False)
            except UserError as err:
                raise UserError(f"{where}: {err}") from None


# ------------------------------------------------------------------------------ resolution
@dataclasses.dataclass(frozen=True)
class Flags:
    """The command-line flags that override the configuration (None: not given)."""

    criterion: str | None = None
    sparsity: float | None = None
    density: float | None = None
    rounds: int | None = None
    seed: int | None = None
    epochs: int | None = None
    pretrained: str | None = None


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _defaults() -> dict[str, Any]:
    d = RunConfig().to_dict()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.metadata.get("since"):
                d[section][f.name] = _default(f)
    d["train"]["milestones"] = tuple(d["train"]["milestones"])
    return d


def parse_sets(sets: Iterable[str]) -> list[tuple[str, str]]:
    """``["a.b=1", "c.d=x"]`` -> ``[("a.b", "1"), ("c.d", "x")]`` (a UserError for ``a.b``)."""
    out = []
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"bad --set {item!r}: write key=value, e.g. --set train.epochs=3")
        out.append((key.strip(), value))
    return out


def resolve_config(
    recipe: str | None = None,
    sets: Iterable[str] = (),
    flags: Flags | None = None,
    *,
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """defaults < recipe (or ``base``, an already-read mapping) < ``sets`` < ``flags``,
    validated. Raises :class:`UserError`."""
    flags = flags or Flags()
    raw = _defaults()
    if base is not None:
        name = str(base.get("recipe") or DEFAULT_RECIPE)
        _merge_mapping(raw, base, f"configuration of {name!r}")
    else:
        name, data = read_recipe(recipe or DEFAULT_RECIPE)
        _merge_mapping(raw, data, f"recipe {name!r}")
    raw["recipe"] = name
    explicit_sparsity = False
    for key, value in parse_sets(sets):
        _set_value(raw, key, value, parse=True)
        explicit_sparsity |= key == "prune.sparsity"
    if flags.criterion is not None:
        spec = parse_criterion(flags.criterion)
        raw["prune"]["criterion"] = spec.name
        raw["prune"]["options"] = dict(spec.options)
        if spec.shuffle:
            raw["prune"]["shuffle"] = True
        if spec.reinit:
            raw["train"]["reinit"] = True
    if flags.sparsity is not None and flags.density is not None:
        raise UserError("give --sparsity or --density, not both")
    if flags.sparsity is not None:
        raw["prune"]["sparsity"] = _coerce("--sparsity", "float", (), flags.sparsity)
        explicit_sparsity = True
    if flags.density is not None:
        d = _coerce("--density", "float", (), flags.density)
        if not 0.0 < d <= 1.0:
            raise UserError(f"--density must be in (0, 1], got {d!r} (0.018 keeps 1.8% of weights)")
        raw["prune"]["sparsity"] = round(1.0 - d, 12)
        explicit_sparsity = True
    if flags.rounds is not None:
        raw["prune"]["rounds"] = _coerce("--rounds", "int?", (), flags.rounds)
    if flags.seed is not None:
        _set_value(raw, "seed", flags.seed, parse=False)
    if flags.epochs is not None:
        raw["train"]["epochs"] = _coerce("--epochs", "int", (), flags.epochs)
    if flags.pretrained is not None:
        _set_value(raw, "model.pretrained", flags.pretrained, parse=True)
    return build_config(raw, explicit_sparsity=explicit_sparsity)


def build_config(raw: Mapping[str, Any], *, explicit_sparsity: bool = True) -> RunConfig:
    """A validated :class:`RunConfig` from a nested mapping of already type-checked values.

    The ``prune`` section follows its mask source's rules (``pxprune.experiment.sources``): e.g.
    ``criterion: dense`` sets the sparsity to 0 unless one was given explicitly (then it must be
    0), and a sparsity of 0 records the criterion as ``dense``."""
    from .sources import normalise_prune

    prune = normalise_prune(dict(raw["prune"]), explicit_sparsity=explicit_sparsity)
    train = dict(raw["train"])
    data = dict(raw["data"])
    model = dict(raw["model"])
    for section, values in (("data", data), ("model", model), ("train", train)):
        for f in dataclasses.fields(SECTIONS[section]):
            if f.metadata.get("since"):
                values.setdefault(f.name, _default(f))  # to_dict leaves out their defaults
    _validate(model, data, prune, train)
    return RunConfig(
        model=ModelConfig(**model),
        data=DataConfig(**data),
        prune=PruneConfig(**prune),
        train=TrainConfig(**train),
        seed=raw["seed"],
        recipe=str(raw.get("recipe") or DEFAULT_RECIPE),
    )


def _validate(model: dict, data: dict, prune: dict, train: dict) -> None:
    from ..data import get_spec
    from ..models import model_info

    try:
        info = model_info(model["name"])
    except ValueError as err:
        raise UserError(str(err)) from None
    if model["pretrained"] is not None:
        from ..models.pretrained import spec_problem

        problem = spec_problem(model["pretrained"])
        if problem:
            raise UserError(problem)
    try:
        spec = get_spec(data["name"])
    except ValueError as err:
        raise UserError(str(err)) from None
    if spec.task not in info.tasks:
        raise UserError(
            f"model {model['name']!r} is for {', '.join(info.tasks)}, but dataset {data['name']!r} "
            f"is a {spec.task} dataset: choose a {spec.task} model (see `pxprune list models`)"
        )
    if data["per_class"] < 1:
        raise UserError(f"data.per_class must be >= 1, got {data['per_class']}")
    if data["train_subset"] is not None and data["train_subset"] < 1:
        raise UserError(f"data.train_subset must be >= 1 or null, got {data['train_subset']}")
    if data["normalize"] not in NORMALIZE:
        raise UserError(f"unknown data.normalize {data['normalize']!r}; choose one of: "
                        f"{', '.join(NORMALIZE)}")
    if data["image_size"] is not None:
        if data["image_size"] < 1:
            raise UserError(f"data.image_size must be >= 1 or null, got {data['image_size']}")
        if spec.task != "classification":
            raise UserError(f"data.image_size resizes images, not {spec.task} targets: leave it "
                            f"null for {data['name']!r}")
    from ..data import dataset_options

    accepted = dataset_options(data["name"])
    if data["crop_size"] is not None:
        if "crop_size" not in accepted:
            raise UserError(f"data.crop_size crops segmentation images; {data['name']!r} takes "
                            "none: leave it null (or use data.image_size to resize)")
        if data["crop_size"] < 8:
            raise UserError(f"data.crop_size must be at least 8, got {data['crop_size']}")
    unknown = sorted(set(data["options"]) - (set(accepted) - {"crop_size"}))
    if unknown:
        valid = ", ".join(sorted(set(accepted) - {"crop_size"})) or "none"
        raise UserError(f"dataset {data['name']!r} has no option {', '.join(unknown)} "
                        f"(data.options); its options: {valid}")
    for key, kind in (("scope", SCOPES),):
        if prune[key] not in kind:
            raise UserError(f"unknown prune.{key} {prune[key]!r}; choose one of: {', '.join(kind)}")
    if train["epochs"] < 1:
        raise UserError(f"train.epochs must be >= 1, got {train['epochs']}")
    if train["batch_size"] < 1:
        raise UserError(f"train.batch_size must be >= 1, got {train['batch_size']}")
    if train["lr"] <= 0:
        raise UserError(f"train.lr must be > 0, got {train['lr']}")
    if train["backbone_lr"] is not None and train["backbone_lr"] < 0:
        raise UserError(f"train.backbone_lr must be >= 0 or null, got {train['backbone_lr']}")
    if train["momentum"] < 0 or train["weight_decay"] < 0:
        raise UserError("train.momentum and train.weight_decay must be >= 0")
    if train["nesterov"] and train["momentum"] <= 0:
        raise UserError("train.nesterov needs train.momentum > 0")
    if train["schedule"] not in SCHEDULES:
        raise UserError(
            f"unknown train.schedule {train['schedule']!r}; choose one of: {', '.join(SCHEDULES)}"
        )
    if train["amp"] not in AMP_MODES:
        raise UserError(
            f"unknown train.amp {train['amp']!r}; choose one of: {', '.join(AMP_MODES)}"
        )
    ms = list(train["milestones"])
    if any(m < 1 for m in ms) or ms != sorted(set(ms)):
        raise UserError(
            f"train.milestones must be increasing positive epochs like [80, 120], got {ms}"
        )


def config_from_dict(data: Mapping[str, Any], where: str = "config.yaml") -> RunConfig:
    """Re-read a written configuration (config.yaml) with the same checks as a recipe."""
    raw = _defaults()
    _merge_mapping(raw, data, where)
    raw["recipe"] = str(data.get("recipe") or DEFAULT_RECIPE)
    return build_config(raw, explicit_sparsity=True)


def with_prune(config: RunConfig, **changes: Any) -> RunConfig:
    """``config`` with some ``prune.*`` fields replaced (re-validated)."""
    raw = config.to_dict()
    raw["prune"].update(changes)
    raw["train"]["milestones"] = tuple(raw["train"]["milestones"])
    return build_config(raw, explicit_sparsity="sparsity" in changes)
