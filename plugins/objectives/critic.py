"""The latent critic of the adversarial-latent objective: a spectrally normalised MLP.

It scores the ``k`` selected latent dimensions of an encoding (or of a prior sample) with one
real number. Architecture, as in the GRN reference code (Schirrmeister et al. 2018, "Training
Generative Reversible Networks", latent adversary of the CelebA model)::

    Linear(k → h1) → ConcatReLU (2·h1) → Linear(2·h1 → h2) → ReLU → Linear(h2 → 1)

with every ``Linear`` spectrally normalised (Miyato et al. 2018, "Spectral Normalization for
Generative Adversarial Networks", §2.1, eq. 8: ``W / σ(W)`` with ``σ`` estimated by one power
iteration per forward pass in training mode).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from flowkit.errors import ConfigError, ShapeError


class ConcatReLU(nn.Module):
    """``h ↦ concat[relu(h), −relu(−h)]`` along the last dimension (doubles the width).

    Keeps the positive and the negative part of every unit in separate features, so no
    information is lost at the non-linearity (Shang et al. 2016, "Understanding and Improving
    Convolutional Neural Networks via Concatenated Rectified Linear Units", §3, "CReLU"; the
    reference code negates the second half).
    """

    def forward(self, h: Tensor) -> Tensor:
        return torch.cat([torch.relu(h), -torch.relu(-h)], dim=-1)


def _sn_linear(n_in: int, n_out: int) -> nn.Linear:
    linear = nn.Linear(n_in, n_out)
    spectral_norm(linear, n_power_iterations=1)  # parametrizes `linear` in place and returns it as Module
    return linear


class LatentCritic(nn.Module):
    """Spectrally normalised MLP critic ``D: R^k → R`` on the selected latent dimensions.

    ``D(u) = W₃ relu(W₂ CReLU(W₁ u + b₁) + b₂) + b₃`` with each ``W_i`` divided by its spectral
    norm (Miyato et al. 2018, "Spectral Normalization for GANs", §2.1), so ``D`` is roughly
    1-Lipschitz. Input ``(B, k)``, output ``(B,)``.
    """

    def __init__(self, num_inputs: int, hidden: tuple[int, int] = (200, 400)) -> None:
        super().__init__()
        h1, h2 = (int(h) for h in hidden)
        if num_inputs < 1 or h1 < 1 or h2 < 1:
            raise ConfigError(
                f"the latent critic needs positive sizes, got k={num_inputs} inputs and hidden "
                f"widths {tuple(hidden)}; set [objective] critic_hidden to two positive integers"
            )
        self.num_inputs = int(num_inputs)
        self.net = nn.Sequential(
            _sn_linear(self.num_inputs, h1),
            ConcatReLU(),
            _sn_linear(2 * h1, h2),
            nn.ReLU(),
            _sn_linear(h2, 1),
        )

    def forward(self, u: Tensor) -> Tensor:
        if u.dim() != 2 or u.shape[1] != self.num_inputs:
            raise ShapeError(
                f"the latent critic takes (batch, {self.num_inputs}) selected dims, got {tuple(u.shape)}"
            )
        return self.net(u).squeeze(-1)
