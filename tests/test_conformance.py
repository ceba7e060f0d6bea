"""Every registered transform — built-in or installed by a third party — passes flowkit.testing.

The plugin names are read from the registry when this module is imported, so installing a
package that declares a ``flowkit.transforms`` entry point adds it to this suite automatically.
For each transform:

* a hypothesis-driven test draws a valid shape, hyper-parameters from ``test_params``, a seed, an
  input scale and (when the plugin takes ``conditional``) whether to condition on labels;
* a deterministic test runs its ``example_shapes`` with its ``example_params``;
* a deterministic conditional test does the same with ``conditional=True`` and 3 classes, for
  plugins whose signature has a ``conditional`` parameter.

The hypothesis profile comes from ``$FLOWKIT_HYPOTHESIS_PROFILE`` (``ci`` by default, see
``conftest.py``).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowkit.errors import FlowkitError
from flowkit.registry import transforms
from flowkit.testing import (
    check_plugin,
    example_params,
    example_shapes,
    params_for,
    shapes_for,
    supports_conditional,
)

NUM_CLASSES = 3
NAMES = transforms.names()


def _conditional_names() -> list[str]:
    names = []
    for name in NAMES:
        try:
            factory = transforms.get(name)
        except FlowkitError:  # fails to load: the other tests report it for this plugin
            continue
        if supports_conditional(factory):
            names.append(name)
    return names


CONDITIONAL_NAMES = _conditional_names()


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
    check_plugin(name, shape, params, seed=seed, input_scale=scale,
                 num_classes=NUM_CLASSES if params.get("conditional") else None)


@pytest.mark.parametrize("name", NAMES)
def test_transform_conforms_on_example_shapes(name: str) -> None:
    factory = transforms.get(name)
    params = example_params(factory)
    for shape in example_shapes(factory):
        check_plugin(name, shape, params,
                     num_classes=NUM_CLASSES if params.get("conditional") else None)


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_conditional_transform_conforms(name: str) -> None:
    factory = transforms.get(name)
    params = {**example_params(factory), "conditional": True}
    shapes = example_shapes(factory)
    for rank in sorted({len(s) for s in shapes}):
        shape = next(s for s in shapes if len(s) == rank)
        check_plugin(name, shape, params, num_classes=NUM_CLASSES, seed=1)
