"""A griffe extension for the API reference: flowkit's docstrings use reStructuredText roles.

The docstrings are written for ``help()`` and Sphinx-style readers (``:class:`Flow```,
``:func:`~flowkit.config.load_config```, ``Example::``). mkdocstrings renders docstrings as
Markdown, where a role would print literally. This extension rewrites each role to a code span
of the name it refers to (``~`` keeps the last component, as in Sphinx) and a trailing ``::`` to
``:``, so the indented block after it stays a code block. No cross-reference is created, so a
name that is not documented can never break the strict build.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const|term|ref):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)


def _name(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :ref:`text <target>` -> text
        target = target.split("<", 1)[0].strip()
    elif tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def rst_to_markdown(text: str) -> str:
    """Roles to code spans, ``Example::`` to ``Example:``; everything else unchanged."""
    text = _ROLE.sub(_name, text)
    return _LITERAL.sub(r"\1:", text)


try:  # griffe comes with the docs extra; the tests use rst_to_markdown without it
    import griffe
except ImportError:  # pragma: no cover - only without the docs extra
    pass
else:

    class RstRoles(griffe.Extension):
        """Rewrite reStructuredText roles in every docstring that griffe loads."""

        def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
            docstring = getattr(obj, "docstring", None)
            if docstring is not None:
                docstring.value = rst_to_markdown(docstring.value)
