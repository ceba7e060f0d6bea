"""The ``flowkit`` command line (click). Entry point: :func:`flowkit.cli.main.main`."""
