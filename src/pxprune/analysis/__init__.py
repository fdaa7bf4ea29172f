"""Analysis of masks and sweeps: NTK diagnostics (``ntk``) and figures (``plots``, matplotlib).

``plots`` is imported on demand (``from pxprune.analysis import plots``) so that the NTK needs no
matplotlib.
"""

from .ntk import NTKResult, ntk_summary

__all__ = ["NTKResult", "ntk_summary"]
