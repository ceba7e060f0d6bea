"""Shared pytest configuration: hypothesis profiles, one torch thread, importable benchmarks.

``ci`` (the default) is derandomized and small so the suite is fast and reproducible;
``thorough`` draws 100 examples per property. Choose with ``FLOWKIT_HYPOTHESIS_PROFILE``::

    FLOWKIT_HYPOTHESIS_PROFILE=thorough pytest tests/test_conformance.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# The autotune's measured choices (flowkit.execution.autotune) go to a folder of this test session,
# never into the user's ~/.cache/flowkit (child processes inherit it).
os.environ.setdefault("FLOWKIT_CACHE_DIR", tempfile.mkdtemp(prefix="flowkit-test-cache-"))

# Test tensors are tiny: intra-op threads only add overhead, and on a busy 2-core machine their
# spin-waiting made the conformance suite 10-50x slower. One thread is faster in every case here.
torch.set_num_threads(1)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev dependency; tests that need it import it themselves
    pass
else:
    settings.register_profile(
        "ci",
        derandomize=True,
        max_examples=8,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    settings.register_profile(
        "thorough",
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    settings.load_profile(os.environ.get("FLOWKIT_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def benchmarks_importable() -> Iterator[None]:
    """The repository root on ``sys.path`` for one test module, so ``benchmarks.*`` imports."""
    root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
