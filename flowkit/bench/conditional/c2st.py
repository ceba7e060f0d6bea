"""Classifier two-sample test (C2ST) accuracy between flow samples and reference samples.

A classifier is trained to tell samples ``P`` (reference posterior) from samples ``Q`` (the
flow); its held-out accuracy is 0.5 when it cannot (``Q = P``) and 1 when the two never overlap
(Lopez-Paz & Oquab 2017, "Revisiting classifier two-sample tests", ICLR). As in sbibm (Lueckmann
et al. 2021): both sets are standardised with the mean and standard deviation of ``P``; the
classifier is scikit-learn's ``MLPClassifier`` with two hidden ReLU layers of ``10·d`` units,
Adam; the accuracy is the mean over a ``folds``-fold shuffled cross-validation. One deviation:
``early_stopping=True`` (10 % of each training fold held out, patience 10 epochs). Without it a
fold of 10-d samples trains for thousands of epochs (about 20 s, against 0.5 s with it) and the
over-fitted classifier scores *lower* on a truly shifted pair.

Non-finite flow samples (a diverged flow) are replaced by ``±1e6`` before standardising, and
standardised values are clipped to ``[−1e3, 1e3]``: such samples are trivially told apart.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def c2st(
    reference: Tensor | np.ndarray,
    samples: Tensor | np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    early_stopping: bool = True,
    max_iter: int = 1000,
    threads: int | None = 1,
) -> float:
    """C2ST accuracy between ``reference (n, d)`` and ``samples (m, d)`` (0.5 = same).

    ``threads`` caps the BLAS/OpenMP threads scikit-learn uses (``None``: no cap). The default,
    1, matters: with the other core busy, OpenBLAS's two threads made one 10-d C2ST take 43 s
    instead of 4.6 s on the 2-core benchmark machine.
    """
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    p = np.asarray(reference.detach().cpu() if isinstance(reference, Tensor) else reference, dtype=np.float64)
    q = np.asarray(samples.detach().cpu() if isinstance(samples, Tensor) else samples, dtype=np.float64)
    q = np.nan_to_num(q, nan=1e6, posinf=1e6, neginf=-1e6)
    mean, std = p.mean(0), p.std(0)
    std = np.where(std > 0, std, 1.0)
    x = np.clip((np.concatenate([p, q]) - mean) / std, -1e3, 1e3)
    y = np.concatenate([np.zeros(len(p)), np.ones(len(q))])
    d = p.shape[1]
    clf = MLPClassifier(
        hidden_layer_sizes=(10 * d, 10 * d),
        activation="relu",
        solver="adam",
        max_iter=max_iter,
        early_stopping=early_stopping,
        random_state=seed,
    )
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=threads):
        scores = cross_val_score(clf, x, y, cv=cv, scoring="accuracy")
    return float(np.mean(scores))
