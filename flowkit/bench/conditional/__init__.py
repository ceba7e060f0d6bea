"""``flowkit bench conditional``: conditional density estimation (simulation-based inference).

Flows learn the posterior ``q(θ | x)`` of four simulators — ``gaussian-linear``, ``two-moons``,
``slcp`` and ``inverse-kinematics`` (:mod:`.tasks`) — from budgets of simulations, and are
scored against reference posterior samples (:mod:`.reference`) by C2ST (:mod:`.c2st`), held-out
NLL and, for the robot arm, the re-simulation error; flowkit's flows and peer libraries' (zuko,
nflows; :mod:`.models`) train with the same recipe and their step times are compared in the same
run (:mod:`.run`). :mod:`.report` writes ``results.json``, ``results.csv`` and ``report.md``.
Nothing is downloaded: simulators and references are implemented here (sbibm is not needed).

::

    from flowkit.bench.conditional import Settings, run_conditional
    run_conditional(Settings(tasks=("two-moons",), sims=(1000,), steps=500), "bench-results/c")
"""

from flowkit.bench.conditional.run import Settings, run_conditional
from flowkit.bench.conditional.tasks import TASKS, get_task

__all__ = ["TASKS", "Settings", "get_task", "run_conditional"]
