"""Deprecated: moved to :mod:`flowkit.execution.invertible_backprop` (removed in flowkit 0.4).

``import flowkit.invertible_backprop`` still works for one release and gives the same module object as
``flowkit.execution.invertible_backprop``, with a :class:`DeprecationWarning`.
"""

from flowkit.execution import alias_moved_module

alias_moved_module(__name__, "flowkit.execution.invertible_backprop")
