"""Plain-PyTorch references: flowkit's architectures written out by hand, no framework.

The same maths as flowkit's models (so the same parameter counts), in the most direct code: the
speed a user writing the model themselves would get, and a floor for the framework's overhead.

* Real NVP: ``y_b = x_b ⊙ exp(s) + t`` with ``s = scale ⊙ tanh(raw)``, ``(raw, t)`` from one MLP
  on ``x_a``, halves alternating (Dinh et al. 2017, "Real NVP", eq. (6)-(9)).
* Glow: squeeze → K × (actnorm → LU 1×1 convolution → coupling ``y_b = (x_b + t) ⊙ sigmoid(r + 2)``)
  → learned split prior on the factored-out half (Kingma & Dhariwal 2018, "Glow", §3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.peers import ARCHS, Adapter, glow_net, mlp, standard_normal_log_prob


class PlainRealNVP(nn.Module):
    """Real NVP on vectors with alternating halves and bounded log-scales ``scale ⊙ tanh``."""

    def __init__(self, features: int, layers: int, hidden: int) -> None:
        super().__init__()
        self.features = features
        self.first = math.ceil(features / 2)
        sizes = [(self.first, features - self.first), (features - self.first, self.first)]
        self.nets = nn.ModuleList(mlp(sizes[k % 2][0], 2 * sizes[k % 2][1], hidden) for k in range(layers))
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(sizes[k % 2][1])) for k in range(layers))

    def _halves(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        a, b = x[:, : self.first], x[:, self.first :]
        return (a, b) if k % 2 == 0 else (b, a)

    def _join(self, a: Tensor, b: Tensor, k: int) -> Tensor:
        return torch.cat([a, b] if k % 2 == 0 else [b, a], dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(f(x); 0, I) + Σ log|det|``."""
        logdet = x.new_zeros(x.shape[0])
        for k, (net, scale) in enumerate(zip(self.nets, self.scales)):
            a, b = self._halves(x, k)
            raw, t = net(a).chunk(2, dim=1)
            s = scale * torch.tanh(raw)
            x = self._join(a, b * torch.exp(s) + t, k)
            logdet = logdet + s.sum(1)
        return standard_normal_log_prob(x) + logdet

    def sample(self, n: int) -> Tensor:
        """Invert the couplings from ``z ~ N(0, I)``."""
        ref = self.scales[0]
        x = torch.randn(n, self.features, dtype=ref.dtype, device=ref.device)
        for k in reversed(range(len(self.nets))):
            a, b = self._halves(x, k)
            raw, t = self.nets[k](a).chunk(2, dim=1)
            s = self.scales[k] * torch.tanh(raw)
            x = self._join(a, (b - t) * torch.exp(-s), k)
        return x


def squeeze(x: Tensor) -> Tensor:
    """``(B, C, H, W) → (B, 4C, H/2, W/2)``, channel ``4c + 2i + j`` = pixel ``(2h + i, 2w + j)``."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """The inverse of :func:`squeeze`."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


class ZeroConv(nn.Module):
    """Zero-initialised 3×3 convolution with the output gain ``exp(3·logs)``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(n_out, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``conv(x) ⊙ exp(3·logs)``."""
        return self.conv(x) * torch.exp(3.0 * self.logs)


class GlowStep(nn.Module):
    """actnorm → LU 1×1 convolution → affine coupling with sigmoid scale, on ``C`` channels."""

    def __init__(self, channels: int, hidden: int, seed: int) -> None:
        super().__init__()
        c = channels
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        gen = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        perm, lower, upper = torch.linalg.lu(q)
        self.register_buffer("perm", perm.float())
        self.register_buffer("sign", torch.sign(torch.diagonal(upper)).float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_abs_diag = nn.Parameter(torch.diagonal(upper).abs().log().float())
        self.split = c // 2
        body = glow_net(self.split, hidden, hidden, zero_last=False)[:4]  # conv, ReLU, conv, ReLU
        self.net = nn.Sequential(*body, ZeroConv(hidden, 2 * (c - self.split)))

    def _weight(self) -> Tensor:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_abs_diag))
        return self.perm @ lower @ upper

    def _coupling_params(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x_a)
        return out[:, 0::2], F.logsigmoid(out[:, 1::2] + 2.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data → latent direction, with the log-determinant."""
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                std = x.std(dim=(0, 2, 3), correction=0, keepdim=True)
                self.log_scale.copy_(-torch.log(std + 1e-6))
                self.initialized.fill_(True)
        pixels = x.shape[2] * x.shape[3]
        x = (x + self.bias) * torch.exp(self.log_scale)
        c = x.shape[1]
        x = F.conv2d(x, self._weight().view(c, c, 1, 1))
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, log_s = self._coupling_params(x_a)
        y_b = (x_b + shift) * torch.exp(log_s)
        logdet = log_s.flatten(1).sum(1) + pixels * (self.log_scale.sum() + self.log_abs_diag.sum())
        return torch.cat([x_a, y_b], dim=1), logdet

    def inverse(self, y: Tensor) -> Tensor:
        """Latent → data direction."""
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        shift, log_s = self._coupling_params(y_a)
        x = torch.cat([y_a, y_b * torch.exp(-log_s) - shift], dim=1)
        c = x.shape[1]
        x = F.conv2d(x, torch.linalg.inv(self._weight()).view(c, c, 1, 1))
        return x * torch.exp(-self.log_scale) - self.bias


class PlainGlow(nn.Module):
    """Multi-scale Glow with learned split priors, as flowkit's ``glow``."""

    def __init__(self, shape: tuple[int, ...], levels: int, steps: int, hidden: int) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.level_shapes: list[tuple[int, int, int]] = []
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.level_shapes.append((c, h, w))
            self.levels.append(
                nn.ModuleList(GlowStep(c, hidden, seed=level * steps + k) for k in range(steps))
            )
            if level < levels - 1:
                kept = c - c // 2
                self.priors.append(ZeroConv(kept, 2 * (c // 2)))
                c = kept

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(z; 0, I) + Σ log|det|`` with the factored-out halves' learned priors."""
        logdet = x.new_zeros(x.shape[0])
        parts = []
        h = x
        for level, steps in enumerate(self.levels):
            h = squeeze(h)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
            if level < len(self.levels) - 1:
                kept = h.shape[1] - h.shape[1] // 2
                h, z = h[:, :kept], h[:, kept:]
                out = self.priors[level](h)
                mean, log_std = out[:, 0::2], out[:, 1::2]
                parts.append(((z - mean) * torch.exp(-log_std)).flatten(1))
                logdet = logdet - log_std.flatten(1).sum(1)
        parts.append(h.flatten(1))
        return standard_normal_log_prob(torch.cat(parts, dim=1)) + logdet

    def sample(self, n: int) -> Tensor:
        """Decode ``z ~ N(0, I)`` level by level, the last level first."""
        ref = self.priors[0].logs if len(self.priors) else next(self.parameters())
        c, hh, ww = self.level_shapes[-1]
        h = torch.randn(n, c, hh, ww, dtype=ref.dtype, device=ref.device)
        for level in reversed(range(len(self.levels))):
            if level < len(self.levels) - 1:
                c, hh, ww = self.level_shapes[level]
                out = self.priors[level](h)
                mean, log_std = out[:, 0::2], out[:, 1::2]
                eps = torch.randn(n, c // 2, hh, ww, dtype=ref.dtype, device=ref.device)
                h = torch.cat([h, mean + eps * torch.exp(log_std)], dim=1)
            for step in reversed(self.levels[level]):
                h = step.inverse(h)
            h = unsqueeze(h)
        return h


def build(arch: str, *, seed: int = 0) -> Adapter:
    """The hand-written ``arch`` (every architecture is supported)."""
    spec = ARCHS[arch]
    model: PlainRealNVP | PlainGlow
    if arch == "glow28":
        model = PlainGlow(spec.shape, spec.levels, spec.layers, spec.hidden)
    else:
        model = PlainRealNVP(spec.shape[0], spec.layers, spec.hidden)
    return Adapter("plain", arch, model, model.log_prob, model.sample)
