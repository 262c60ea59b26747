"""The 2D Schwinger model: compact U(1) gauge field + Nf = 2 degenerate Wilson fermions,
with pseudofermions (docs/conventions.md, "Schwinger model").

Weight ``exp(-S_G) det(D^+ D)``, ``S_G = beta sum_P (1 - cos theta_P)`` (as :mod:`.u1`), ``D``
the Wilson-Dirac operator of :mod:`kernels.fermions.wilson` (antiperiodic in t). The
determinant is represented by pseudofermions, one per action term:

* without Hasenbusch: term ``fermion``, ``S = phi^+ (D^+ D)^{-1} phi``, heatbath
  ``phi = D^+ chi``;
* with Hasenbusch masses ``hasenbusch: [k_0 < k_1 < ... < k_{n-1}] < kappa`` (Hasenbusch, PLB
  519 (2001) 177): ``det(D^+D) = det(D_0^+ D_0) prod_i det(D_i^+ D_i)/det(D_{i-1}^+ D_{i-1})
  x det(D^+ D)/det(D_{n-1}^+ D_{n-1})`` with ``D_i = D(k_i)``. Term ``hasenbusch_0`` is the
  plain pseudofermion of ``D_0``; term ``hasenbusch_i`` (``i >= 1``) and ``fermion`` are ratio
  terms of ``(M, M_1) = (D_i, D_{i-1})`` resp. ``(D, D_{n-1})``:

      S = phi^+ M_1 (M^+ M)^{-1} M_1^+ phi,    heatbath  phi = M_1^{-+} M^+ chi,

  (so that ``S = chi^+ chi`` at the start of the trajectory).

``chi`` is complex Gaussian with ``<|chi|^2> = 1`` per component, drawn from the site-keyed
RNG with purpose :data:`PURPOSE_PSEUDOFERMION` (all terms in one draw, term ``j`` takes slice
``j``), so every process grid draws the same pseudofermions.

Fermion force (derivation in docs/conventions.md). For spinors ``A, B`` let

    G_mu(x)[A, B; k] = d/dtheta_mu(x) 2 Re (A, D(k) B)
                     = 2 k Im[ U_mu(x) (A(x)^+ (1 - g_mu) B(x+mu) + B(x)^+ (1 + g_mu) A(x+mu)) ]

(shifts with the antiperiodic t boundary). With ``X = (M^+ M)^{-1} eta``, ``Y = M X``:
plain term ``F = -G[Y, X; k]`` (``eta = phi``); ratio term ``F = G[phi, X; k_1] - G[Y, X; k]``
(``eta = M_1^+ phi``).

Solver: CG on ``M^+ M`` (:func:`kernels.fermions.cg.conjugate_gradient`), zero start, relative
tolerance ``cg_tol``, cap ``cg_max_iter``. A chain whose solve does not converge gets NaN
action/force (HMC rejects and counts it) and is counted in the term's ``cg_failures``;
``cg_iterations`` (per chain, summed over every solve of the trajectory) is recorded.

Solve cache: the solve ``(M^+ M)^{-1} eta`` of the action and the force is kept (one per term)
together with a copy of the field it was made for and the pseudofermion object; an action or
force at a field equal to it (``torch.equal``) with the same pseudofermion reuses the solution.
In HMC this saves two CGs per term and trajectory (``S_F`` in ``H0`` and the first force at
the start field, the last force and ``S_F`` in ``H1`` at the end field); the solution is the
same bits as a new solve (CG is deterministic), so trajectories are unchanged.
``cache_solves=False`` turns it off.

Observables (per chain): those of :class:`.u1.U1Gauge` (plaquette, action, Q, Q_int, Q2), the
chiral condensate ``pbp = (1/V) Re tr D^{-1}`` (per flavour, spin trace, unsubtracted, hopping
normalisation) from ``n_noise`` complex Gaussian noise vectors (RNG purpose
:data:`PURPOSE_CONDENSATE_NOISE`, counter :attr:`Schwinger.noise_counter`), and the pion
correlator ``C(t) = sum_x sum_{s,s'} |D^{-1}(x, t; 0, 0)_{s s'}|^2`` (columns ``pion_C_<t>``;
:func:`effective_mass` gives ``m_eff``). Measurement solves use the even-odd Schur operator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from parallel import ProcessGrid, lattice_sum
from parallel.rng import PURPOSE_USER

from ..action import ActionTerm
from ..fermions.cg import CGResult, conjugate_gradient, redot
from ..fermions.wilson import WilsonDirac, apply_gamma
from .u1 import U1Gauge

#: RNG purpose of the pseudofermion heatbath noise ``chi``
PURPOSE_PSEUDOFERMION = PURPOSE_USER + 3
#: RNG purpose of the chiral-condensate noise vectors
PURPOSE_CONDENSATE_NOISE = PURPOSE_USER + 4


def complex_noise(
    rng,
    grid: ProcessGrid,
    purpose: int,
    counter: int,
    batch: int,
    lead: tuple[int, ...],
    chain_offset: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Complex Gaussian noise ``(a + i b)/sqrt 2`` with ``<|z|^2> = 1``, shape
    ``(B, *lead, 2, *local)`` (spin dim just before the lattice)."""
    g = rng.normal(
        grid,
        purpose,
        counter,
        batch,
        lead=(*lead, 2, 2),
        chain_offset=chain_offset,
        dtype=torch.float64,
        device=device,
    )
    # g: (B, *lead, 2 spin, 2 re/im, *local)
    n = len(lead)
    re = g.select(n + 2, 0)
    im = g.select(n + 2, 1)
    return torch.complex(re, im) / math.sqrt(2.0)


def hopping_derivative(
    op: WilsonDirac, a: torch.Tensor, b: torch.Tensor, kappa: float
) -> torch.Tensor:
    """``G_mu(x) = d/dtheta_mu(x) 2 Re (a, D(kappa) b)``, shape ``(B, 2, *local)`` real (see the
    module docstring; ``op`` supplies the links and the shifts)."""
    out = []
    for mu in range(2):
        u = op.u[:, mu]
        b_fwd = op._shift(b, mu, 1)
        a_fwd = op._shift(a, mu, 1)
        t1 = (a.conj() * (b_fwd - apply_gamma(mu, b_fwd))).sum(dim=1)
        t2 = (b.conj() * (a_fwd + apply_gamma(mu, a_fwd))).sum(dim=1)
        out.append(2.0 * kappa * (u * (t1 + t2)).imag)
    return torch.stack(out, dim=1)


class GaugeTerm(ActionTerm):
    """``S_G`` (the U(1) Wilson action) as the term ``gauge``."""

    name = "gauge"

    def __init__(self, theory: Schwinger) -> None:
        self.theory = theory

    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """The U(1) Wilson action ``beta sum_P (1 - cos theta_P)``."""
        return U1Gauge.action(self.theory, theta)

    def force(self, theta: torch.Tensor) -> torch.Tensor:
        """The U(1) Wilson force ``dS_G/dtheta``."""
        return U1Gauge.force(self.theory, theta)


class PseudofermionTerm(ActionTerm):
    """One pseudofermion term: plain (``kappa_1 is None``) or Hasenbusch ratio (module doc)."""

    def __init__(
        self, theory: Schwinger, name: str, index: int, kappa: float, kappa_1: float | None
    ) -> None:
        self.theory = theory
        self.name = name
        self.index = index
        self.kappa = float(kappa)
        self.kappa_1 = None if kappa_1 is None else float(kappa_1)
        self.phi: torch.Tensor | None = None
        #: ``(field copy, phi, CGResult)`` of the last action/force solve (module docstring)
        self._cache: tuple[torch.Tensor, torch.Tensor, CGResult] | None = None
        self.reset_costs()

    # ------------------------------------------------------------ solver and costs
    def _solve(self, op: WilsonDirac, rhs: torch.Tensor) -> CGResult:
        th = self.theory
        res = conjugate_gradient(op.normal, rhs, th.grid, th.cg_tol, th.cg_max_iter)
        self._count(res)
        return res

    def _count(self, res: CGResult) -> None:
        it = res.iterations.cpu()
        fail = (~res.converged).to(torch.int64).cpu()
        if self._iters is None or self._iters.shape != it.shape:
            self._iters, self._fails = it.clone(), fail.clone()
        else:
            self._iters += it
            self._fails += fail

    def costs(self) -> dict[str, torch.Tensor]:
        """``cg_iterations`` and ``cg_failures`` per chain since :meth:`reset_costs`."""
        if self._iters is None:
            return {}
        return {"cg_iterations": self._iters.clone(), "cg_failures": self._fails.clone()}

    def reset_costs(self) -> None:
        """Zero the CG counters."""
        self._iters: torch.Tensor | None = None
        self._fails: torch.Tensor | None = None

    # ------------------------------------------------------------ heatbath
    def refresh(
        self,
        theta: torch.Tensor,
        rng,
        counter: int,
        chain_offset: int = 0,
        purpose: int | None = None,
    ) -> None:
        """``phi = M^+ chi`` (plain) or ``phi = M_1^{-+} M^+ chi`` (ratio); ``chi`` drawn with
        ``purpose`` (default :data:`PURPOSE_PSEUDOFERMION`, the one HMC uses)."""
        th = self.theory
        self._cache = None
        chi = complex_noise(
            rng,
            th.grid,
            PURPOSE_PSEUDOFERMION if purpose is None else purpose,
            counter,
            theta.shape[0],
            (len(th.action_terms()) - 1,),
            chain_offset,
            th.device,
        )[:, self.index]
        op = th.dirac(theta, self.kappa)
        eta = op.apply_dag(chi)
        if self.kappa_1 is None:
            self.phi = eta
            return
        # M_1^{-+} eta = M_1 (M_1^+ M_1)^{-1} eta
        op1 = th.dirac(theta, self.kappa_1)
        res = self._solve(op1, eta)
        phi = op1.apply(res.x)
        bad = ~res.converged
        if bool(bad.any()):
            phi = torch.where(bad.view(-1, 1, 1, 1), torch.full_like(phi, math.nan), phi)
        self.phi = phi

    def _require_phi(self, theta: torch.Tensor) -> torch.Tensor:
        if self.phi is None or self.phi.shape[0] != theta.shape[0]:
            raise RuntimeError(
                f"action term {self.name!r}: no pseudofermion for this batch; call "
                f"theory.refresh(field, rng, counter) first"
            )
        return self.phi

    def _eta(
        self, theta: torch.Tensor, differentiable: bool = False
    ) -> tuple[WilsonDirac, torch.Tensor]:
        """``(M, eta)``: ``eta = phi`` (plain) or ``M_1^+ phi`` (ratio)."""
        phi = self._require_phi(theta)
        op = self.theory.dirac(theta, self.kappa, differentiable)
        if self.kappa_1 is None:
            return op, phi
        return op, self.theory.dirac(theta, self.kappa_1, differentiable).apply_dag(phi)

    def force_of_solution(
        self, theta: torch.Tensor, op: WilsonDirac, x: torch.Tensor, differentiable: bool = False
    ) -> torch.Tensor:
        """``dS/dtheta`` given ``x = (M^+ M)^{-1} eta``: ``-G[M x, x; k]`` (plain), plus
        ``G[phi, x; k_1]`` (ratio); with ``differentiable`` links and ``x`` it is
        differentiable in ``theta`` (kernels/fermions/implicit.py)."""
        f = -hopping_derivative(op, op.apply(x), x, self.kappa)
        if self.kappa_1 is not None:
            op1 = self.theory.dirac(theta, self.kappa_1, differentiable)
            f = f + hopping_derivative(op1, self.phi, x, self.kappa_1)
        return f

    def _solve_eta(self, theta: torch.Tensor) -> tuple[WilsonDirac, torch.Tensor, CGResult]:
        """``(M, eta, CG of M^+ M x = eta)``, from the cache when ``theta`` and ``phi`` are
        those of the last solve (module docstring)."""
        op, eta = self._eta(theta)
        key = theta.detach()
        c = self._cache
        if (
            c is not None
            and c[1] is self.phi
            and c[0].shape == key.shape
            and c[0].dtype == key.dtype
            and torch.equal(c[0], key)
        ):
            return op, eta, c[2]
        res = self._solve(op, eta)
        if self.theory.cache_solves:
            self._cache = (key.clone(), self.phi, res)
        return op, eta, res

    # ------------------------------------------------------------ action and force
    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """``S = (eta, (M^+ M)^{-1} eta)`` with ``eta = phi`` or ``M_1^+ phi``."""
        op, eta, res = self._solve_eta(theta)
        s = redot(eta, res.x, self.theory.grid)
        return torch.where(res.converged, s, torch.full_like(s, math.nan))

    def force(self, theta: torch.Tensor) -> torch.Tensor:
        """Analytic ``dS/dtheta`` from one CG solve (NaN for chains whose CG did not converge)."""
        op, eta, res = self._solve_eta(theta)
        f = self.force_of_solution(theta, op, res.x).to(theta.dtype)
        bad = ~res.converged
        if bool(bad.any()):
            f = torch.where(bad.view(-1, 1, 1, 1), torch.full_like(f, math.nan), f)
        return f


class Schwinger(U1Gauge):
    """2D U(1) gauge + Nf = 2 Wilson fermions with pseudofermions (module docstring)."""

    name = "schwinger"

    def __init__(
        self,
        grid: ProcessGrid,
        beta: float,
        kappa: float,
        hasenbusch: Sequence[float] = (),
        cg_tol: float = 1e-10,
        cg_max_iter: int = 2000,
        n_noise: int = 4,
        noise_seed: int = 0,
        pion: bool = True,
        cache_solves: bool = True,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(grid, beta, dtype=dtype, device=device)
        if grid.ndim != 2:
            raise ValueError(f"the Schwinger model is 2D, lattice {list(grid.shape)}")
        if any(n % 2 for n in grid.shape):
            raise ValueError(f"the Schwinger model needs even extents, got {list(grid.shape)}")
        self.kappa = float(kappa)
        if not 0.0 <= self.kappa < 0.5:
            raise ValueError(f"kappa must be in [0, 0.5) (free critical kappa 1/4), got {kappa}")
        hb = [float(k) for k in hasenbusch]
        if any(not 0.0 < k < self.kappa for k in hb) or hb != sorted(set(hb)):
            raise ValueError(
                f"hasenbusch kappas must be strictly increasing, > 0 and below kappa = "
                f"{self.kappa}, got {list(hasenbusch)}"
            )
        self.hasenbusch = hb
        if not cg_tol > 0 or int(cg_max_iter) < 1:
            raise ValueError(
                f"cg_tol must be > 0 and cg_max_iter >= 1, got {cg_tol}, {cg_max_iter}"
            )
        self.cg_tol = float(cg_tol)
        self.cg_max_iter = int(cg_max_iter)
        if int(n_noise) < 1:
            raise ValueError(f"n_noise must be >= 1, got {n_noise}")
        self.n_noise = int(n_noise)
        self.noise_seed = int(noise_seed)
        #: counter of the condensate noise (set it per measurement for fresh noise)
        self.noise_counter = 0
        self.pion = bool(pion)
        #: reuse the action/force solve at an unchanged field (module docstring)
        self.cache_solves = bool(cache_solves)
        terms: list[ActionTerm] = [GaugeTerm(self)]
        kappas = hb + [self.kappa]
        for i, k in enumerate(kappas):
            name = "fermion" if i == len(hb) else f"hasenbusch_{i}"
            terms.append(PseudofermionTerm(self, name, i, k, None if i == 0 else kappas[i - 1]))
        self._terms = terms

    @property
    def params(self) -> dict[str, object]:
        """``beta``, ``kappa`` and the Hasenbusch kappas."""
        out: dict[str, object] = {"beta": self.beta, "kappa": self.kappa}
        if self.hasenbusch:
            out["hasenbusch"] = list(self.hasenbusch)
        return out

    def dirac(
        self, theta: torch.Tensor, kappa: float | None = None, differentiable: bool = False
    ) -> WilsonDirac:
        """The Wilson-Dirac operator on ``theta`` (default: the theory's ``kappa``; links
        differentiable in ``theta`` if ``differentiable``)."""
        k = self.kappa if kappa is None else kappa
        return WilsonDirac(self.grid, theta, k, differentiable=differentiable)

    # ------------------------------------------------------------ action terms
    def action_terms(self) -> list[ActionTerm]:
        """``gauge``, ``fermion`` and ``hasenbusch_<i>`` (the same objects on every call)."""
        return self._terms

    def pseudofermion_terms(self) -> list[PseudofermionTerm]:
        """The pseudofermion terms (fermion and Hasenbusch)."""
        return [t for t in self._terms if isinstance(t, PseudofermionTerm)]

    def action(self, theta: torch.Tensor) -> torch.Tensor:
        """``S_G + sum S_F`` with the current pseudofermions."""
        out = self._terms[0].action(theta)
        for t in self._terms[1:]:
            out = out + t.action(theta)
        return out

    def force(self, theta: torch.Tensor) -> torch.Tensor:
        """The total force with the current pseudofermions."""
        out = self._terms[0].force(theta)
        for t in self._terms[1:]:
            out = out + t.force(theta)
        return out

    def gauge_action(self, theta: torch.Tensor) -> torch.Tensor:
        """The gauge action ``S_G`` alone."""
        return U1Gauge.action(self, theta)

    # ------------------------------------------------------------ propagators
    def solve(self, theta: torch.Tensor, b: torch.Tensor, what: str = "D^-1") -> torch.Tensor:
        """``x = D^{-1} b`` through the even-odd Schur complement (CG on ``D_hat^+ D_hat``);
        raises :class:`kernels.fermions.cg.CGNotConverged` when it does not converge."""
        op = self.dirac(theta)
        rhs = op.schur_rhs(b)
        res = conjugate_gradient(
            op.schur_normal, op.schur_dag(rhs), self.grid, self.cg_tol, self.cg_max_iter
        )
        res.check(what)
        return op.schur_reconstruct(b, res.x)

    def chiral_condensate(
        self,
        theta: torch.Tensor,
        rng=None,
        counter: int | None = None,
        n_noise: int | None = None,
        chain_offset: int = 0,
    ) -> torch.Tensor:
        """Stochastic ``(1/V) Re tr D^{-1} = (1/(V N)) sum_j Re eta_j^+ D^{-1} eta_j``."""
        from parallel.rng import SiteRNG

        rng = SiteRNG(self.noise_seed) if rng is None else rng
        counter = self.noise_counter if counter is None else counter
        n = self.n_noise if n_noise is None else int(n_noise)
        batch = theta.shape[0]
        eta = complex_noise(
            rng,
            self.grid,
            PURPOSE_CONDENSATE_NOISE,
            counter,
            batch,
            (n,),
            chain_offset,
            self.device,
        )
        eta = eta.reshape(batch * n, 2, *self.grid.local_shape)
        th = theta.repeat_interleave(n, dim=0)
        x = self.solve(th, eta, "chiral condensate D^-1")
        est = redot(eta, x, self.grid).reshape(batch, n).mean(dim=1)
        return est / self.grid.volume

    def pion_correlator(self, theta: torch.Tensor) -> torch.Tensor:
        """``C(t) = sum_x tr |D^{-1}(x, t; 0)|^2`` per chain, shape ``(B, Lt)`` (global t)."""
        batch = theta.shape[0]
        src = torch.zeros(
            (batch * 2, 2, *self.grid.local_shape), dtype=torch.complex128, device=self.device
        )
        if self.grid.offset == (0, 0):
            for s in range(2):
                src[s::2, s, 0, 0] = 1.0
        th = theta.repeat_interleave(2, dim=0)
        x = self.solve(th, src, "pion propagator D^-1")
        dens = (x.real**2 + x.imag**2).sum(dim=1).reshape(batch, 2, *self.grid.local_shape)
        dens = dens.sum(dim=1)  # (B, Lx, lt)
        lt = self.grid.shape[1]
        ct = torch.as_tensor(self.grid.global_coords[1], device=self.device)
        onehot = ct.unsqueeze(0) == torch.arange(lt, device=self.device).view(lt, 1, 1)
        # (B, Lt, Lx, lt_local): the sum over x and the local t of one global time slice
        return lattice_sum(dens.unsqueeze(1) * onehot.to(dens.dtype), self.grid, 2)

    def observables(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The U(1) observables plus ``pbp`` and (``pion``) ``pion_C_<t>``, ``t = 0..Lt-1``."""
        out = super().observables(theta)
        with torch.no_grad():
            out["pbp"] = self.chiral_condensate(theta)
            if self.pion:
                c = self.pion_correlator(theta)
                for t in range(c.shape[1]):
                    out[f"pion_C_{t}"] = c[:, t]
        return out


def effective_mass(c: torch.Tensor) -> torch.Tensor:
    """``m_eff(t) = log(C(t) / C(t+1))`` along the last axis (length ``Lt - 1``)."""
    return torch.log(c[..., :-1] / c[..., 1:])
