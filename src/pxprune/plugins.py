"""User modules that register criteria, models, datasets, tasks or mask sources, imported by the
command line (and by a sweep's worker processes) before anything is looked up.

Two ways to name them, for packages and for scripts:

- an installed package declares an entry point in the group ``pxprune.plugins``
  (``[project.entry-points."pxprune.plugins"] mine = "mypkg.pxprune_plugin"``);
- the environment variable ``PXPRUNE_PLUGINS`` lists importable module names, comma-separated
  (``PXPRUNE_PLUGINS=my_criterion,my_dataset pxprune list criteria``).

The library itself never imports plugins: a Python user imports their module."""

from __future__ import annotations

import importlib
import importlib.metadata
import os

GROUP = "pxprune.plugins"
ENV = "PXPRUNE_PLUGINS"


class PluginError(Exception):
    """A plugin could not be imported (the message names it and the reason)."""


def plugin_names() -> list[str]:
    """Module names from the entry points, then from ``PXPRUNE_PLUGINS``, without repeats."""
    names = [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=GROUP)]
    names += [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def load_plugins() -> list[str]:
    """Import every plugin module (a module already imported is not run again); their names."""
    names = plugin_names()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure of user code is reported as such
            raise PluginError(f"plugin {name!r} could not be imported ({type(err).__name__}: "
                              f"{err}); fix it or remove it from {ENV} / the {GROUP} entry "
                              "points") from None
    return names
