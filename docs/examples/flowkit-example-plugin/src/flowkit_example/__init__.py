"""flowkit-example-plugin: a third-party transform for flowkit (the sinh-arcsinh flow).

flowkit discovers :class:`SinhArcsinh` through the ``flowkit.transforms`` entry point declared in
this distribution's ``pyproject.toml``, and :class:`SinhArcsinhMap` (the same map with
conditioned parameters, for couplings and autoregressive flows) through ``flowkit.elementwise``;
importing this package is never required to use them.
"""

from __future__ import annotations

from flowkit_example.sinh_arcsinh import SinhArcsinh
from flowkit_example.sinh_arcsinh_map import SinhArcsinhMap

__all__ = ["SinhArcsinh", "SinhArcsinhMap"]
__version__ = "0.1.0"
