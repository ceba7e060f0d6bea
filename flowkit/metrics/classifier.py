"""A small image classifier that flowkit trains itself, and class-conditional sample accuracy.

No downloaded weights: for each dataset flowkit trains a small CNN deterministically (fixed seed,
fixed data order), reports its own test accuracy, and caches it under ``$FLOWKIT_CACHE`` (default
``~/.cache/flowkit``), keyed by a fingerprint of the training data. *Class-conditional sample
accuracy* is the fraction of samples drawn with label ``c`` that the classifier assigns to ``c`` —
the measure the GRN paper's MNIST experiment is judged by.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowkit.atomic import atomic_write
from flowkit.data.base import DataSplits, cache_dir
from flowkit.errors import ConfigError
from flowkit.model import Flow


class SmallCNN(nn.Module):
    """conv(32) → ReLU → conv(64, stride 2) → ReLU → adaptive 4×4 pool → 128 → classes."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        self.fc1 = nn.Linear(64 * 16, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The 128-d penultimate features (for Fréchet distances)."""
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)
        return F.relu(self.fc1(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.features(x))


def _fingerprint(data: DataSplits, steps: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(f"{data.name}|{tuple(data.train.shape)}|{steps}|{seed}|v1".encode())
    h.update(data.train[:: max(1, data.train.shape[0] // 512)].numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def accuracy(classifier: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``classifier`` on images ``x`` with labels ``y``."""
    classifier.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = classifier(x[start : start + batch_size])
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(1, x.shape[0])


def train_classifier(
    data: DataSplits, steps: int = 1500, seed: int = 0, use_cache: bool = True
) -> tuple[SmallCNN, float]:
    """A deterministic :class:`SmallCNN` for ``data`` and its test accuracy (cached on disk)."""
    if not data.is_image or data.train_labels is None or data.test_labels is None or not data.num_classes:
        raise ConfigError(f"a classifier needs labelled image data; '{data.name}' is not")
    net = SmallCNN(data.shape[0], data.num_classes)
    path = cache_dir() / "classifiers" / f"{data.name}-{_fingerprint(data, steps, seed)}.pt"
    if use_cache and path.is_file():
        try:
            state = torch.load(path, weights_only=True)
            net.load_state_dict(state["model"])
            return net.eval(), float(state["test_accuracy"])
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SmallCNN(data.shape[0], data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    n = data.train.shape[0]
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (128,), generator=gen)
        x = data.train[idx]
        x = x + torch.rand(x.shape, generator=gen) / (data.levels or 256)  # dequantized, as samples
        loss = F.cross_entropy(net(x), data.train_labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = accuracy(net, data.test, data.test_labels)
    if use_cache:
        state = {"model": net.state_dict(), "test_accuracy": acc}
        atomic_write(path, lambda fh: torch.save(state, fh))
    return net.eval(), acc


@torch.no_grad()
def class_sample_accuracy(
    model: Flow, classifier: nn.Module, per_class: int = 100, temperature: float = 1.0, batch_size: int = 500
) -> float:
    """Fraction of class-``c`` samples of a class-conditional ``model`` classified as ``c``."""
    if not model.num_classes:
        raise ConfigError("class-conditional sample accuracy needs a model with classes")
    labels = torch.arange(model.num_classes).repeat_interleave(per_class)
    correct = 0
    model.eval()
    for chunk in labels.split(batch_size):
        x = model.sample(chunk.numel(), chunk.to(model.device), temperature=temperature)
        correct += int((classifier(x.float().cpu()).argmax(1) == chunk).sum())
    return correct / labels.numel()
