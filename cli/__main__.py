"""``python -m flowkit.cli`` (also what ``torchrun -m flowkit.cli`` starts)."""

from flowkit.cli.main import main

main()
