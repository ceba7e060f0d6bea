"""The cost asymmetry of flow families (density against sampling time): a thin script wrapper.

The measurement lives in the package, :mod:`flowkit.bench.cost_asymmetry`, so that the bundled
``quick`` and ``parallelism`` suites run from an installed wheel. Run by hand:

    .venv/bin/python benchmarks/cost_asymmetry.py --sides 8 16 --threads 1
"""

from flowkit.bench.cost_asymmetry import main, measure

__all__ = ["main", "measure"]

if __name__ == "__main__":
    main()
