"""Reverse-KL variational inference: fit the flow to an unnormalised target density.

The flow ``q`` (prior ``p_Z``, transform ``f``, preprocessing ``g``) is the variational
approximation of ``p(x) = p̃(x) / Z``, where only ``p̃`` is known (``data.target``, e.g. the energy
densities ``energy1``–``energy4``). Samples come from the latent → data direction::

    z ~ p_Z,   x = g⁻¹(f⁻¹(z)),   log q(x) = log p_Z(z) − log|det ∂x/∂z|

and the loss is the variational free energy (Rezende & Mohamed 2015, "Variational Inference with
Normalizing Flows", §3, eq. 15)::

    F(q) = E_q[log q(x) − log p̃(x)] = KL(q‖p) − log Z = −ELBO

estimated on ``n`` = batch-size samples per step with reparameterised gradients (Kingma &
Welling 2014, §2.4). ``F ≥ −log Z``, with equality iff ``q = p``. The dataset's own samples are
not used by the loss (only the size of the trainer's batch is): transforms whose inverse is the
cheap direction (``iaf``, ``planar``) suit this objective.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from flowkit.errors import ConfigError, FlowkitError
from flowkit.metrics import model_dtype
from flowkit.objective import Batch, LossOutput, Objective
from flowkit.params import Range

if TYPE_CHECKING:
    from flowkit.data.base import DataSplits
    from flowkit.model import Flow

_NO_TARGET = (
    "objective 'reverse-kl' needs a dataset with an unnormalised target density (data.target), "
    "but dataset '{name}' has none. Choose a variational target such as --data energy1 (energy1 "
    "… energy4), or train on samples with --objective mle."
)


def sample_with_log_q(model: Flow, n: int) -> tuple[Tensor, Tensor]:
    """``n`` reparameterised samples ``x ~ q`` of the flow and ``log q(x)``, shape ``(n,)``.

    ``z ~ p_Z``, ``x = g⁻¹(f⁻¹(z))`` (transform then preprocessing inverse), and
    ``log q(x) = log p_Z(z) − log|det ∂x/∂z|`` (change of variables; Rezende & Mohamed 2015, §2.1).
    """
    z = model.prior.sample(n)
    w, logdet = model.transform.inverse(z)
    x, logdet_pre = model.preprocess.inverse(w)
    return x, model.prior.log_prob(z) - logdet - logdet_pre


class ReverseKL(Objective):
    """Reverse KL: fit the flow to an unnormalised target p̃ by minimising E_q[log q − log p̃].

    ``L = (1/n) Σ_i [log q(x_i) − β_t log p̃(x_i)]``, ``x_i = g⁻¹(f⁻¹(z_i))``, ``z_i ~ p_Z``, with
    ``n`` the batch size and reparameterised gradients; with ``β = 1`` this is the free energy
    ``KL(q‖p) − log Z`` (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows",
    §3, eq. 15). Needs a dataset with ``target`` (e.g. ``energy1``); the batch's data are ignored.

    ``anneal_steps > 0`` anneals the inverse temperature ``β_t = min(1, 0.01 + t/anneal_steps)``
    on the target (a common remedy against collapsing onto one mode early); logged ``elbo`` and
    ``kl`` always use ``β = 1``. Final metrics on ``eval_samples`` samples: the free energy, the
    ELBO, ``KL(q‖p)`` when the target knows ``log Z`` (``log_normalizer()``), an importance-sampling
    ``log Z`` estimate and the effective sample size of the weights ``p̃/q``.

    References:

    * Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", ICML 2015.

    Arguments:

    * ``anneal_steps`` (int ≥ 0, default 0): steps over which ``β_t`` rises from 0.01 to 1; 0: no annealing.
    * ``eval_samples`` (int ≥ 2, default 20000): samples ``x ~ q`` for the final metrics.
    * ``figure_resolution`` (int ≥ 10, default 200): grid points per axis of the end-of-run density figure.

    Example::

        >>> import torch
        >>> from flowkit import flows
        >>> from flowkit.objective import Batch
        >>> from flowkit.plugins.datasets.energy import energy1
        >>> from flowkit.plugins.objectives.reverse_kl import ReverseKL
        >>> _ = torch.manual_seed(0)
        >>> objective = ReverseKL(anneal_steps=100)
        >>> [objective.beta(step) for step in (0, 50, 200)]  # β_t = min(1, 0.01 + t/100)
        [0.01, 0.51, 1.0]
        >>> objective.bind_data(energy1(n_train=10, n_test=10))  # the target log p̃ = −U₁
        >>> model = flows.build("realnvp", 2, num_layers=2, hidden=8)
        >>> objective.setup(model)
        >>> out = objective.loss(model, Batch(torch.zeros(64, 2)), step=0)  # 64 fresh samples x ~ q
        >>> out.terms["elbo"] == -out.terms["free_energy"]
        True
    """

    #: chosen with --objective reverse-kl: the target is a density of raw points
    config_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "data": {"preprocess": "none", "dequantize": False},
    }

    def __init__(
        self,
        *,
        anneal_steps: Annotated[int, Range(0, note="0: no annealing")] = 0,
        eval_samples: Annotated[int, Range(2)] = 20000,
        figure_resolution: Annotated[int, Range(10)] = 200,
    ) -> None:
        super().__init__()
        self.anneal_steps = int(anneal_steps)
        self.eval_samples = int(eval_samples)
        self.figure_resolution = int(figure_resolution)
        self.target: Any = None
        self.log_z: float | None = None

    # -- set-up --------------------------------------------------------------------------------
    def bind_data(self, data: DataSplits) -> None:
        """Take ``data.target`` (and its ``log_normalizer()`` when it has one)."""
        target = getattr(data, "target", None)
        if target is None or not callable(target):
            raise ConfigError(_NO_TARGET.format(name=data.name))
        self.target = target
        log_normalizer = getattr(target, "log_normalizer", None)
        self.log_z = float(log_normalizer()) if callable(log_normalizer) else None

    def setup(self, model: Flow) -> None:
        """Check that the model can sample with a density and that the target fits its shape."""
        if self.target is None:
            raise ConfigError(
                "objective 'reverse-kl': bind_data(data) must come before setup; "
                "it reads the dataset's target density"
            )
        if model.prior.conditional:
            raise ConfigError(
                f"objective 'reverse-kl' samples from an unconditional prior, but "
                f"'{type(model.prior).__name__}' is class-conditional; use e.g. --prior gaussian"
            )
        if not model.exact_density:
            raise ConfigError(
                "objective 'reverse-kl' needs log q(x), but the transform changes the dimension "
                f"({model.transform.event_shape} → {model.transform.output_shape}); choose a "
                "dimension-preserving transform"
            )
        probe = torch.zeros(2, *model.event_shape, device=model.device, dtype=model_dtype(model))
        with torch.no_grad():
            out = self.target(probe)
        if not isinstance(out, Tensor) or tuple(out.shape) != (2,):
            raise ConfigError(
                f"the dataset's target must map (batch, {', '.join(map(str, model.event_shape))}) "
                f"to log-densities of shape (batch,); for a batch of 2 it returned "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )

    def beta(self, step: int) -> float:
        """Inverse temperature on the target at ``step`` (1 without annealing)."""
        if self.anneal_steps == 0:
            return 1.0
        return min(1.0, 0.01 + step / self.anneal_steps)

    # -- training ------------------------------------------------------------------------------
    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        """``mean(log q(x) − β log p̃(x))`` over ``n = len(batch.x)`` fresh samples ``x ~ q``."""
        if self.target is None:
            raise ConfigError(_NO_TARGET.format(name="(not bound)"))
        x, log_q = sample_with_log_q(model, batch.x.shape[0])
        log_p = self.target(x)
        beta = self.beta(step)
        total = (log_q - beta * log_p).mean()
        free_energy = float((log_q - log_p).detach().mean())
        terms = {
            "loss": float(total.detach()),
            "free_energy": free_energy,
            "elbo": -free_energy,
            "entropy": float(-log_q.detach().mean()),
        }
        if self.log_z is not None:
            terms["kl"] = free_energy + self.log_z
        if self.anneal_steps:
            terms["beta"] = beta
        return LossOutput(total, terms)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def _log_weights(self, model: Flow, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``(log q, log p̃)`` at ``n`` samples of ``q`` (float64, CPU), from a fixed seed."""
        devices = [model.device] if model.device.type == "cuda" else []
        log_q, log_p = [], []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, n, 5000):
                x, lq = sample_with_log_q(model, min(5000, n - start))
                log_q.append(lq.double().cpu())
                log_p.append(self.target(x).double().cpu())
        return torch.cat(log_q), torch.cat(log_p)

    def evaluate(self, model: Flow, data: DataSplits, max_examples: int) -> dict[str, float]:
        """Free energy, ELBO, ``KL(q‖p)`` (if ``log Z`` is known), IS ``log Z`` and ESS share.

        On ``eval_samples`` samples ``x_i ~ q`` with ``d_i = log q(x_i) − log p̃(x_i)``:
        ``free_energy = mean d`` (``= KL(q‖p) − log Z``), ``kl_q_p = free_energy + log Z`` and its
        standard error, ``log_z_importance = log mean e^{−d}`` and ``ess_fraction =
        (Σ w)² / (n Σ w²)`` with ``w = e^{−d}`` (1 when ``q = p``).
        """
        was_training = model.training
        model.eval()
        log_q, log_p = self._log_weights(model, self.eval_samples)
        model.train(was_training)
        d = log_q - log_p
        n = d.numel()
        log_w = -d
        ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / n
        out = {
            "free_energy": float(d.mean()),
            "elbo": float(-d.mean()),
            "free_energy_stderr": float(d.std() / math.sqrt(n)),
            "log_z_importance": float(torch.logsumexp(log_w, 0) - math.log(n)),
            "ess_fraction": float(ess),
            "eval_samples": float(n),
        }
        if self.log_z is not None:
            out["log_normalizer"] = self.log_z
            out["kl_q_p"] = out["free_energy"] + self.log_z
        return out

    # -- figures -------------------------------------------------------------------------------
    def figures(self, model: Flow, data: DataSplits, run_dir: Path) -> list[Path]:
        """``reverse_kl.png`` for 2-D targets: target density, learned density, samples of q."""
        if data.dim != 2 or self.target is None:
            return []
        return [
            plot_reverse_kl(
                model, self.target, data, Path(run_dir) / "reverse_kl.png", self.figure_resolution, self.log_z
            )
        ]


def _window(target: Any, data: DataSplits) -> tuple[np.ndarray, np.ndarray]:
    """The plotting window: the target's ``extent`` if it has one, else the reference samples'."""
    extent = getattr(target, "extent", None)
    if extent is not None:
        (x0, x1), (y0, y1) = extent
        return np.array([x0, y0], dtype=float), np.array([x1, y1], dtype=float)
    ref = data.test.double().numpy()
    lo, hi = np.percentile(ref, 0.5, axis=0), np.percentile(ref, 99.5, axis=0)
    margin = 0.15 * (hi - lo)
    return lo - margin, hi + margin


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around evenly spaced cell centres."""
    half = (centres[1] - centres[0]) / 2
    return np.concatenate([centres - half, centres[-1:] + half])


@torch.no_grad()
def _model_density(
    model: Flow, grid: Tensor, xs: np.ndarray, ys: np.ndarray, samples: Tensor
) -> tuple[np.ndarray, str]:
    """``q`` on the grid by its exact density, or a histogram of samples if ``q`` has no forward."""
    try:
        log_q = torch.cat([model.log_prob(chunk) for chunk in grid.split(10000)])
        return log_q.exp().double().cpu().numpy().reshape(ys.size, xs.size), "model density q"
    except (NotImplementedError, FlowkitError):  # transforms with only an analytic inverse
        s = samples.double().cpu().numpy()
        hist, _, _ = np.histogram2d(s[:, 1], s[:, 0], bins=[_edges(ys), _edges(xs)])
        area = (xs[1] - xs[0]) * (ys[1] - ys[0])
        return hist / (s.shape[0] * area), "histogram of q samples"


@torch.no_grad()
def plot_reverse_kl(
    model: Flow,
    target: Any,
    data: DataSplits,
    path: Path,
    resolution: int = 200,
    log_z: float | None = None,
    n_samples: int = 2000,
) -> Path:
    """Three panels on the same grid: the target density, the flow's density, samples of q.

    The target is normalised by ``log_z`` when given, else numerically on the plotted grid; both
    densities share one colour scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    was_training = model.training
    model.eval()
    dtype = model_dtype(model)
    lo, hi = _window(target, data)
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    gx, gy = np.meshgrid(xs, ys)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=dtype, device=model.device)
    cell_area = float((xs[1] - xs[0]) * (ys[1] - ys[0]))
    log_p = torch.cat([target(chunk) for chunk in grid.split(10000)]).double().cpu()
    if log_z is None:
        log_z = float(torch.logsumexp(log_p, 0)) + math.log(cell_area)
    p = torch.exp(log_p - log_z).reshape(resolution, resolution).numpy()
    samples, _ = sample_with_log_q(model, max(n_samples, 20000))
    q, q_title = _model_density(model, grid, xs, ys, samples)
    model.train(was_training)
    shown = samples[:n_samples].double().cpu().numpy()

    vmax = float(max(p.max(), np.nanmax(q), 1e-12))
    window = (lo[0], hi[0], lo[1], hi[1])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    axes[0].imshow(p, origin="lower", extent=window, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
    axes[0].set_title(f"{data.name}: target density p")
    axes[1].imshow(q, origin="lower", extent=window, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
    axes[1].set_title(q_title)
    axes[2].contour(xs, ys, p, levels=6, colors="0.6", linewidths=0.8)
    axes[2].scatter(shown[:, 0], shown[:, 1], s=2, alpha=0.5, color="tab:orange")
    axes[2].set_title("samples of q over p's contours")
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal", adjustable="box")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
