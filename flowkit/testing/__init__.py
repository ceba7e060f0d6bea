"""Conformance checks every transform plugin must pass (public API for plugin authors).

A transform ``f`` is usable in a flow only if it is invertible and reports the right
log-determinant of its Jacobian, ``log p_X(x) = log p_Y(f(x)) + log|det J_f(x)|`` (Dinh et al.
2015, "NICE: Non-linear Independent Components Estimation", eq. 1). The checks here test exactly
that, plus what makes a module a good citizen of flowkit (state survives ``state_dict``, dtype and
device follow the input, gradients reach every parameter, the module pickles). A plugin author
runs them in their own test-suite::

    from flowkit.testing import check_transform

    def test_my_flow() -> None:
        check_transform(MyFlow, (6,), {"hidden": 8})
        check_transform(MyFlow, (2, 4, 4), {"hidden": 8, "conditional": True}, num_classes=3)

or from the command line with ``flowkit check NAME`` (built on :func:`run_checks`). Hypothesis
strategies (:func:`shapes_for`, :func:`params_for`) draw valid shapes and hyper-parameters from
the class attributes a transform declares (``input_ranks``, ``channel_multiple``, ``min_channels``,
``size_multiple``, ``test_params``); hypothesis is imported only when a strategy is asked for.

Every check raises :class:`AssertionError` whose message starts with
``[plugin] check-name check failed for input shape (...) (dtype, device):`` and gives the largest
error next to the tolerance.
"""

from __future__ import annotations

from flowkit.testing.checks import (
    CHECKS,
    MAX_EVENT_SIZE,
    check_context,
    check_dtype_device,
    check_gradients,
    check_logdet,
    check_output_contract,
    check_pickle,
    check_round_trip,
    check_state_dict,
    perturb_parameters,
)
from flowkit.testing.runner import (
    CheckResult,
    check_plugin,
    check_transform,
    run_checks,
    supports_conditional,
)
from flowkit.testing.strategies import example_params, example_shapes, params_for, shapes_for

__all__ = [
    "CHECKS",
    "MAX_EVENT_SIZE",
    "CheckResult",
    "check_context",
    "check_dtype_device",
    "check_gradients",
    "check_logdet",
    "check_output_contract",
    "check_pickle",
    "check_plugin",
    "check_round_trip",
    "check_state_dict",
    "check_transform",
    "example_params",
    "example_shapes",
    "params_for",
    "perturb_parameters",
    "run_checks",
    "shapes_for",
    "supports_conditional",
]
