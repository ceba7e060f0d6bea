"""The release version and the distribution name: the one place either is written.

``pyproject.toml`` reads ``__version__`` from here (``[tool.setuptools.dynamic]``), so the wheel's
metadata, ``flowkit --version``, ``flowkit.__version__`` and the version recorded in each run's
provenance agree. The distribution is published as ``torch-flowkit`` (the name ``flowkit`` on
the package index belongs to an unrelated project); the import package and the command are
``flowkit``.
"""

__version__ = "0.2.0"

#: The name of flowkit's distribution on the package index (``pip install torch-flowkit``).
DISTRIBUTION = "torch-flowkit"
