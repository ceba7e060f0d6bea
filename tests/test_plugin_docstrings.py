"""Every built-in plugin's docstring follows the house style, and its example runs.

The plugins are read from the registry, so a new built-in plugin (one whose entry point lives in
``flowkit.plugins``) is checked without touching this file. Its docstring, after the prose that
states the formula, has three sections, in this order, each a line of its own::

    References:

    * Authors year, "Title", venue.

    Arguments:

    * ``name`` (TYPE, default DEFAULT): what it does.
    * ``event_shape`` (injected): what flowkit passes.

    Example::

        >>> ...

``TYPE`` and ``DEFAULT`` are exactly what :func:`flowkit.params.describe_parameters` (and
``flowkit list --params``) print for the parameter, declared range included (``int ≥ 1``,
``float in (0, 1)``, ``'mlp' | 'conv' | None``), so the text cannot drift from the declaration;
parameters flowkit injects say ``(injected)``. The ``Example`` block is a doctest, run here in
the plugin module's globals with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``.
"""

from __future__ import annotations

import doctest
import inspect
import io
import re
import sys
from collections.abc import Callable
from typing import Annotated, Any

import pytest
import torch

from flowkit.params import INJECTED, Range, describe_parameters
from flowkit.registry import KINDS, registry

BUILTIN_PREFIX = "flowkit.plugins."
SECTIONS = ("References:", "Arguments:", "Example::")
#: Plugin kinds not (yet) held to the skeleton, with the reason; every other kind is checked.
PENDING_KINDS: dict[str, str] = {}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
YEAR = re.compile(r"\b(1[89]|20)\d\d\b")


def builtin_plugins() -> list[tuple[str, str]]:
    """``(kind, name)`` of every registered plugin that flowkit itself ships."""
    return [
        (kind, entry.name)
        for kind in KINDS
        if kind not in PENDING_KINDS
        for entry in registry(kind).entries(include_blocked=True)
        if entry.target.startswith(BUILTIN_PREFIX)
    ]


PLUGINS = builtin_plugins()


def _load(kind: str, name: str) -> Any:
    return registry(kind).entry(name).load()


def split_sections(doc: str) -> dict[str, str]:
    """``{"description": ..., "References:": ..., ...}``: the docstring cut at its section lines.

    Raises ``AssertionError`` when a section is missing, repeated or out of order.
    """
    lines = doc.splitlines()
    where = {title: [i for i, line in enumerate(lines) if line.strip() == title] for title in SECTIONS}
    for title, found in where.items():
        assert len(found) == 1, f"the section {title!r} appears {len(found)} times (needed: once)"
    starts = [where[title][0] for title in SECTIONS]
    assert starts == sorted(starts), f"the sections must come in the order {', '.join(SECTIONS)}"
    bounds = [*starts, len(lines)]
    parts = {"description": "\n".join(lines[: starts[0]])}
    for title, start, end in zip(SECTIONS, bounds, bounds[1:]):
        parts[title] = "\n".join(lines[start + 1 : end]).strip("\n")
    return parts


def bullets(text: str) -> list[str]:
    """The ``* `` items of a section, each joined into one line with single spaces."""
    items: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("* "):
            items.append([line[2:]])
        elif items and line.strip():
            items[-1].append(line.strip())
    return [" ".join(" ".join(item).split()) for item in items]


def constructor_parameters(obj: Callable[..., Any]) -> list[str]:
    """The names a caller can pass to the plugin (``self``, ``*args`` and ``**kwargs`` aside)."""
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)  # type: ignore[misc]
    return [
        name
        for name, p in sig.parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def docstring_problems(obj: Callable[..., Any]) -> list[str]:
    """What keeps ``obj``'s docstring from the house style (empty: nothing)."""
    doc = inspect.getdoc(obj) or ""
    try:
        parts = split_sections(doc)
    except AssertionError as exc:
        return [str(exc)]
    problems = []
    if not re.search(r"[=~→]", parts["description"]):
        problems.append("the description before 'References:' states no formula (no '=', '~' or '→')")
    refs = bullets(parts["References:"])
    if not refs:
        problems.append("'References:' lists no '* ' item")
    for ref in refs:
        if not (YEAR.search(ref) and re.search(r'"[^"]+"', ref)):
            problems.append(f'reference without a year and a "quoted title": {ref!r}')
    items = {m.group(1): item for item in bullets(parts["Arguments:"]) if (m := re.match(r"``(\w+)``", item))}
    names = constructor_parameters(obj)
    if not names and not parts["Arguments:"].strip():
        problems.append("'Arguments:' is empty (say 'None: ...' when there are no parameters)")
    for extra in sorted(set(items) - set(names)):
        problems.append(f"'Arguments:' lists ``{extra}``, which the constructor does not take")
    declared = {name: (type_s, default) for name, type_s, default in describe_parameters(obj)}
    for name in names:
        if name not in items:
            problems.append(f"'Arguments:' does not list ``{name}``")
            continue
        if name in INJECTED:
            expected = f"``{name}`` (injected)"
        else:
            type_s, default = declared[name]
            expected = (
                f"``{name}`` ({type_s}, {'required' if default == 'required' else 'default ' + default})"
            )
        if not items[name].startswith(expected):
            problems.append(
                f"'Arguments:' has {items[name][: len(expected) + 20]!r}..., expected {expected!r}"
            )
    if not doctest.DocTestParser().get_examples(parts["Example::"]):
        problems.append("'Example::' holds no '>>>' example")
    return problems


def run_example(obj: Callable[..., Any]) -> tuple[int, int, str]:
    """Run the ``Example::`` section of ``obj``'s docstring: ``(attempted, failed, report)``."""
    example = split_sections(inspect.getdoc(obj) or "")["Example::"]
    module = sys.modules[obj.__module__]
    name = f"{obj.__module__}.{obj.__qualname__}"
    test = doctest.DocTestParser().get_doctest(example, dict(vars(module)), name, module.__file__, 0)
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with torch.random.fork_rng(devices=[]):  # the examples seed torch; keep the suite's RNG as it was
        result = runner.run(test, out=report.write, clear_globs=True)
    return result.attempted, result.failed, report.getvalue()


# -- every built-in plugin -------------------------------------------------------------------------
def test_the_registry_has_builtin_plugins_of_every_checked_kind() -> None:
    kinds = {kind for kind, _ in PLUGINS}
    assert kinds == set(KINDS) - set(PENDING_KINDS)
    assert len(PLUGINS) >= 65


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}:{n}" for k, n in PLUGINS])
def test_docstring_has_the_sections(kind: str, name: str) -> None:
    problems = docstring_problems(_load(kind, name))
    assert not problems, f"{kind} plugin '{name}':\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}:{n}" for k, n in PLUGINS])
def test_docstring_example_runs(kind: str, name: str) -> None:
    attempted, failed, report = run_example(_load(kind, name))
    assert attempted and not failed, f"{kind} plugin '{name}': the Example section fails:\n{report}"


# -- the checks catch what they should -------------------------------------------------------------
GOOD = """A toy map.

    Scales its input: ``y = s · x``.

    References:

    * Someone & Other 2001, "A Paper", Some Venue 2001.

    Arguments:

    * ``s`` (float > 0, default 2.0): the scale.

    Example::

        >>> Toy(s=3.0)(2.0)
        6.0
    """


def _toy(doc: str) -> type:
    class Toy:
        def __init__(self, *, s: Annotated[float, Range(0, min_inclusive=False)] = 2.0) -> None:
            self.s = s

        def __call__(self, x: float) -> float:
            return self.s * x

    Toy.__doc__ = doc
    Toy.__module__ = __name__
    globals()["Toy"] = Toy  # the example runs in this module's globals
    return Toy


def test_the_checks_pass_a_good_docstring() -> None:
    toy = _toy(GOOD)
    assert docstring_problems(toy) == []
    assert run_example(toy)[:2] == (1, 0)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    References:\n", "", "'References:' appears 0 times"),
        ("    Example::\n", "    Example:\n", "'Example::' appears 0 times"),
        ("(float > 0, default 2.0)", "(float ≥ 0, default 2.0)", "expected '``s`` (float > 0, default 2.0)'"),
        ("* ``s`` (float > 0, default 2.0): the scale.", "None.", "does not list ``s``"),
        ('"A Paper", Some Venue 2001', "A Paper, Some Venue", "without a year"),
        ("``y = s · x``", "``s`` times ``x``", "states no formula"),
    ],
)
def test_the_checks_catch_a_broken_docstring(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    problems = docstring_problems(_toy(GOOD.replace(old, new)))
    assert any(expected in p for p in problems), problems


def test_a_wrong_example_fails() -> None:
    attempted, failed, report = run_example(_toy(GOOD.replace("        6.0\n", "        7.0\n")))
    assert (attempted, failed) == (1, 1)
    assert "Expected:\n    7.0\nGot:\n    6.0" in report
