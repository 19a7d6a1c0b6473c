"""mamlflow-example-plugin: a polynomial-regression task family, a Fourier-feature MLP and a preset.

mamlflow finds the package through its ``mamlflow`` entry point, the module
``mamlflow_example_plugin.plugin``; nothing here needs importing by hand.
"""

from __future__ import annotations

__version__ = "0.1.0"
