"""pytest configuration.

``tests/mpi/`` holds tests that run *under* ``mpiexec`` (every rank runs the module and
compares its distributed result with the single-rank one); they are launched by
``tests/test_mpi.py`` with 1, 2 and 4 ranks and are not collected directly.

The suite runs on pytest-xdist workers (``-n auto`` in pyproject.toml): one per available
core, at most :data:`MAX_WORKERS`, none under ``mpiexec`` (every rank is one process of a
distributed test); ``-n 0`` runs it in one process. The ``mpiexec`` launches, the longest
tests by far, are scheduled first so that they do not finish last on one worker.
"""

import os

# as app/__init__.py (before torch loads MKL): float64 products that round alike for any
# block size, so distributed results can be compared bit for bit with one rank
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import pytest  # noqa: E402
import torch  # noqa: E402

UNDER_MPIEXEC = "TRIVHMC_UNDER_MPIEXEC" in os.environ
collect_ignore = ["mpi"] if not UNDER_MPIEXEC else []
#: most pytest-xdist workers for ``-n auto`` (each imports torch and numba: ~0.5-1 GB)
MAX_WORKERS = 4

torch.set_default_dtype(torch.float64)
# small-matrix kernels are far slower with intra-op threads on small CI machines
torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per available core, at most :data:`MAX_WORKERS`; 0 (no
    workers, the tests run in the process) under ``mpiexec``."""
    if UNDER_MPIEXEC:
        return 0
    from app.jobscript import available_cores  # here: the controller only, not at collection

    return max(1, min(MAX_WORKERS, available_cores()))


def pytest_collection_modifyitems(config, items) -> None:
    """The ``mpiexec`` launches of tests/test_mpi.py first, most ranks first (the longest
    tests: started last, one would run alone at the end of a parallel session)."""

    def key(item) -> tuple[int, int]:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.path.name == "test_mpi.py" and "nranks" in params:
            return (0, -int(params["nranks"]))
        return (1, 0)

    items.sort(key=key)  # stable: the rest keep their order


@pytest.fixture
def restore_backend():
    """Put the active kernel backend (``kernels.backends.set_backend``) back after the test."""
    import kernels.backends as kb

    saved = kb._active
    yield
    kb._active = saved


@pytest.fixture
def spy(monkeypatch):
    """``spy(module, names)``: wrap the named functions of ``module`` for this test; returns
    the list to which every call appends the function's name (tests/mpi uses it too)."""

    def install(module, names) -> list[str]:
        calls: list[str] = []
        for name in names:
            orig = getattr(module, name)

            def wrapper(*a, _orig=orig, _name=name, **k):
                calls.append(_name)
                return _orig(*a, **k)

            monkeypatch.setattr(module, name, wrapper)
        return calls

    return install
