"""Wilson (gradient) flow of SU(3) gauge fields and the observables measured along it.

Flow equation (Luscher, JHEP 1008 (2010) 071, eq. (1.3) with the Wilson action
``S_w = (1/g0^2) sum_p Re tr(1 - V(p))`` over oriented plaquettes, i.e. ``g0^2 S_w`` is
the Wilson action of kernels/theories/su3.py at ``beta = 6``)::

    dV_mu(x)/dt = Z_mu(x) V_mu(x),   Z = -g0^2 d_{x,mu} S_w(V) = -TA(V_mu(x) A_mu(x))

with the Lie derivative ``d`` and staple sum ``A`` of kernels/theories/su3.py (a
``c1 != 0`` rectangle term gives the Symanzik/Iwasaki-type flows; default 0). Integrator:
Luscher's third-order Runge-Kutta scheme (eqs. (C.1)-(C.3))::

    W0 = V_t
    W1 = exp(1/4 Z0) W0
    W2 = exp(8/9 Z1 - 17/36 Z0) W1
    V_{t+eps} = exp(3/4 Z2 - 8/9 Z1 + 17/36 Z0) W2,      Z_i = eps Z(W_i)

Clover field strength (traceless, as in openQCD)::

    G_{mu nu}(x) = (1/4) TA(Q_{mu nu}(x)) = (1/8) [Q - Q^+]_traceless

``Q_{mu nu}(x)`` the sum of the four plaquettes in the ``(mu, nu)`` plane that start and end
at ``x``, all with the same orientation. Energy densities (averaged over the lattice)::

    E_clover = -(1/2) sum_{mu,nu} tr(G_{mu nu} G_{mu nu}) = sum_{mu<nu} sum_ij |G_{mu nu, ij}|^2
    E_plaq   = 2 sum_{mu<nu} Re tr(1 - U_{mu nu}(x)) = 2 sum_{mu<nu} (3 - Re Tr U_{mu nu})

(Luscher 2010: both are lattice versions of ``E = -(1/2) tr G_{mu nu} G_{mu nu}``).
The factor 2 of ``E_plaq`` follows from the small-``a`` expansion: ``U_{mu nu} = exp(a^2
G_{mu nu} + ...)`` with traceless anti-hermitian ``G`` gives ``Re tr(1 - U_{mu nu}) =
-(a^4/2) tr G_{mu nu}^2 + O(a^6)``, and ``-(1/2) sum_{mu,nu} = -sum_{mu<nu}``. Equivalently
``E_plaq`` is the Wilson action density, ``S_w = (1/g0^2) sum_x E_plaq(x)``, i.e.
``E_plaq = 36 (1 - P)`` for the average plaquette ``P = <Re Tr U_{mu nu}> / 3`` in 4D; at
weak coupling equipartition ``<S_w> = (N^2 - 1)(d - 1) V / 2`` gives ``<E_plaq> = 12 g0^2``
(``1 - P = g0^2 / 3 = 2 / beta``). The clover topological charge (4D)::

    Q = -(1 / 32 pi^2) sum_x eps_{mu nu rho sigma} tr(G_{mu nu} G_{rho sigma})
      = -(1 / 4 pi^2) sum_x tr(G_01 G_23 + G_02 G_31 + G_03 G_12)

normalised so that an abelian field with ``n_12`` / ``n_34`` flux quanta per colour gives
``Q -> sum_c n12_c n34_c`` as the lattice becomes fine.

Scales: ``t0`` solves ``t^2 E(t) = 0.3`` (Luscher 2010); ``w0`` solves
``W(t) = t d/dt [t^2 E(t)] = 0.3`` at ``t = w0^2`` (BMW, Borsanyi et al., JHEP 1209 (2012)
010). ``W`` is taken from the measured history by second-order finite differences
(:func:`numpy.gradient`, one-sided at the ends), so the measurements should be dense
(``measure_every = 1``); the crossing is linearly interpolated between measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from parallel import ProcessGrid, lattice_sum, shift

from .backends import get_backend
from .groups.su_n import dagger, mm, project_ta, su_expm
from .theories.su3 import staple_sum

NC = 3

__all__ = [
    "FlowResult",
    "clover_field_strength",
    "energy_density",
    "flow_generator",
    "flow_step_euler",
    "flow_step_rk3",
    "plaquette_energy_density",
    "t0_from_flow",
    "w0_from_flow",
    "t_dt_t2e",
    "topological_charge",
    "wilson_flow",
]


def _sh(x: torch.Tensor, grid: ProcessGrid, mu: int, k: int) -> torch.Tensor:
    return shift(x, grid, mu, k, first=1)


def _lattice_mean(x: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """Mean over the global lattice of a per-site ``(B, *local)`` density, shape ``(B,)``."""
    return lattice_sum(x, grid, 1) / grid.volume  # exact: grid-independent records


# --------------------------------------------------------------------------- flow
def flow_generator(u: torch.Tensor, grid: ProcessGrid, c1: float = 0.0) -> torch.Tensor:
    """``Z(V) = -g0^2 d S_w(V) = -TA(V A)`` (staples with ``c0 = 1 - 8 c1``, ``c1``)."""
    return -project_ta(mm(u, staple_sum(u, grid, 1.0 - 8.0 * c1, c1)))


def flow_step_rk3(u: torch.Tensor, grid: ProcessGrid, eps: float, c1: float = 0.0) -> torch.Tensor:
    """One step of Luscher's RK3 integrator (eqs. (C.1)-(C.3)), local error ``O(eps^4)``:
    :func:`kernels.backends.eager.flow_step_rk3` with this module's generator."""
    from .backends.eager import flow_step_rk3 as rk3

    return rk3(u, grid, eps, c1, flow_generator)


def flow_step_euler(
    u: torch.Tensor, grid: ProcessGrid, eps: float, c1: float = 0.0
) -> torch.Tensor:
    """One Lie-Euler step ``V -> exp(eps Z(V)) V`` (first order; a cross-check of RK3)."""
    return mm(su_expm(eps * flow_generator(u, grid, c1)), u)


# --------------------------------------------------------------------------- observables
def clover_field_strength(
    u: torch.Tensor, grid: ProcessGrid
) -> dict[tuple[int, int], torch.Tensor]:
    """``G_{mu nu}(x) = TA(Q_{mu nu}(x)) / 4`` for ``mu < nu``, each ``(B, *local, 3, 3)``.

    The four leaves, starting and ending at ``x`` in the ``(mu, nu)`` plane: ``U_{mu nu}(x)``
    and the plaquettes at ``x - mu``, ``x - nu``, ``x - mu - nu`` transported to ``x``
    (``U_mu(x-mu)^+ P(x-mu) U_mu(x-mu)``, ``U_nu(x-nu)^+ P(x-nu) U_nu(x-nu)``, and the
    second of these applied to the first leaf shifted by ``-nu``).
    """
    nd = u.shape[1]
    fwd = [shift(u, grid, mu, 1, first=2) for mu in range(nd)]
    out = {}
    for mu in range(nd):
        umu = u[:, mu]
        for nu in range(mu + 1, nd):
            unu = u[:, nu]
            p = mm(mm(umu, fwd[mu][:, nu]), dagger(mm(unu, fwd[nu][:, mu])))
            leaf_mu = _sh(mm(mm(dagger(umu), p), umu), grid, mu, -1)  # plaquette at x - mu
            leaf_nu = _sh(mm(mm(dagger(unu), p), unu), grid, nu, -1)  # plaquette at x - nu
            leaf_mn = _sh(mm(mm(dagger(unu), leaf_mu), unu), grid, nu, -1)  # at x - mu - nu
            out[(mu, nu)] = 0.25 * project_ta(p + leaf_mu + leaf_nu + leaf_mn)
    return out


def energy_density(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """Clover ``E = -(1/2) sum_{mu nu} tr G_{mu nu}^2``, lattice average per chain ``(B,)``."""
    return _lattice_mean(get_backend().su3_clover_density(u, grid), grid)


def plaquette_energy_density(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """``E = 2 sum_{mu<nu} (3 - Re Tr U_{mu nu})`` (``-(1/2) tr G G`` to ``O(a^2)``, module
    docstring), lattice average per chain ``(B,)``."""
    return _lattice_mean(2.0 * get_backend().su3_action_density(u, grid, 1.0, 0.0), grid)


def topological_charge(u: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """Clover ``Q = -(1/4pi^2) sum_x tr(G01 G23 + G02 G31 + G03 G12)`` per chain (4D only)."""
    if u.shape[1] != 4:
        raise ValueError(f"the topological charge needs a 4D lattice, got {u.shape[1]} dims")
    dens = get_backend().su3_clover_charge_density(u, grid)
    return -lattice_sum(dens, grid, 1) / (4.0 * math.pi**2)  # exact: grid-independent


# --------------------------------------------------------------------------- driver
@dataclass
class FlowResult:
    """Measurements along a flow: ``t`` (n,), per-chain arrays of shape ``(n, B)``."""

    t: np.ndarray
    e_clover: np.ndarray
    e_plaq: np.ndarray
    q: np.ndarray | None = None
    #: clover Q per chain at the requested flow times (``charge_times``), ``{t: (B,)}``
    q_at: dict[float, np.ndarray] = field(default_factory=dict)
    field: torch.Tensor | None = field(default=None, repr=False)

    @property
    def t2e(self) -> np.ndarray:
        """``t^2 E_clover(t)``, shape ``(n, B)``."""
        return self.t[:, None] ** 2 * self.e_clover

    @property
    def tdt2e(self) -> np.ndarray:
        """``W(t) = t d/dt [t^2 E_clover(t)]``, shape ``(n, B)`` (:func:`t_dt_t2e`)."""
        return t_dt_t2e(self.t, self.t2e)

    def t0(self, target: float = 0.3) -> np.ndarray:
        """``t0`` per chain from the clover ``t^2 E`` (see :func:`t0_from_flow`)."""
        return t0_from_flow(self.t, self.t2e, target)

    def w0(self, target: float = 0.3) -> np.ndarray:
        """``w0`` per chain from the clover ``W(t)`` (see :func:`w0_from_flow`)."""
        return w0_from_flow(self.t, self.t2e, target)


def wilson_flow(
    u: torch.Tensor,
    grid: ProcessGrid,
    t_max: float,
    eps: float = 0.01,
    measure_every: int = 1,
    topology: bool = False,
    integrator: str = "rk3",
    c1: float = 0.0,
    charge_times: tuple[float, ...] = (),
) -> FlowResult:
    """Flow ``u`` to ``t_max`` in steps of ``eps``; measure E (clover and plaquette) and
    optionally the clover ``Q`` at ``t = 0`` and every ``measure_every`` steps (and at the end).
    ``charge_times``: flow times (multiples of ``eps``, ``<= t_max``) at which the clover
    ``Q`` is measured in any case (``FlowResult.q_at``).

    ``integrator`` is ``"rk3"`` (Luscher) or ``"euler"``. Runs without autograd.
    """
    # RK3 through the kernel backend (eager: bit for bit flow_step_rk3 above)
    steps = {"rk3": get_backend().su3_flow_step_rk3, "euler": flow_step_euler}
    if integrator not in steps:
        raise ValueError(f"unknown flow integrator {integrator!r}; known: {sorted(steps)}")
    step = steps[integrator]
    n_steps = int(round(t_max / eps))
    if n_steps < 1 or abs(n_steps * eps - t_max) > 1e-9 * max(1.0, t_max):
        raise ValueError(f"t_max = {t_max} is not a positive multiple of eps = {eps}")
    ts, ec, ep, qs = [], [], [], []
    q_steps = {}
    for tq in charge_times:
        k = int(round(tq / eps))
        if k < 0 or k > n_steps or abs(k * eps - tq) > 1e-9 * max(1.0, tq):
            raise ValueError(f"charge time {tq} is not a multiple of eps = {eps} in [0, {t_max}]")
        q_steps.setdefault(k, []).append(float(tq))
    q_at: dict[float, np.ndarray] = {}

    def charge(v: torch.Tensor, n: int) -> None:
        if n in q_steps:
            q = topological_charge(v, grid).cpu().numpy()
            for tq in q_steps[n]:
                q_at[tq] = q

    def measure(v: torch.Tensor, t: float) -> None:
        ts.append(t)
        ec.append(energy_density(v, grid).cpu().numpy())
        ep.append(plaquette_energy_density(v, grid).cpu().numpy())
        if topology:
            qs.append(topological_charge(v, grid).cpu().numpy())

    with torch.no_grad():
        hook = getattr(get_backend(), "su3_resident_flow", None)
        resident = hook(u, grid, c1) if hook is not None and integrator == "rk3" else None
        if resident is not None:  # the backend's layout for the whole flow (vnode)
            v = _flow_resident(
                resident,
                grid,
                eps,
                n_steps,
                measure_every,
                q_steps,
                topology,
                (ts, ec, ep, qs, q_at),
            )
        else:
            v = u
            measure(v, 0.0)
            charge(v, 0)
            for n in range(1, n_steps + 1):
                v = step(v, grid, eps, c1)
                if n % measure_every == 0 or n == n_steps:
                    measure(v, n * eps)
                charge(v, n)
    return FlowResult(
        t=np.array(ts),
        e_clover=np.array(ec),
        e_plaq=np.array(ep),
        q=np.array(qs) if topology else None,
        field=v,
        q_at=q_at,
    )


def _flow_resident(flow, grid, eps, n_steps, measure_every, q_steps, topology, out):
    """The loop of :func:`wilson_flow` on a backend's resident flow (``step``,
    ``clover_density``, ``plaquette_density``, ``links``): the same measurements at the same
    steps, from the same per-site densities as :func:`energy_density`,
    :func:`plaquette_energy_density` and :func:`topological_charge`. Returns the links."""
    ts, ec, ep, qs, q_at = out

    def charge_now() -> np.ndarray:
        dens = flow.clover_density(charge=True)
        return (-lattice_sum(dens, grid, 1) / (4.0 * math.pi**2)).cpu().numpy()

    def measure(n: int) -> None:
        ts.append(n * eps)
        ec.append(_lattice_mean(flow.clover_density(), grid).cpu().numpy())
        ep.append(_lattice_mean(2.0 * flow.plaquette_density(), grid).cpu().numpy())
        q = charge_now() if topology or n in q_steps else None
        if topology:
            qs.append(q)
        for tq in q_steps.get(n, ()):
            q_at[tq] = q

    measure(0)
    for n in range(1, n_steps + 1):
        flow.step(eps)
        if n % measure_every == 0 or n == n_steps:
            measure(n)
        elif n in q_steps:
            q = charge_now()
            for tq in q_steps[n]:
                q_at[tq] = q
    return flow.links()


def t0_from_flow(t: np.ndarray, t2e: np.ndarray, target: float = 0.3) -> np.ndarray:
    """The first flow time where ``t^2 E`` reaches ``target``, by linear interpolation
    between the two measurements around the crossing; one value per chain (column).

    Raises ``ValueError`` naming the chains whose ``t^2 E`` stays below ``target``.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(t2e, dtype=float)
    if y.ndim == 1:
        return t0_from_flow(t, y[:, None], target)[0]
    out = np.empty(y.shape[1])
    missing = []
    for b in range(y.shape[1]):
        above = np.nonzero(y[:, b] >= target)[0]
        if above.size == 0 or above[0] == 0:
            if above.size == 0:
                missing.append(b)
                continue
            out[b] = t[0]
            continue
        i = above[0]
        t1, t2, y1, y2 = t[i - 1], t[i], y[i - 1, b], y[i, b]
        out[b] = t1 + (target - y1) * (t2 - t1) / (y2 - y1)
    if missing:
        raise ValueError(
            f"t^2 E(t) never reaches {target} up to t = {t[-1]:g} for chain(s) {missing} "
            f"(max {np.max(y[:, missing]):.4g}); flow longer or use a larger lattice"
        )
    return out


def t_dt_t2e(t: np.ndarray, t2e: np.ndarray) -> np.ndarray:
    """``W(t) = t d/dt [t^2 E(t)]`` from a measured history ``t2e`` of shape ``(n, B)`` (or
    ``(n,)``) at flow times ``t``: second-order finite differences (exact for quadratics)."""
    t = np.asarray(t, dtype=float)
    y = np.asarray(t2e, dtype=float)
    if len(t) < 3:
        raise ValueError("t d/dt t^2 E needs at least 3 measurements along the flow")
    d = np.gradient(y, t, axis=0, edge_order=2)
    return (t[:, None] * d) if y.ndim == 2 else t * d


def w0_from_flow(t: np.ndarray, t2e: np.ndarray, target: float = 0.3) -> np.ndarray:
    """``w0`` (lattice units, ``W(w0^2) = target``) per chain: the square root of the first
    flow time at which ``t d/dt t^2 E`` reaches ``target`` (linear interpolation)."""
    t = np.asarray(t, dtype=float)
    w = t_dt_t2e(t, t2e)
    try:
        return np.sqrt(t0_from_flow(t, w, target))
    except ValueError as exc:
        raise ValueError(str(exc).replace("t^2 E(t)", "t d/dt t^2 E(t)")) from None
