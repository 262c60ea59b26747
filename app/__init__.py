"""The trivhmc batch application: CLI, decks, run loop, ensemble I/O, registry, analysis."""

from importlib.metadata import PackageNotFoundError, version


def code_version() -> str:
    """The installed trivhmc version (recorded in ensembles, checkpoints and model cards)."""
    try:
        return version("trivhmc")
    except PackageNotFoundError:
        return "unknown"
