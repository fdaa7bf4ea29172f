"""Plugins (user modules the CLI imports), registry name rules, mask-source lookups."""

from __future__ import annotations

import sys
import textwrap

import pytest

import pxprune.plugins as plugins
from conftest import cli
from pxprune.criteria import CRITERIA
from pxprune.experiment import SOURCES, UserError
from pxprune.experiment.sources import source_for
from pxprune.registry import Registry

PLUGIN = textwrap.dedent('''
    import torch
    from pxprune.criteria.base import Criterion, register_criterion

    @register_criterion
    class Ones(Criterion):
        """Every kept weight scores 1 (a plugin in a test)."""

        name = "{name}"
        default_rounds = 1

        def score(self, ctx, mask):
            return {{n: torch.ones_like(w) for n, w in ctx.params.items()}}
''')


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module on sys.path that registers criterion ``plugin_ones``; unregistered afterwards."""
    (tmp_path / "my_pxprune_plugin.py").write_text(PLUGIN.format(name="plugin_ones"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_pxprune_plugin"
    sys.modules.pop("my_pxprune_plugin", None)
    CRITERIA._items.pop("plugin_ones", None)


def test_the_cli_imports_plugins_named_in_the_environment(plugin_module, monkeypatch, capsys):
    code, out, _ = cli(capsys, "list", "criteria")
    assert code == 0 and "plugin_ones" not in out
    monkeypatch.setenv(plugins.ENV, f" {plugin_module} ,")
    code, out, _ = cli(capsys, "list", "criteria")
    assert code == 0 and any(line.startswith("plugin_ones  (") for line in out.splitlines())
    # imported once, however often the CLI runs
    assert cli(capsys, "list", "criteria")[0] == 0


def test_entry_points_name_plugins_too(plugin_module, monkeypatch):
    class EntryPoint:
        value = f"{plugin_module}:ignored"

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group: [EntryPoint()] if group == plugins.GROUP else [])
    monkeypatch.setenv(plugins.ENV, plugin_module)
    assert plugins.plugin_names() == [plugin_module]
    assert plugins.load_plugins() == [plugin_module] and "plugin_ones" in CRITERIA


def test_a_broken_plugin_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV, "broken_plugin,missing_plugin_xyz")
    code, _, err = cli(capsys, "list", "criteria")
    assert code == 2 and "plugin 'broken_plugin'" in err and "boom" in err
    assert len(err.strip().splitlines()) == 1
    sys.modules.pop("broken_plugin", None)


@pytest.mark.parametrize("name", ["px--x", "Px", "a+b", "a[b]", "a,b", "a=b", "-a", "a b"])
def test_names_that_would_break_specs_or_folders_are_refused(name):
    with pytest.raises(ValueError, match="lower-case letters"):
        CRITERIA.add(name, object)
    with pytest.raises(ValueError, match="lower-case letters"):
        SOURCES.add(name, object())
    assert name not in CRITERIA and name not in SOURCES
    free = Registry("thing")  # registries without a rule take any stripped name
    free.add("fashion-mnist", 1)


@pytest.mark.parametrize("name", ["a--b", "-a", "a b", "a/b"])
def test_model_and_dataset_names_may_not_break_folder_names(name):
    from pxprune.data.base import DATASETS
    from pxprune.models.factory import _MODELS

    for registry in (_MODELS, DATASETS):
        with pytest.raises(ValueError, match="not --"):
            registry.add(name, object())
        assert name not in registry


def test_the_file_source_is_not_a_criterion_and_clashes_are_errors():
    with pytest.raises(UserError, match="unknown criterion 'file'"):
        source_for("file")
    with SOURCES.scoped("px", object()), pytest.raises(UserError, match="both as a criterion"):
        source_for("px")
