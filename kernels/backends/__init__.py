"""Kernel backend seam: one dispatch point for the hot gauge kernels.

The theories (kernels/theories/su3.py, u1.py) and the Wilson flow call the *active* backend
for their hot kernels; every backend computes the same mathematics (docstrings of
:mod:`kernels.backends.eager`) and is tested against ``eager`` in the default suite.

Backends
--------
``eager``     the reference and the fallback: complex128 ``(..., 3, 3)`` torch tensors,
              batched ``matmul``, :func:`parallel.shift` for neighbours; autograd everywhere.
``soa``       SU(3) Wilson staples/force in a real structure-of-arrays layout
              ``(B, Nd, 2, 3, 3, *local)`` with unrolled 3x3 products (plain torch ops,
              autograd-capable, any device).
``compiled``  the ``soa`` arithmetic fused by ``torch.compile`` (compiles once per process,
              minutes on a small CPU; any device torch.compile supports).
``numba``     site-fused CPU kernels (optional dependency, ``pip install trivhmc[fast]``):
              SU(3) Wilson staples, force, action, flow generator and RK3 flow step,
              ``exp(X) W`` (MD link update), U(1) action and force, on halo-padded arrays;
              the action is a ``torch.autograd.Function`` whose backward is the analytic
              force.
``vnode``     ``numba`` plus Grid-style virtual-node SU(3) Wilson kernels (16 SIMD lanes =
              16 sub-blocks of the local lattice; kernels/backends/vnode.py): force,
              staples, action, flow step, clover energy and charge densities, where the
              local lattice is 4D with even extents (split axes: ghost planes in the resident MD
              layout, a one-site padded halo per call);
              ``numba`` elsewhere.

Interface (:class:`kernels.backends.eager.EagerBackend`, which every backend subclasses):
``su3_staple_sum``, ``su3_force``, ``su3_action_local``, ``su3_flow_generator``,
``su3_flow_step_rk3``, ``su3_expm_mul``, ``su3_action_density``, ``su3_clover_density``,
``su3_clover_charge_density`` (the Wilson-flow observables), ``u1_action_density``,
``u1_force``. Adding a backend:
subclass, override what it fuses, register its ``"module:class"`` in :data:`BACKENDS`, and it is
picked up by tests/test_backends.py and tests/mpi/test_backends_mpi.py.

Kernels a backend does not implement natively (e.g. the rectangle terms ``c1 != 0`` in
``soa``/``numba``, non-CPU tensors in ``numba``, or any call that needs an autograd graph
through a fused kernel) are delegated to ``eager``: the result is the same to rounding.

Selection: :func:`set_backend` (the application maps the deck key ``parallel.kernels`` to
it), else the environment variable ``TRIVHMC_KERNELS``, else ``eager``.
"""

from __future__ import annotations

import os
from importlib import import_module

from parallel.settings import SettingError

from .eager import EagerBackend

__all__ = [
    "BACKENDS",
    "BackendError",
    "EagerBackend",
    "available_backends",
    "get_backend",
    "make_backend",
    "set_backend",
]

#: backend name -> "module:class" (imported on first use; optional dependencies stay optional)
BACKENDS: dict[str, str] = {
    "eager": "kernels.backends.eager:EagerBackend",
    "soa": "kernels.backends.soa:SoABackend",
    "compiled": "kernels.backends.soa:CompiledSoABackend",
    "numba": "kernels.backends.fused:NumbaBackend",
    "vnode": "kernels.backends.vnode:VnodeBackend",
}

ENV_VAR = "TRIVHMC_KERNELS"

_active: EagerBackend | None = None


class BackendError(ValueError):
    """An unknown kernel backend, or one whose optional dependency is missing."""


def make_backend(name: str) -> EagerBackend:
    """A new instance of backend ``name`` (raises :class:`BackendError` with the reason)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown kernel backend {name!r}; known: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    try:
        return getattr(import_module(module), cls)()
    except ImportError as exc:
        raise BackendError(
            f"kernel backend {name!r} needs an optional dependency that is not installed "
            f"({exc}); install it (pip install 'trivhmc[fast]') or use 'eager'"
        ) from exc


def available_backends() -> list[str]:
    """Names of the backends that can be built here (their dependencies import)."""
    names = []
    for name in BACKENDS:
        try:
            make_backend(name)
        except BackendError:
            continue
        names.append(name)
    return names


def set_backend(name: str) -> EagerBackend:
    """Make ``name`` the active backend for every later kernel call; returns it."""
    global _active
    _active = make_backend(name)
    return _active


def get_backend() -> EagerBackend:
    """The active backend: the last :func:`set_backend`, else ``$TRIVHMC_KERNELS``, else eager."""
    global _active
    if _active is None:
        name = os.environ.get(ENV_VAR, "").strip() or "eager"
        try:
            _active = make_backend(name)
        except BackendError as exc:  # the environment's value: bad input, not a code error
            raise SettingError(f"{ENV_VAR}={name!r}: {exc}") from None
    return _active
