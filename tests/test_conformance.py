"""Every registered transform — built-in or installed by a third party — passes flowkit.testing.

The plugin names are read from the registry when this module is imported, so installing a
package that declares a ``flowkit.transforms`` entry point adds it to this suite automatically.
For each transform:

* a hypothesis-driven test draws a valid shape, hyper-parameters from ``test_params``, a seed, an
  input scale and (when the plugin takes ``conditional``) whether to condition on labels;
* a deterministic test runs its ``example_shapes`` with its ``example_params``;
* a deterministic conditional test does the same with ``conditional=True`` and 3 classes, for
  plugins whose signature has ``conditional`` and ``num_classes`` parameters;
* for plugins whose signature has a ``context_features`` parameter (a real-valued context), a
  hypothesis-driven test draws the context width ``k`` (1..4) and the ``(batch, k)`` float context
  as well, and a deterministic test runs one example shape per rank with ``k = 2``: the same
  checks with the context passed through, plus context dependence and a ``ShapeError`` for a
  malformed context.

Every registered elementwise map (``flowkit.elementwise``, third-party ones included) is checked
on its own against autograd, and through the registered ``coupling`` and ``autoregressive``
transforms with every check above (:func:`flowkit.testing.check_elementwise`), with its
``example_params``; a hypothesis-driven test draws its parameters, inputs and seed for the
map-level checks.

The hypothesis profile comes from ``$FLOWKIT_HYPOTHESIS_PROFILE`` (``ci`` by default, see
``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowkit.errors import FlowkitError
from flowkit.registry import elementwise, transforms
from flowkit.testing import (
    CONTEXT_FEATURES,
    MAX_EVENT_SIZE,
    check_elementwise,
    check_map,
    check_plugin,
    context_features_for,
    contexts,
    example_params,
    example_shapes,
    params_for,
    shapes_for,
    supports_conditional,
    supports_context,
)

NUM_CLASSES = 3
BATCH_SIZE = 3
NAMES = transforms.names()
MAP_NAMES = elementwise.names()


def _names_where(supports: Callable[[Any], bool]) -> list[str]:
    """The registered transforms whose factory satisfies ``supports`` (read from the registry)."""
    names = []
    for name in transforms.names():
        try:
            factory = transforms.get(name)
        except FlowkitError:  # fails to load: the other tests report it for this plugin
            continue
        if supports(factory):
            names.append(name)
    return names


CONDITIONAL_NAMES = _names_where(supports_conditional)
CONTEXT_NAMES = _names_where(supports_context)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_transform_conforms_on_drawn_inputs(name: str, data: st.DataObject) -> None:
    factory = transforms.get(name)
    shape = data.draw(shapes_for(factory), label="event_shape")
    params = data.draw(params_for(factory), label="params")
    if name in CONDITIONAL_NAMES and data.draw(st.booleans(), label="conditional"):
        params = {**params, "conditional": True}
    seed = data.draw(st.integers(0, 2**16), label="seed")
    scale = data.draw(st.floats(0.1, 3.0), label="input_scale")
    check_plugin(
        name,
        shape,
        params,
        seed=seed,
        input_scale=scale,
        num_classes=NUM_CLASSES if params.get("conditional") else None,
    )


@pytest.mark.parametrize("name", NAMES)
def test_transform_conforms_on_example_shapes(name: str) -> None:
    factory = transforms.get(name)
    params = example_params(factory)
    for shape in example_shapes(factory):
        check_plugin(name, shape, params, num_classes=NUM_CLASSES if params.get("conditional") else None)


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_conditional_transform_conforms(name: str) -> None:
    factory = transforms.get(name)
    params = {**example_params(factory), "conditional": True}
    for shape in _first_shape_per_rank(factory):
        check_plugin(name, shape, params, num_classes=NUM_CLASSES, seed=1)


def _first_shape_per_rank(factory: Any) -> list[tuple[int, ...]]:
    shapes = example_shapes(factory)
    return [next(s for s in shapes if len(s) == rank) for rank in sorted({len(s) for s in shapes})]


def _context_shapes(factory: Any) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes for the context tests: at most half of ``MAX_EVENT_SIZE`` scalars where possible.

    The context's path through a transform does not depend on the event size, the unconditional
    tests cover the larger shapes, and the Jacobian (and the sequential inverse of an
    autoregressive flow) costs O(D²): this keeps the context tests to a fraction of the suite.
    """
    try:
        return shapes_for(factory, max_size=MAX_EVENT_SIZE // 2)
    except ValueError:  # no valid shape that small: use the full range
        return shapes_for(factory)


@pytest.mark.parametrize("name", CONTEXT_NAMES)
@given(data=st.data())
def test_context_transform_conforms_on_drawn_inputs(name: str, data: st.DataObject) -> None:
    factory = transforms.get(name)
    shape = data.draw(_context_shapes(factory), label="event_shape")
    params = data.draw(params_for(factory), label="params")
    k = data.draw(context_features_for(), label="context_features")
    context = data.draw(contexts(BATCH_SIZE, k), label="context")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    scale = data.draw(st.floats(0.1, 3.0), label="input_scale")
    check_plugin(
        name,
        shape,
        params,
        context_features=k,
        context=context,
        batch_size=BATCH_SIZE,
        seed=seed,
        input_scale=scale,
    )


@pytest.mark.parametrize("name", CONTEXT_NAMES)
def test_context_transform_conforms_on_example_shapes(name: str) -> None:
    factory = transforms.get(name)
    for shape in _first_shape_per_rank(factory):
        check_plugin(name, shape, example_params(factory), context_features=CONTEXT_FEATURES, seed=2)


def test_only_transforms_declaring_context_features_are_checked_with_a_context() -> None:
    from flowkit.transform import Shape, Transform

    class Plain(Transform):
        """Takes labels (``conditional``, ``num_classes``) but no real-valued context."""

        def __init__(
            self, event_shape: Shape, *, num_classes: int | None = None, conditional: bool = False
        ) -> None:
            super().__init__(event_shape)

    class Vector(Plain):
        """Declares ``context_features``."""

        def __init__(self, event_shape: Shape, *, context_features: int | None = None) -> None:
            super().__init__(event_shape)

    transforms.register("conformance-plain-toy", Plain)
    transforms.register("conformance-vector-toy", Vector)
    try:
        with_context = _names_where(supports_context)
        with_labels = _names_where(supports_conditional)
    finally:
        transforms.unregister("conformance-plain-toy")
        transforms.unregister("conformance-vector-toy")
    assert "conformance-vector-toy" in with_context
    assert "conformance-plain-toy" not in with_context
    assert "conformance-plain-toy" in with_labels and "conformance-vector-toy" not in with_labels
    assert set(with_context) == {*CONTEXT_NAMES, "conformance-vector-toy"}


@pytest.mark.parametrize("name", MAP_NAMES)
def test_elementwise_map_conforms_in_a_coupling_and_an_autoregressive_flow(name: str) -> None:
    check_elementwise(name, example_params(elementwise.get(name)))


@pytest.mark.parametrize("name", MAP_NAMES)
@given(data=st.data())
def test_elementwise_map_conforms_on_drawn_inputs(name: str, data: st.DataObject) -> None:
    params = data.draw(params_for(elementwise.get(name)), label="params")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    scale = data.draw(st.floats(0.1, 3.0), label="input_scale")
    check_map(name, params, seed=seed, input_scale=scale)
