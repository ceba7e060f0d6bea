"""Deprecated: moved to :mod:`flowkit.execution.onednn_conv` (removed in flowkit 0.4).

``import flowkit.conv`` still works for one release and gives the same module object as
``flowkit.execution.onednn_conv``, with a :class:`DeprecationWarning`.
"""

from flowkit.execution import alias_moved_module

alias_moved_module(__name__, "flowkit.execution.onednn_conv")
