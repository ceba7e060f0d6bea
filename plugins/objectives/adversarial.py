"""Adversarial-latent training of a reversible network (the CelebA recipe of GRN).

The network ``f`` is both encoder and decoder, and its latent is restricted: the ``restricted``
prior keeps ``k`` selected dimensions (``N(0, 1)``) and fixes every other one at 0. Training has
two phases, chosen by the step (``adversary_start``), so one config runs both:

* **phase 1** (steps ``< adversary_start``), reconstruction through the restricted latent only:
  ``L = w_rec · mean|x − f⁻¹(clamp_{c₁}(f(x)))|``;
* **phase 2**, a latent adversary (adversarial autoencoder): critic steps and generator steps
  alternate (``critic_steps`` critic steps, then one generator step). The generator loss is
  ``L_G = w_rec · mean|x − f⁻¹(clamp_{c₂}(z))| + w_oob · mean((clamp_{c₂}(z) − z)²)
  + w_adv · g_adv(D(z_sel))`` with ``z = f(x)``.

``clamp_c`` clips each latent dimension to ``[μ − c·σ, μ + c·σ]`` (detached bounds), which sets
every non-selected dimension to exactly 0 (Schirrmeister et al. 2018, "Training Generative
Reversible Networks"; Makhzani et al. 2016, "Adversarial Autoencoders", §2).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.distributed import average_gradients
from flowkit.errors import ConfigError
from flowkit.objective import Batch, LossOutput, Objective
from flowkit.params import Range
from flowkit.plugins.objectives.critic import LatentCritic

if TYPE_CHECKING:
    from flowkit.model import Flow
    from flowkit.prior import Prior

GanLoss = Literal["hinge", "non-saturating"]
#: A loss weight (0: the term is off).
NonNegative = Annotated[float, Range(0)]
#: A clamp, a learning rate, a clipping norm.
Positive = Annotated[float, Range(0, min_inclusive=False)]
#: An Adam coefficient of the critic's optimiser.
Beta = Annotated[float, Range(0, 1, max_inclusive=False)]

_NEEDS_RESTRICTED = (
    'the adversarial objective needs the restricted prior: set [prior] name = "restricted" '
    "(the prior must provide clamp(z, k) and select(z); got {name})"
)


class _Selecting(Protocol):
    """What this objective needs of the prior beyond :class:`~flowkit.prior.Prior` (``restricted``)."""

    def clamp(self, z: Tensor, k: float) -> Tensor: ...

    def select(self, z: Tensor) -> Tensor: ...


def _selecting(prior: Prior) -> _Selecting:
    """``prior`` with its ``clamp`` and ``select`` (:meth:`AdversarialLatent.setup` checks both)."""
    return cast(_Selecting, prior)


def critic_loss(d_data: Tensor, d_prior: Tensor, kind: GanLoss) -> Tensor:
    """Critic loss with encodings as the critic's *positive* class (as the GRN reference).

    ``hinge``: ``mean relu(1 − D(z)) + mean relu(1 + D(s))`` (Lim & Ye 2017, "Geometric GAN",
    eq. 9; Miyato et al. 2018, §4). ``non-saturating`` (the logistic GAN loss, label 1 =
    encoding): ``mean softplus(−D(z)) + mean softplus(D(s))`` = ``−log σ(D(z)) − log(1 − σ(D(s)))``
    (Goodfellow et al. 2014, "Generative Adversarial Nets", eq. 1). ``z``: encodings, ``s``: prior
    samples, both restricted to the selected dimensions.
    """
    if kind == "hinge":
        return torch.relu(1.0 - d_data).mean() + torch.relu(1.0 + d_prior).mean()
    return F.softplus(-d_data).mean() + F.softplus(d_prior).mean()


def generator_adversarial_loss(d_data: Tensor, kind: GanLoss) -> Tensor:
    """The encoder's adversarial term: push encodings towards what the critic calls prior.

    ``hinge``: ``g_adv = mean D(z)`` (Lim & Ye 2017, eq. 10; the GRN reference). Minimising it
    lowers the critic's score of encodings, the side the critic assigns to prior samples.

    ``non-saturating``: the critic's probability that ``u`` is an encoding is ``σ(D(u))``. The
    minimax generator would maximise the critic's loss on encodings, ``−log σ(D(z))``, whose
    gradient ``(1 − σ(D(z)))·∇D`` vanishes exactly when the critic confidently spots encodings.
    The non-saturating form instead trains the encoder to make the critic label its encodings
    as prior samples (target 0): minimise ``−log(1 − σ(D(z))) = softplus(D(z))``, gradient
    ``σ(D(z))·∇D``, strongest when the critic is right (Goodfellow et al. 2014, §3).
    """
    if kind == "hinge":
        return d_data.mean()
    return F.softplus(d_data).mean()


class AdversarialLatent(Objective):
    """Adversarial-latent autoencoding with a restricted prior (GRN, CelebA recipe).

    Phase 1 (``step < adversary_start``): ``L = w_rec·mean|x − f⁻¹(clamp_{c₁}(f(x)))|``.
    Phase 2, a critic ``D`` on the ``k`` selected latent dims and the generator loss
    ``L_G = w_rec·mean|x − f⁻¹(clamp_{c₂}(z))| + w_oob·mean((clamp_{c₂}(z) − z)²) + w_adv·g_adv``,
    ``z = f(x)``, in cycles of ``critic_steps`` critic steps then one generator step (1:1 by
    default). Critic steps return ``total = None`` (the model is not updated). Needs the
    ``restricted`` prior (Schirrmeister et al. 2018, "Training Generative Reversible Networks";
    Makhzani et al. 2016, "Adversarial Autoencoders", §2).

    Defaults follow the GRN reference: weights 10/10/1, clamps 200 (phase 1) and 20 (phase 2),
    hinge loss with encodings as the critic's positive class, 750 prior samples per critic step,
    critic Adam with betas (0, 0.9), gradient-norm clip 1000 and ``critic_lr = 1e-3``: the
    reference meant 4e-4 but misspelt the key (``'lr:'``), so Adam's default 1e-3 was used.

    Under torchrun each process scores its slice of the batch and its own ``critic_samples``
    prior samples; the critic's gradients are averaged over the processes before its step
    (:func:`flowkit.distributed.average_gradients`), so every process keeps the same critic.

    References:

    * Schirrmeister, Chrabąszcz, Hutter & Ball 2018, "Training Generative Reversible Networks",
      arXiv:1806.01610.
    * Makhzani, Shlens, Jaitly, Goodfellow & Frey 2016, "Adversarial Autoencoders", ICLR 2016 workshop track
      (arXiv:1511.05644).

    Arguments:

    * ``adversary_start`` (int ≥ 0, default 0): the first step of phase 2; steps before it only reconstruct.
    * ``schedule`` ('alternate', default 'alternate'): the alternation of critic and generator steps (only
      ``'alternate'``).
    * ``critic_steps`` (int ≥ 1, default 1): critic steps per generator step.
    * ``loss`` ('hinge' | 'non-saturating', default 'hinge'): the GAN loss of critic and generator.
    * ``recon_weight`` (float ≥ 0, default 10.0): ``w_rec``, weight of the reconstruction term.
    * ``oob_weight`` (float ≥ 0, default 10.0): ``w_oob``, weight of the out-of-bounds term.
    * ``adv_weight`` (float ≥ 0, default 1.0): ``w_adv``, weight of the adversarial term.
    * ``phase1_clamp`` (float > 0, default 200.0): ``c₁``, the latent clamp of phase 1.
    * ``phase2_clamp`` (float > 0, default 20.0): ``c₂``, the latent clamp of phase 2.
    * ``critic_samples`` (int ≥ 1, default 750): prior samples per critic step.
    * ``critic_hidden`` (tuple[int ≥ 1, int ≥ 1], default (200, 400)): the critic's two hidden widths.
    * ``critic_lr`` (float > 0, default 0.001): the critic's Adam learning rate.
    * ``critic_betas`` (tuple[float in [0, 1), float in [0, 1)], default (0.0, 0.9)): the critic's Adam betas.
    * ``critic_grad_clip`` (float > 0, default 1000.0): gradient-norm clip of the critic.

    Example::

        >>> import torch
        >>> from flowkit import flows
        >>> from flowkit.objective import Batch
        >>> from flowkit.plugins.objectives.adversarial import AdversarialLatent
        >>> objective = AdversarialLatent(adversary_start=2, critic_steps=2, critic_hidden=(8, 8))
        >>> [objective.phase(step) for step in range(6)]
        [1, 1, 2, 2, 2, 2]
        >>> [objective.is_critic_step(step) for step in range(2, 8)]  # 2 critic steps, then 1 generator step
        [True, True, False, True, True, False]
        >>> _ = torch.manual_seed(0)
        >>> prior = {"name": "restricted", "num_selected": 2}
        >>> model = flows.build("realnvp", 4, num_layers=2, hidden=8, prior=prior)
        >>> objective.setup(model)  # the critic sees the 2 selected latent dims
        >>> batch = Batch(torch.randn(8, 4))
        >>> objective.loss(model, batch, step=0).terms["phase"]  # reconstruction only
        1.0
        >>> objective.loss(model, batch, step=2).total is None  # a critic step leaves the model alone
        True
    """

    #: chosen with --objective adversarial: the restricted prior it needs
    config_defaults: ClassVar[dict[str, dict[str, Any]]] = {"prior": {"name": "restricted"}}

    def __init__(
        self,
        *,
        adversary_start: Annotated[int, Range(0)] = 0,
        schedule: Literal["alternate"] = "alternate",
        critic_steps: Annotated[int, Range(1, note="critic steps per generator step")] = 1,
        loss: GanLoss = "hinge",
        recon_weight: NonNegative = 10.0,
        oob_weight: NonNegative = 10.0,
        adv_weight: NonNegative = 1.0,
        phase1_clamp: Positive = 200.0,
        phase2_clamp: Positive = 20.0,
        critic_samples: Annotated[int, Range(1)] = 750,
        critic_hidden: tuple[Annotated[int, Range(1)], Annotated[int, Range(1)]] = (200, 400),
        critic_lr: Positive = 1e-3,
        critic_betas: tuple[Beta, Beta] = (0.0, 0.9),
        critic_grad_clip: Positive = 1000.0,
    ) -> None:
        super().__init__()
        self.adversary_start = int(adversary_start)
        self.schedule = schedule
        self.critic_steps = int(critic_steps)
        self.gan_loss: GanLoss = loss
        self.recon_weight = float(recon_weight)
        self.oob_weight = float(oob_weight)
        self.adv_weight = float(adv_weight)
        self.phase1_clamp = float(phase1_clamp)
        self.phase2_clamp = float(phase2_clamp)
        self.critic_samples = int(critic_samples)
        self.critic_hidden = (int(critic_hidden[0]), int(critic_hidden[1]))
        self.critic_lr = float(critic_lr)
        self.critic_betas = (float(critic_betas[0]), float(critic_betas[1]))
        self.critic_grad_clip = float(critic_grad_clip)
        self.critic: LatentCritic | None = None
        self.critic_optimizer: torch.optim.Adam | None = None
        self._pending_state: dict[str, Any] | None = None

    # -- schedule ------------------------------------------------------------------------------
    def phase(self, step: int) -> int:
        """1 before ``adversary_start`` (reconstruction only), 2 from it on (adversarial)."""
        return 1 if step < self.adversary_start else 2

    def is_critic_step(self, step: int) -> bool:
        """Whether ``step`` trains the critic (and leaves the model alone).

        In phase 2 the steps come in cycles of ``critic_steps + 1``: the first ``critic_steps``
        of each cycle are critic steps, the last a generator step. With the default 1 this is
        the reference's alternation: ``step − adversary_start`` even → critic, odd → generator.
        """
        if self.phase(step) == 1:
            return False
        return (step - self.adversary_start) % (self.critic_steps + 1) < self.critic_steps

    # -- set-up and state ------------------------------------------------------------------------
    def setup(self, model: Flow) -> None:
        """Check the prior, build the critic on its ``k`` selected dims and the critic's Adam."""
        prior = model.prior
        if not (callable(getattr(prior, "clamp", None)) and callable(getattr(prior, "select", None))):
            raise ConfigError(_NEEDS_RESTRICTED.format(name=type(prior).__name__))
        probe = torch.zeros(1, *prior.shape, device=prior.device, dtype=prior.dtype)
        k = int(_selecting(prior).select(probe).shape[1])
        self.critic = LatentCritic(k, self.critic_hidden).to(device=prior.device, dtype=prior.dtype)
        self.critic_optimizer = torch.optim.Adam(
            self.critic.parameters(), lr=self.critic_lr, betas=self.critic_betas
        )
        if self._pending_state is not None:
            self.set_extra_state(self._pending_state)

    def _require_setup(self) -> tuple[LatentCritic, torch.optim.Adam]:
        if self.critic is None or self.critic_optimizer is None:
            raise RuntimeError("AdversarialLatent.setup(model) must be called before training")
        return self.critic, self.critic_optimizer

    def get_extra_state(self) -> Any:
        """The critic optimiser's state (Adam moments and step counts), for checkpoints."""
        if self.critic_optimizer is None:
            return {} if self._pending_state is None else self._pending_state
        return {"critic_optimizer": self.critic_optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        """Restore the critic optimiser (kept until :meth:`setup` if it does not exist yet)."""
        if not state:
            return
        if self.critic_optimizer is None:
            self._pending_state = state
            return
        # a copy, so that two objectives never share (and both update) the same moment tensors
        self.critic_optimizer.load_state_dict(copy.deepcopy(state["critic_optimizer"]))
        self._pending_state = None

    # -- pieces --------------------------------------------------------------------------------
    def _reconstruction(self, model: Flow, batch: Batch, z: Tensor, bound: float) -> tuple[Tensor, Tensor]:
        """``(mean|x − f⁻¹(clamp_bound(z))|, clamp_bound(z))``."""
        z_clamped = _selecting(model.prior).clamp(z, bound)
        x_hat = model.decode(z_clamped, batch.context)
        return (batch.x - x_hat).abs().mean(), z_clamped

    def auxiliary_update(self, model: Flow, batch: Batch, step: int) -> dict[str, float]:
        """One critic step on critic steps of phase 2 (encodings detached), else nothing."""
        if not self.is_critic_step(step):
            return {}
        critic, optimizer = self._require_setup()
        prior = model.prior
        critic.train()  # spectral norm's power iteration runs on every call, as the reference
        with torch.no_grad():
            z, _ = model.encode(batch.x, batch.context)
            s = prior.sample(self.critic_samples, None)
        z_sel = _selecting(prior).select(z).detach()
        s_sel = _selecting(prior).select(s).detach().to(z_sel.dtype)
        d_data, d_prior = critic(z_sel), critic(s_sel)
        loss = critic_loss(d_data, d_prior, self.gan_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(critic.parameters())  # under torchrun: the same critic on every process
        torch.nn.utils.clip_grad_norm_(critic.parameters(), self.critic_grad_clip)
        optimizer.step()
        return {
            "critic_loss": float(loss.detach()),
            "critic_data": float(d_data.detach().mean()),
            "critic_prior": float(d_prior.detach().mean()),
        }

    def loss(self, model: Flow, batch: Batch, step: int) -> LossOutput:
        """Phase-1 reconstruction, ``None`` on critic steps, else the generator loss ``L_G``."""
        phase = self.phase(step)
        if phase == 1:
            z, _ = model.encode(batch.x, batch.context)
            recon, _ = self._reconstruction(model, batch, z, self.phase1_clamp)
            total = self.recon_weight * recon
            return LossOutput(
                total, {"recon": float(recon.detach()), "phase": 1.0, "loss": float(total.detach())}
            )
        if self.is_critic_step(step):
            return LossOutput(None, {"phase": 2.0})
        critic, _ = self._require_setup()
        critic.train()
        z, _ = model.encode(batch.x, batch.context)
        recon, z_clamped = self._reconstruction(model, batch, z, self.phase2_clamp)
        oob = (z_clamped - z).pow(2).mean()
        # the critic's parameters receive gradients here too; the next critic step zeroes them
        # before its own backward, and they are not in the model's optimiser
        g_adv = generator_adversarial_loss(critic(_selecting(model.prior).select(z)), self.gan_loss)
        total = self.recon_weight * recon + self.oob_weight * oob + self.adv_weight * g_adv
        return LossOutput(
            total,
            {
                "recon": float(recon.detach()),
                "oob": float(oob.detach()),
                "g_adv": float(g_adv.detach()),
                "phase": 2.0,
                "loss": float(total.detach()),
            },
        )
