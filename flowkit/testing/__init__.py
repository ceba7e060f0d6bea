"""Conformance checks every transform plugin must pass (public API for plugin authors).

A transform ``f`` is usable in a flow only if it is invertible and reports the right
log-determinant of its Jacobian, ``log p_X(x) = log p_Y(f(x)) + log|det J_f(x)|`` (Dinh et al.
2015, "NICE: Non-linear Independent Components Estimation", eq. 1). The checks here test exactly
that, plus what makes a module a good citizen of flowkit (state survives ``state_dict``, dtype and
device follow the input, gradients reach every parameter, the module pickles), and that sampling
stays finite: the inverse of N(0, I) latents through a copy with more parameter noise
(:func:`check_prior_inverse`, ``prior-inverse``). A plugin author
runs them in their own test-suite::

    from flowkit.testing import check_transform

    def test_my_flow() -> None:
        check_transform(MyFlow, (6,), {"hidden": 8})
        check_transform(MyFlow, (2, 4, 4), {"hidden": 8, "conditional": True}, num_classes=3)
        check_transform(MyFlow, (6,), {"hidden": 8}, context_features=2)  # a (B, 2) float context

or from the command line with ``flowkit check NAME`` (built on :func:`run_checks`). A transform
whose signature takes ``context_features`` (:func:`supports_context`) is also checked with a
real-valued context: the same checks with the context passed through (the log-det Jacobian is
taken with respect to ``x``, the context held fixed), plus ``context`` (the outputs change with the
context) and ``context-shape`` (a missing or malformed context raises
:class:`~flowkit.errors.ShapeError`). Hypothesis strategies (:func:`shapes_for`,
:func:`params_for`, :func:`context_features_for`, :func:`contexts`) draw valid shapes,
hyper-parameters and contexts from the class attributes a transform declares (``input_ranks``,
``channel_multiple``, ``min_channels``, ``size_multiple``, ``test_params``); hypothesis is imported
only when a strategy is asked for.

An elementwise map of couplings and autoregressive layers (:mod:`flowkit.elementwise`) is
checked with :func:`check_elementwise`: on its own against autograd (:func:`check_map`), then
through the registered ``coupling`` and ``autoregressive`` transforms with every check above::

    from flowkit.testing import check_elementwise

    def test_my_map() -> None:
        check_elementwise(MyMap, {"bound": 3.0})   # or the registered name, or an instance

Every check raises :class:`AssertionError` whose message starts with
``[plugin] check-name check failed for input shape (...) (dtype, device):`` and gives the largest
error next to the tolerance.
"""

from __future__ import annotations

from flowkit.testing.checks import (
    CHECKS,
    CONTEXT_FEATURES,
    MAX_EVENT_SIZE,
    check_context,
    check_context_shape,
    check_dtype_device,
    check_gradients,
    check_logdet,
    check_output_contract,
    check_pickle,
    check_prior_inverse,
    check_round_trip,
    check_state_dict,
    perturb_parameters,
)
from flowkit.testing.elementwise import check_elementwise, check_map
from flowkit.testing.runner import (
    CheckResult,
    check_plugin,
    check_transform,
    run_checks,
    supports_conditional,
    supports_context,
)
from flowkit.testing.strategies import (
    MAX_CONTEXT_FEATURES,
    context_features_for,
    contexts,
    example_params,
    example_shapes,
    params_for,
    shapes_for,
)

__all__ = [
    "CHECKS",
    "CONTEXT_FEATURES",
    "MAX_CONTEXT_FEATURES",
    "MAX_EVENT_SIZE",
    "CheckResult",
    "check_context",
    "check_context_shape",
    "check_dtype_device",
    "check_elementwise",
    "check_gradients",
    "check_logdet",
    "check_map",
    "check_output_contract",
    "check_pickle",
    "check_plugin",
    "check_prior_inverse",
    "check_round_trip",
    "check_state_dict",
    "check_transform",
    "context_features_for",
    "contexts",
    "example_params",
    "example_shapes",
    "params_for",
    "perturb_parameters",
    "run_checks",
    "shapes_for",
    "supports_conditional",
    "supports_context",
]
