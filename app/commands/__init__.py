"""One module per ``trivhmc`` subcommand.

Each module ``app/commands/<name>.py`` provides

* a module docstring (the subcommand's ``--help`` description; first line = summary),
* ``add_arguments(parser: argparse.ArgumentParser) -> None``,
* ``main(args: argparse.Namespace) -> int`` (the exit status).

Only the module of the chosen subcommand is imported, so keep heavy imports (torch, mpi4py)
inside ``main``. Raise :class:`app.errors.InputError` for bad user input (exit 2, message
without traceback); any other exception is exit 1 with a traceback.
"""
