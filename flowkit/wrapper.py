"""Deprecated: moved to :mod:`flowkit.execution.wrapper` (removed in flowkit 0.4).

``import flowkit.wrapper`` still works for one release and gives the same module object as
``flowkit.execution.wrapper``, with a :class:`DeprecationWarning`.
"""

from flowkit.execution import alias_moved_module

alias_moved_module(__name__, "flowkit.execution.wrapper")
