"""Metrics: the self-trained classifier and class-conditional sample accuracy."""

from __future__ import annotations

import pytest
import torch

from flowkit import registry
from flowkit.metrics import class_sample_accuracy, train_classifier


@pytest.fixture
def digits():
    return registry.datasets.build("digits", {}, injected={"seed": 0, "data_dir": None})


def test_classifier_is_deterministic_accurate_and_cached(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    net, acc = train_classifier(digits, steps=300)
    assert acc > 0.9
    assert len(list((tmp_path / "classifiers").glob("digits-*.pt"))) == 1
    again, acc2 = train_classifier(digits, steps=300)  # from the cache
    assert acc2 == acc
    x = digits.test[:8]
    assert torch.equal(net(x), again(x))
    fresh, acc3 = train_classifier(digits, steps=300, use_cache=False)  # retrained: identical
    assert acc3 == acc and torch.allclose(fresh(x), net(x))


class _ReplayData(torch.nn.Module):
    """A fake class-conditional model whose 'samples' of class c are real test images of c."""

    num_classes = 10

    def __init__(self, data):
        super().__init__()
        self.data = data
        self.device = torch.device("cpu")

    def sample(self, n, context, temperature=1.0):
        out = torch.empty(n, *self.data.shape)
        for i, c in enumerate(context.tolist()):
            pool = self.data.test[self.data.test_labels == c]
            out[i] = pool[i % pool.shape[0]]
        return out


def test_sample_accuracy_of_real_images_is_classifier_accuracy(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    net, _ = train_classifier(digits, steps=300)
    score = class_sample_accuracy(_ReplayData(digits), net, per_class=20)
    assert score > 0.85
