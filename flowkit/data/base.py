"""The dataset contract: every dataset plugin returns a :class:`DataSplits`.

A dataset plugin is a callable registered under the ``flowkit.datasets`` entry-point group. Its
keyword parameters are validated from its typed signature like every other plugin; two may be
injected by flowkit: ``data_dir`` (a :class:`~pathlib.Path` or ``None``; from ``--data-dir``, the
config's ``data.data_dir`` or ``$FLOWKIT_DATA``) and ``seed`` (the run's seed).

Images are float tensors in ``[0, 1)`` holding ``k / levels`` for integer pixel values ``k``
(``levels = 256`` for 8-bit images). Training and evaluation add uniform dequantization noise of
one level, so the model sees continuous data and bits/dim compare with the literature.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowkit.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataMeta:
    """What a model must know about its data; saved in checkpoints so runs reload without data.

    ``context_shape`` is the per-example shape of a real-valued context (``(k,)`` for a vector,
    ``(C, H, W)`` for an image, ``(N, d)`` for a set of ``N`` observations), ``None`` when the
    data has none; class labels are described by ``num_classes`` instead. ``standardization``
    holds the training split's per-feature statistics (``x_mean``, ``x_std``, and for a
    real-valued context ``context_mean``, ``context_std``) when the dataset standardises them
    (``data.preprocess = "standardize"``); they travel with checkpoints so a reloaded model maps
    raw units the same way.
    """

    shape: tuple[int, ...]
    levels: int | None = None
    num_classes: int | None = None
    default_preprocess: str = "none"
    context_shape: tuple[int, ...] | None = None
    standardization: Mapping[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.context_shape is not None:
            out["context_shape"] = list(self.context_shape)
        if self.standardization is not None:
            out["standardization"] = {k: list(v) for k, v in self.standardization.items()}
        return out | {"shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataMeta:
        context_shape = d.get("context_shape")
        return cls(
            shape=tuple(d["shape"]),
            levels=d.get("levels"),
            num_classes=d.get("num_classes"),
            default_preprocess=d.get("default_preprocess", "none"),
            context_shape=None if context_shape is None else tuple(context_shape),
            standardization=d.get("standardization"),
        )


@dataclass
class DataSplits:
    """Train and test tensors of one dataset, with what the model needs to know about them.

    ``levels`` is the number of discrete values per scalar for quantized data (``None`` for
    continuous data such as the 2-D toys). ``num_classes`` is ``None`` for unlabelled data.
    ``target`` is set by variational targets (e.g. the 2-D energy densities): a picklable callable
    ``x -> log p̃(x)`` of shape ``(B,)``, an *unnormalised* log-density that objectives such as
    ``reverse-kl`` approximate; ``train``/``test`` then hold reference samples of it.

    ``train_context``/``test_context`` (float tensors ``(N, *context_shape)``) hold a
    real-valued context for conditional density estimation ``p(x | context)``; a dataset has
    either those or class labels, never both. ``val``/``val_labels``/``val_context`` are an
    optional validation split (early stopping and model selection read it; the test split stays
    untouched until the final evaluation). ``standardization`` is described in :class:`DataMeta`.
    """

    name: str
    train: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    levels: int | None = None
    num_classes: int | None = None
    default_preprocess: str = "none"
    info: dict[str, object] = field(default_factory=dict)
    target: Any | None = None
    train_context: Tensor | None = None
    test_context: Tensor | None = None
    val: Tensor | None = None
    val_labels: Tensor | None = None
    val_context: Tensor | None = None
    standardization: Mapping[str, list[float]] | None = None

    def __post_init__(self) -> None:
        splits = [("train", self.train), ("test", self.test)]
        if self.val is not None:
            splits.append(("val", self.val))
        for split, data in splits[1:]:
            if data.shape[1:] != self.train.shape[1:]:
                raise DataError(
                    f"dataset {self.name!r}: train shape {tuple(self.train.shape[1:])} differs "
                    f"from {split} shape {tuple(data.shape[1:])}"
                )
        train_context = self.train_context
        has_context = train_context is not None
        if has_context and self.train_labels is not None:
            raise DataError(
                f"dataset {self.name!r} has both class labels and a real-valued context; a "
                f"model conditions on one of them: drop one"
            )
        for split, data in splits:
            labels = getattr(self, f"{split}_labels")
            if labels is not None and labels.shape != (data.shape[0],):
                raise DataError(
                    f"dataset {self.name!r}: {split} labels have shape {tuple(labels.shape)}, "
                    f"expected ({data.shape[0]},)"
                )
            context = getattr(self, f"{split}_context")
            if (context is None) == has_context:
                raise DataError(
                    f"dataset {self.name!r}: the {split} split "
                    f"{'lacks' if has_context else 'has'} a context array; every "
                    f"split needs one, or none does"
                )
            if (
                context is not None
                and train_context is not None
                and (context.shape[0] != data.shape[0] or context.shape[1:] != train_context.shape[1:])
            ):
                raise DataError(
                    f"dataset {self.name!r}: {split} context has shape {tuple(context.shape)}, "
                    f"expected ({data.shape[0]}, "
                    f"{', '.join(map(str, train_context.shape[1:]))})"
                )

    @property
    def context_shape(self) -> tuple[int, ...] | None:
        """Per-example shape of the real-valued context (``None`` without one)."""
        return None if self.train_context is None else tuple(self.train_context.shape[1:])

    def conditioning(self, split: str) -> Tensor | None:
        """What a model conditions on for ``split``: the real-valued context, else the labels."""
        context = getattr(self, f"{split}_context")
        return context if context is not None else getattr(self, f"{split}_labels")

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-example shape, e.g. ``(2,)`` or ``(1, 28, 28)``."""
        return tuple(self.train.shape[1:])

    @property
    def meta(self) -> DataMeta:
        """The :class:`DataMeta` a model needs (shape, levels, classes, default preprocessing)."""
        return DataMeta(
            self.shape,
            self.levels,
            self.num_classes,
            self.default_preprocess,
            self.context_shape,
            self.standardization,
        )

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


def cache_dir() -> Path:
    """flowkit's cache folder (decoded datasets, self-trained classifiers): ``$FLOWKIT_CACHE``,
    else ``~/.cache/flowkit``. Everything in it can be rebuilt."""
    env = os.environ.get("FLOWKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flowkit"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data folder: ``data_dir`` if given, else ``$FLOWKIT_DATA``, else ``None``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("FLOWKIT_DATA")
    return Path(env).expanduser() if env else None


class BatchStream:
    """Shuffled mini-batches addressed by training step, so a resumed run sees the same data.

    Pass ``e`` over the data uses the permutation drawn from ``seed + e``; the batch of step ``t``
    is a pure function of ``(seed, t)``. The last incomplete batch of each pass is dropped.
    """

    def __init__(self, data: Tensor, labels: Tensor | None, batch_size: int, seed: int) -> None:
        self.data = data
        self.labels = labels
        self.batch_size = max(1, min(int(batch_size), data.shape[0]))
        self.per_epoch = data.shape[0] // self.batch_size
        self.seed = int(seed)
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> tuple[Tensor, Tensor | None]:
        epoch, k = divmod(int(step), self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.data.shape[0], generator=gen)
            self._epoch = epoch
        idx = self._order[k * self.batch_size : (k + 1) * self.batch_size]
        return self.data[idx], (self.labels[idx] if self.labels is not None else None)

    def shard(self, rank: int, world_size: int) -> Tensor:
        """Positions in every global batch that process ``rank`` of ``world_size`` trains on.

        The ``rank``-th contiguous slice of ``batch_size / world_size`` examples: the global batch
        is already a random draw, so slices are equally random, and together they are exactly the
        batch one process would train on (see :mod:`flowkit.distributed`).
        """
        fix = f"train.batch_size = {self.batch_size + (-self.batch_size) % world_size}"
        per_rank = _equal_share(self.batch_size, world_size, "train.batch_size", fix)
        return torch.arange(rank * per_rank, (rank + 1) * per_rank)


class ClassBalancedStream:
    """Batches with the same number of examples from every class, addressed by training step.

    Each step takes ``batch_size // num_classes`` examples of every class (ordered by class). Class
    ``c`` walks through its own permutation, drawn from ``(seed, c, pass)``, so the batch of step
    ``t`` is a pure function of ``(seed, t)`` and resumed runs see the same data. Used by the
    per-class optimal-transport objective of Generative Reversible Networks (one batch of about
    650 examples per class per step).
    """

    def __init__(self, data: Tensor, labels: Tensor, batch_size: int, seed: int, num_classes: int) -> None:
        self.data = data
        self.labels = labels
        self.seed = int(seed)
        self.per_class = max(1, int(batch_size) // num_classes)
        self.num_classes = int(num_classes)
        self.members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
        self.members = [m for m in self.members if m.numel() > 0]
        self._cache: dict[int, tuple[int, Tensor]] = {}

    def _order(self, c: int, members: Tensor, epoch: int) -> Tensor:
        cached = self._cache.get(c)
        if cached is None or cached[0] != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 101 + c)
            cached = (epoch, members[torch.randperm(members.numel(), generator=gen)])
            self._cache[c] = cached
        return cached[1]

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        parts = []
        for c, members in enumerate(self.members):
            n = min(self.per_class, members.numel())
            per_epoch = members.numel() // n
            epoch, k = divmod(int(step), per_epoch)
            parts.append(self._order(c, members, epoch)[k * n : (k + 1) * n])
        idx = torch.cat(parts)
        return self.data[idx], self.labels[idx]

    def shard(self, rank: int, world_size: int) -> Tensor:
        """Positions in every global batch that process ``rank`` of ``world_size`` trains on.

        The ``rank``-th slice *of every class's block*, so each process's batch is class-balanced
        too (per-class objectives such as ``ot`` then see every class on every process, with
        ``per_class / world_size`` examples each).
        """
        positions, offset = [], 0
        fix = f"train.batch_size = {(self.per_class + (-self.per_class) % world_size) * self.num_classes}"
        for members in self.members:
            n = min(self.per_class, members.numel())
            what = (
                f"the class-balanced batch ({self.per_class} per class)"
                if n == self.per_class
                else f"a class with only {n} training examples"
            )
            k = _equal_share(n, world_size, what, fix)
            positions.append(torch.arange(offset + rank * k, offset + (rank + 1) * k))
            offset += n
        return torch.cat(positions)


def _equal_share(n: int, world_size: int, what: str, fix: str) -> int:
    """``n / world_size`` examples per process; a :class:`ConfigError` unless it divides evenly."""
    if n % world_size:
        raise ConfigError(
            f"{what}: {n} examples per step cannot be shared equally by {world_size} processes "
            f"(train.batch_size is the global batch of all processes together); use a multiple "
            f"of {world_size}, e.g. {fix}, or another --nproc_per_node"
        )
    return n // world_size
