"""``train.compile``: the training forward pass compiled with ``torch.compile``.

:class:`CompiledTraining` wraps a transform so that its forward pass in training — gradients
enabled, training mode — runs through ``torch.compile`` (TorchDynamo captures the Python code
into graphs, TorchInductor generates fused kernels for them: C++/OpenMP on CPU, Triton on CUDA;
Ansel et al. 2024, "PyTorch 2", ASPLOS). Everything else runs the transform as it is: evaluation,
sampling and ``inverse`` (which see other batch sizes and no autograd, and would each trigger a
compilation of their own), and the data-dependent initialisation of blocks such as actnorm, which
runs once before the first step. The compiled function computes the same values as the eager one
up to round-off (Inductor may reorder floating-point reductions).

Compilation happens on the first training step and takes tens of seconds on a CPU (needs a C++
compiler there; :func:`require_cpu_compiler` checks for it before training); a changed input
shape compiles again. What it buys depends on the model: on a 2-core CPU, 5–9% off a Real NVP
training step and 13–14% off Glow's (``benchmarks/compile_gain.py``; docs/transforms.md,
"Compiling"). A block that reads a tensor as a Python value breaks the captured graph and loses
most of the gain (actnorm keeps a Python copy of its ``initialized`` flag for this reason). It
cannot be combined with ``train.invertible_backprop``, whose custom backward pass Dynamo does not
trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowkit.errors import ConfigError
from flowkit.execution.wrapper import HasTransform, TransparentWrapper
from flowkit.transform import Transform

__all__ = ["CompiledTraining", "enable_compile", "require_cpu_compiler"]


class CompiledTraining(TransparentWrapper):
    """``transform`` with its training forward pass compiled by ``torch.compile``.

    Computes what ``transform`` computes (up to floating-point reordering); its ``state_dict``
    keys are ``transform``'s, so checkpoints load with or without the wrapper. ``mode`` and
    ``backend`` are passed to ``torch.compile`` (``None``: its defaults, Inductor). Shapes are
    compiled statically (``dynamic=False``): training batches all have one shape. Forward hooks
    registered on ``transform`` itself do not run on the compiled path (those of its submodules
    do).
    """

    def __init__(
        self, transform: Transform, mode: str | None = None, backend: str | Callable[..., Any] = "inductor"
    ) -> None:
        super().__init__(transform.base if isinstance(transform, CompiledTraining) else transform)
        self.mode = mode
        self._backend = backend
        # a plain attribute (not a submodule), so it adds no state_dict entries; made on first use
        # and never copied or pickled (a copy compiles its own ``base``)
        self._compiled: Callable[..., tuple[Tensor, Tensor]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None
        return state

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(t(x), log|det J_t(x)|)``: compiled in training with gradients, eager otherwise."""
        if self._ordinary():
            return self.base(x, context)
        self.check_input(x)
        if self._compiled is None:
            self._compiled = torch.compile(
                self.base.forward, mode=self.mode, backend=self._backend, dynamic=False
            )
        return self._compiled(x, context)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}"


def require_cpu_compiler() -> None:
    """Raise :class:`ConfigError` when Inductor finds no C++ compiler (it needs one for CPU code).

    Asked before training starts, so that a missing compiler is reported as a setting to change,
    not as a compilation failure deep inside the first step. Inductor's own search is used
    (``$CXX``/``g++``); if that internal API is unavailable, nothing is checked.
    """
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.cpp_builder import cpp_compiler_search
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:
        return
    cxx = inductor_config.cpp.cxx
    search = tuple(cxx) if isinstance(cxx, (list, tuple)) else (cxx,)
    try:
        cpp_compiler_search(search)
    except InvalidCxxCompiler:
        names = ", ".join(str(c) for c in search if c) or "g++"
        raise ConfigError(
            f"train.compile on a CPU needs a C++ compiler for torch.compile's generated code, and "
            f"none was found (looked for: {names}). Install one (e.g. `apt install g++`) or name "
            f"it in $CXX, or set train.compile=false."
        ) from None


def enable_compile(
    model: HasTransform,
    log: Callable[[str], None] = print,
    mode: str | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Wrap ``model.transform`` in :class:`CompiledTraining` (``[train] compile = true``).

    Parameters, their order and the ``state_dict`` keys are unchanged, so the optimiser and
    checkpoints are unaffected; calling it twice is harmless. On a CPU ``device`` (the default)
    a missing C++ compiler is a :class:`ConfigError` here (:func:`require_cpu_compiler`).
    """
    if device is None or torch.device(device).type == "cpu":
        require_cpu_compiler()
    if not isinstance(model.transform, CompiledTraining):
        model.transform = CompiledTraining(model.transform, mode=mode)
    log(
        "torch.compile: the training forward pass is compiled on the first step (tens of seconds "
        "on a CPU); evaluation and sampling run eagerly"
    )
