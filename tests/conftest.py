"""Shared pytest configuration: hypothesis profiles.

``ci`` (the default) is derandomized and small so the suite is fast and reproducible;
``thorough`` draws 100 examples per property. Choose with ``FLOWKIT_HYPOTHESIS_PROFILE``::

    FLOWKIT_HYPOTHESIS_PROFILE=thorough pytest tests/test_conformance.py
"""

from __future__ import annotations

import os

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
