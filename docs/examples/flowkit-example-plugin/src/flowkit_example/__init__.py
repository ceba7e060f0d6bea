"""flowkit-example-plugin: a third-party transform for flowkit (the sinh-arcsinh flow).

flowkit discovers :class:`SinhArcsinh` through the ``flowkit.transforms`` entry point declared in
this distribution's ``pyproject.toml``; importing this package is never required to use it.
"""

from __future__ import annotations

from flowkit_example.sinh_arcsinh import SinhArcsinh

__all__ = ["SinhArcsinh"]
__version__ = "0.1.0"
