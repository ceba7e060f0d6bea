"""Arguments and options that several commands share, declared once.

The commands that read a trained run (``flowkit eval``, ``flowkit inpaint``, ``flowkit sample``)
take its folder, ``RUN_DIR``, and may name one of its checkpoints or the dataset folder.
"""

from __future__ import annotations

from pathlib import Path

import click

#: ``RUN_DIR``: the folder of a trained run (it must exist).
run_dir_argument = click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))

#: ``--checkpoint FILE``: one of the run's checkpoints instead of the newest.
checkpoint_option = click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A specific checkpoint file (default: the newest).",
)

#: ``--data-dir DIR``: where the run's dataset is now, when it moved since training.
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Dataset folder, if it moved since training (default: the run's, or $FLOWKIT_DATA).",
)
