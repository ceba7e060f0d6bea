"""The same flow architectures in flowkit, peer libraries and plain PyTorch, behind one interface.

Peer code lives only here (never in ``flowkit/``). Every library module exposes
``build(arch, *, seed=0) -> Adapter``; :func:`build` imports it lazily, so a missing library is
reported (:class:`MissingLibrary`) rather than breaking the others, and an architecture a library
cannot express raises :class:`Unsupported` with the reason. The architectures (:data:`ARCHS`):

* ``realnvp784`` — Real NVP on 784-d vectors: 8 affine couplings on alternating halves, each
  conditioner an MLP 392 → 512 → 512 → 784 (log-scale and shift for the 392 transformed
  features), standard-normal prior, batch 256 (Dinh et al. 2017, "Density estimation using
  Real NVP", §3.3).
* ``glow28`` — multi-scale Glow on 1×28×28: 2 levels × 8 steps of actnorm → invertible 1×1
  convolution → affine coupling, coupling networks conv3×3 → ReLU → conv1×1 → ReLU → conv3×3
  with 128 hidden channels, half of the channels factored out after level 1, batch 64
  (Kingma & Dhariwal 2018, "Glow", §3).
* ``realnvp-moons`` — flowkit's ``realnvp-moons`` preset: 8 affine couplings on the 2-D half split,
  conditioners 1 → 128 → 128 → 2, batch 256.

Each library keeps its own scale parameterisation (flowkit ``scale·tanh``, nflows
``sigmoid(·+2)+1e-3``, FrEIA's soft clamp, ...); the conditioner networks have the same layers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: Every library with an adapter, in table order; ``flowkit`` and ``plain`` are not peers.
LIBRARIES: tuple[str, ...] = ("flowkit", "plain", "nflows", "normflows", "zuko", "freia")
#: The libraries flowkit is compared against (``measure.py`` ratios are to the fastest of them).
PEERS: tuple[str, ...] = ("nflows", "normflows", "zuko", "freia")
#: The import name of each library, to tell "not installed" from "broken adapter".
IMPORT_NAMES = {"nflows": "nflows", "normflows": "normflows", "zuko": "zuko", "freia": "FrEIA"}
INSTALL_HINT = "pip install 'torch-flowkit[bench]'"


@dataclass(frozen=True)
class ArchSpec:
    """One benchmark architecture: its input shape, batch size and layer sizes."""

    name: str
    shape: tuple[int, ...]
    batch_size: int
    layers: int  # couplings (Real NVP) or steps per level (Glow)
    hidden: int  # conditioner width (units or channels)
    levels: int = 1  # Glow's levels
    description: str = ""


ARCHS: dict[str, ArchSpec] = {
    "realnvp784": ArchSpec(
        "realnvp784",
        (784,),
        256,
        layers=8,
        hidden=512,
        description="Real NVP, 784-d, 8 affine couplings, MLP 392-512-512-784",
    ),
    "glow28": ArchSpec(
        "glow28",
        (1, 28, 28),
        64,
        layers=8,
        hidden=128,
        levels=2,
        description="Glow, 1x28x28, 2 levels x 8 steps, coupling width 128",
    ),
    "realnvp-moons": ArchSpec(
        "realnvp-moons",
        (2,),
        256,
        layers=8,
        hidden=128,
        description="Real NVP on two moons, 8 couplings, MLP 1-128-128-2",
    ),
}


class MissingLibrary(RuntimeError):
    """The peer library is not installed."""


class Unsupported(RuntimeError):
    """The library cannot express this architecture (the message says why)."""


class Adapter:
    """A model of one library behind the common interface: ``log_prob``, ``sample``, parameters.

    ``log_prob(x)`` is the exact log-density per example ``(B,)`` of inputs ``(B, *shape)``;
    ``sample(n)`` returns ``(n, *shape)``. ``note`` says how the library's version differs from
    the reference architecture, if it does. ``make_optimizer(params, lr)`` is the Adam its users
    train with: ``torch.optim.Adam`` (the peers' documented loops) unless the library's own
    training code chooses otherwise (flowkit's trainer: :func:`flowkit.optim.build_optimizer`).
    """

    def __init__(
        self,
        library: str,
        arch: str,
        module: nn.Module,
        log_prob: Callable[[Tensor], Tensor],
        sample: Callable[[int], Tensor],
        note: str = "",
        make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer] | None = None,
    ) -> None:
        self.library = library
        self.arch = arch
        self.module = module
        self._log_prob = log_prob
        self._sample = sample
        self.note = note
        self._make_optimizer = make_optimizer

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Adam over the trainable parameters, as this library's users get it."""
        params = list(self.parameters())
        if self._make_optimizer is not None:
            return self._make_optimizer(params, lr)
        return torch.optim.Adam(params, lr=lr)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` per example."""
        return self._log_prob(x)

    def sample(self, n: int) -> Tensor:
        """``n`` samples of the input's shape."""
        return self._sample(n)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (``requires_grad``)."""
        return (p for p in self.module.parameters() if p.requires_grad)

    @property
    def num_parameters(self) -> int:
        """How many trainable scalars the model has."""
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True) -> Adapter:
        """Put the underlying module in training (or evaluation) mode."""
        self.module.train(mode)
        return self


def build(library: str, arch: str, *, seed: int = 0) -> Adapter:
    """Build ``arch`` in ``library`` with the torch seed ``seed``.

    Raises :class:`MissingLibrary` when the library is not installed, :class:`Unsupported` when
    it cannot express the architecture and ``KeyError`` for unknown names.
    """
    if library not in LIBRARIES:
        raise KeyError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    if library in IMPORT_NAMES:
        try:
            importlib.import_module(IMPORT_NAMES[library])
        except ImportError as exc:
            raise MissingLibrary(f"{library} not installed ({INSTALL_HINT})") from exc
    module = importlib.import_module(f"{__name__}.{library}_models")
    torch.manual_seed(seed)
    return module.build(arch, seed=seed)


# -- shared pieces -------------------------------------------------------------------------------
def mlp(n_in: int, n_out: int, hidden: int, zero_last: bool = True) -> nn.Sequential:
    """The reference conditioner ``n_in → hidden → hidden → n_out`` with ReLUs."""
    net = nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


def glow_net(n_in: int, n_out: int, hidden: int, zero_last: bool = True) -> nn.Sequential:
    """The reference Glow coupling network conv3×3 → ReLU → conv1×1 → ReLU → conv3×3."""
    net = nn.Sequential(
        nn.Conv2d(n_in, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        nn.Conv2d(hidden, n_out, 3, padding=1),
    )
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per example of a batch of any shape."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * flat.pow(2).sum(1) - 0.5 * flat.shape[1] * torch.log(
        torch.tensor(2.0 * torch.pi, dtype=z.dtype, device=z.device)
    )


def unsupported(library: str, arch: str, why: str) -> Unsupported:
    """An :class:`Unsupported` error naming the library, the architecture and the reason."""
    return Unsupported(f"{library} cannot express {arch}: {why}")
