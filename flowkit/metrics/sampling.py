"""Shared plumbing of the sample-based metrics: eval mode, seeded sampling, reference test data.

Every sample-based metric compares ``n`` model samples with ``n`` test examples. The test
examples are a subset of the test split drawn from ``seed`` and dequantized as
:func:`~flowkit.metrics.likelihood.evaluate_nll` does (uniform noise of one level, so they are
continuous like the samples). For labelled data the samples are drawn with *the labels of that
subset* as context, so class-conditional models are compared with a test set of the same label
distribution (unconditional models ignore the labels).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from flowkit.data.base import DataSplits
from flowkit.data.preprocess import dequantize
from flowkit.errors import ConfigError
from flowkit.model import Flow

__all__ = ["draw_samples", "eval_mode", "reference_batch", "seeded"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block, then restore their previous state.

    Priors draw their noise from the global generator of their device; forking it keeps a metric
    deterministic given ``seed`` without perturbing the random stream of the caller (a training
    loop that evaluates every few steps continues exactly as without the evaluation).
    """
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else 0
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        yield


def reference_batch(data: DataSplits, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """``min(n, N_test)`` dequantized test examples drawn without replacement from ``seed``.

    Returns the examples (CPU, float32 as stored) and what each was observed with: its class
    label, or its real-valued context row for a dataset with ``test_context`` (``None`` when it
    has neither). :func:`draw_samples` draws each sample with that same label or context, so a
    conditional model is compared with the test data at the contexts the data came from. The
    subset and the dequantization noise are both functions of ``seed``.
    """
    if n < 1:
        raise ConfigError(f"the number of samples for a sample-quality metric must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    total = data.test.shape[0]
    idx = torch.randperm(total, generator=gen)[: min(n, total)]
    x = dequantize(data.test[idx], data.levels, gen)
    if data.test_labels is not None:
        return x, data.test_labels[idx]
    context = getattr(data, "test_context", None)
    return x, (context[idx] if context is not None else None)


@torch.inference_mode()
def draw_samples(
    model: Flow,
    n: int,
    labels: Tensor | None = None,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 500,
) -> Tensor:
    """``n`` model samples on the model's device, deterministic given ``seed`` and ``batch_size``.

    With ``labels`` (shape ``(n,)``) and a model that knows classes, sample ``i`` is drawn with
    class ``labels[i]`` as context; with a float ``labels`` of shape ``(n, *context_shape)`` and
    a model on a real-valued context, with the context row ``labels[i]``; otherwise the model's
    default context is used. Drawn in
    batches of ``batch_size`` in eval mode; the caller's random state is left untouched.
    """
    real_context = getattr(model, "context_shape", None) is not None
    if labels is not None and (labels.shape[:1] != (n,) or (labels.dim() != 1 and not real_context)):
        raise ConfigError(f"draw_samples: expected {n} labels, got shape {tuple(labels.shape)}")
    use_labels = labels is not None and (
        real_context if labels.is_floating_point() else bool(model.num_classes)
    )
    device = model.device
    chunks = []
    with eval_mode(model), seeded(seed, device):
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            context = labels[start : start + m].to(device) if use_labels and labels is not None else None
            chunks.append(model.sample(m, context, temperature=temperature))
    return torch.cat(chunks)
