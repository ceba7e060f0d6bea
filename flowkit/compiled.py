"""Deprecated: moved to :mod:`flowkit.execution.compiled` (removed in flowkit 0.4).

``import flowkit.compiled`` still works for one release and gives the same module object as
``flowkit.execution.compiled``, with a :class:`DeprecationWarning`.
"""

from flowkit.execution import alias_moved_module

alias_moved_module(__name__, "flowkit.execution.compiled")
