"""pytest configuration.

``tests/mpi/`` holds tests that run *under* ``mpiexec`` (every rank runs the module and
compares its distributed result with the single-rank one); they are launched by
``tests/test_mpi.py`` with 1, 2 and 4 ranks and are not collected directly.
"""

import os

# as app/__init__.py (before torch loads MKL): float64 products that round alike for any
# block size, so distributed results can be compared bit for bit with one rank
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import pytest  # noqa: E402
import torch  # noqa: E402

collect_ignore = ["mpi"] if "TRIVHMC_UNDER_MPIEXEC" not in os.environ else []

torch.set_default_dtype(torch.float64)
# small-matrix kernels are far slower with intra-op threads on small CI machines
torch.set_num_threads(1)


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
