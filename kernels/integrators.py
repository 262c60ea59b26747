"""Molecular-dynamics integrators: leapfrog and Omelyan 2MN with nested time scales.

Equations of motion (kernels/theory.py): ``H = K(pi) + S(phi)``, ``dpi/dt = -F(phi)``,
``dphi/dt = pi`` (``dU/dt = P U``). A *kick* of length ``h`` is ``pi -> pi - h F(phi)``; a
*drift* of length ``h`` is ``phi -> theory.evolve_field(phi, pi, h)``. Both are exact flows of
a part of ``H``, so every scheme below is symplectic and time-reversible.

One step of size ``h`` (velocity form, kicks outside), each a palindrome of kicks and drifts:

* ``leapfrog``:    ``kick(h/2) drift(h) kick(h/2)``;
* ``omelyan`` (2MN): ``kick(lam h) drift(h/2) kick((1 - 2 lam) h) drift(h/2) kick(lam h)``,
  ``lam = 0.1931833`` (Omelyan, Mryglod, Folk, Comput. Phys. Commun. 151 (2003) 272, the
  minimum-norm value; Takaishi & de Forcrand, PRE 73 (2006) 036706 for lattice HMC);
* ``forest_ruth``: three leapfrog steps of sizes ``w1 h, w0 h, w1 h`` with
  ``w1 = 1 / (2 - 2^(1/3))``, ``w0 = 1 - 2 w1`` (Forest & Ruth 1990, Yoshida 1990), a
  fourth-order scheme (negative middle step), mainly a reference for the order tests.

Order: leapfrog and Omelyan 2MN are both *second-order* schemes: the shadow Hamiltonian is
``H + h^2 (a {S,S,T} + b {T,S,T}) + O(h^4)`` (nested Poisson brackets), with ``|a|, |b|`` =
``1/12, 1/24`` for leapfrog and ``|6 lam^2 - 6 lam + 1|/12 ~ 0.0054``, ``|1 - 6 lam|/24 ~
0.0066`` for 2MN, so over a
trajectory of fixed length ``dH = O(h^2)`` for both, 2MN with a ~10x smaller coefficient, and
at equilibrium ``<dH> = <dH^2>/2 + ... = O(h^4)``. Forest-Ruth gives ``dH = O(h^4)``.

Multiple time scales (Sexton & Weingarten, Nucl. Phys. B380 (1992) 665): the force is split
into terms ``F = F_0 + F_1 + ...``, each on its own :class:`Level`, outermost first (the
outermost takes the largest step: put there the expensive, small forces, e.g. fermions or a
flow, and the cheap stiff ones inside). Level ``k``
integrates a time interval ``T`` with ``n_k`` steps of size ``T / n_k`` of its scheme, its kicks
use ``F_k`` only, and every one of its drifts of length ``d`` is replaced by the integration of
level ``k+1`` over the time ``d`` (``n_{k+1}`` steps); the innermost level drifts the field.
So ``n_{k+1}`` counts the inner steps *per drift* of level ``k``: one drift per leapfrog step,
two (of half length) per Omelyan step. The innermost force is evaluated most often.

Force evaluations are cached per level on the identity of the field tensor (a kick does not
change the field), so the two kicks that meet between steps, and the inner kicks separated
only by an outer kick, cost one evaluation: a single-level leapfrog trajectory of ``n`` steps
evaluates the force ``n + 1`` times, Omelyan ``2 n + 1``, Forest-Ruth ``3 n + 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .theory import Theory

#: Omelyan, Mryglod & Folk 2MN minimum-norm parameter
OMELYAN_LAMBDA = 0.1931833

SCHEMES = ("leapfrog", "omelyan", "forest_ruth")

ForceFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Level:
    """One time scale: force term(s) and the number of steps per drift of the level above.

    ``force`` is one callable ``field -> force`` (in the theory's momentum space, the
    gradient ``dS_k/dfield`` of this level's part of the action) or a sequence of them, which
    are summed. For the outermost level ``n_steps`` is the number of steps per trajectory.
    ``scheme`` overrides the integrator's scheme on this level.
    """

    force: ForceFn | Sequence[ForceFn]
    n_steps: int
    scheme: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if int(self.n_steps) < 1:
            raise ValueError(f"Level {self.name!r}: n_steps must be >= 1, got {self.n_steps}")
        self.n_steps = int(self.n_steps)
        if self.scheme is not None and self.scheme not in SCHEMES:
            raise ValueError(f"unknown integrator scheme {self.scheme!r}; known: {SCHEMES}")

    def evaluate(self, phi: torch.Tensor) -> torch.Tensor:
        """The force of this level at ``phi`` (the sum of its terms)."""
        if callable(self.force):
            return self.force(phi)
        terms = [f(phi) for f in self.force]
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out


@dataclass
class IntegrationResult:
    """End point of one molecular-dynamics trajectory.

    ``nonfinite`` is a rank-local per-chain flag (shape ``(B,)``): some force on this rank had
    a NaN/Inf entry for that chain (reduce it over the domain group before deciding). It is
    read off the final momenta: every force is kicked into them (``pi -= h F``), and a NaN
    or infinity stays non-finite under any later kick, so one check per trajectory sees
    every force (and a NaN link, whose next force is NaN).
    ``force_evaluations`` counts evaluations per level, outermost first.
    """

    field: torch.Tensor
    momentum: torch.Tensor
    nonfinite: torch.Tensor
    force_evaluations: list[int] = field(default_factory=list)
    #: the theory's action ``(B,)`` at the start and at the end, when asked for
    #: (``integrate(actions=True)``) and the resident layout gave them; else None
    initial_action: torch.Tensor | None = None
    final_action: torch.Tensor | None = None


class Integrator:
    """Symplectic, reversible integrator with nested time scales.

    Parameters
    ----------
    theory:
        Provides the drift ``evolve_field(field, momentum, eps)`` (any :class:`Theory`,
        including a flow-transformed one). Where its ``resident_md`` offers a backend layout
        for the trajectory (:class:`kernels.theory.ResidentMD`), :meth:`integrate` runs in
        it: one conversion in and one out instead of one per force and drift.
    levels:
        The time scales, outermost first; ``levels[0].n_steps`` steps per trajectory.
    scheme:
        ``"omelyan"`` (2MN), ``"leapfrog"`` or ``"forest_ruth"``; default for levels that
        set none.
    trajectory_length:
        Default molecular-dynamics time ``tau`` of :meth:`integrate`.
    lam:
        The Omelyan parameter.
    """

    def __init__(
        self,
        theory: Theory,
        levels: Sequence[Level],
        scheme: str = "omelyan",
        trajectory_length: float = 1.0,
        lam: float = OMELYAN_LAMBDA,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown integrator scheme {scheme!r}; known: {SCHEMES}")
        if not levels:
            raise ValueError("an integrator needs at least one Level")
        if not trajectory_length > 0:
            raise ValueError(f"trajectory_length must be > 0, got {trajectory_length}")
        self.theory = theory
        self.levels = list(levels)
        self.scheme = scheme
        self.trajectory_length = float(trajectory_length)
        self.lam = float(lam)
        self._cache: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self._count: list[int] = []
        self._bad: torch.Tensor | None = None
        self._md = None

    # ------------------------------------------------------------ description
    @property
    def n_steps(self) -> int:
        """Outer steps per trajectory (``levels[0].n_steps``)."""
        return self.levels[0].n_steps

    def step_size(self, tau: float | None = None, n_steps: int | None = None) -> float:
        """Outer step size ``tau / n_steps``."""
        tau = self.trajectory_length if tau is None else tau
        return tau / (self.n_steps if n_steps is None else n_steps)

    def scheme_of(self, k: int) -> str:
        """The scheme of level ``k`` (its own, else the integrator's)."""
        return self.levels[k].scheme or self.scheme

    def __repr__(self) -> str:
        lv = ", ".join(
            f"{lv.name or k}:{self.scheme_of(k)}x{lv.n_steps}" for k, lv in enumerate(self.levels)
        )
        return f"Integrator(tau={self.trajectory_length}, levels=[{lv}])"

    # ------------------------------------------------------------ integration
    def integrate(
        self,
        field: torch.Tensor,
        momentum: torch.Tensor,
        tau: float | None = None,
        n_steps: int | None = None,
        actions: bool = False,
    ) -> IntegrationResult:
        """Integrate ``(field, momentum)`` over the time ``tau`` (default: the trajectory
        length); ``n_steps`` overrides the outer level's step count (step-size tuning).

        A negative ``tau`` integrates backwards. The inputs are not modified. With
        ``actions`` and a resident layout that computes the theory's action
        (:class:`kernels.theory.ResidentMD`), the result carries the action at the start and
        at the end (from the resident links: no conversion, and the halo exchanges of the
        first and last forces serve them); otherwise they are None.
        """
        tau = self.trajectory_length if tau is None else float(tau)
        n0 = self.levels[0].n_steps if n_steps is None else int(n_steps)
        if n0 < 1:
            raise ValueError(f"n_steps must be >= 1, got {n0}")
        self._cache = [None] * len(self.levels)
        self._count = [0] * len(self.levels)
        self._bad = torch.zeros(field.shape[0], dtype=torch.bool, device=field.device)
        # the backend's own layout for the whole trajectory where the theory offers one
        self._md = self.theory.resident_md(field, [lv.force for lv in self.levels])
        s0 = s1 = None
        try:
            if self._md is None:
                phi, pi = self._run_level(0, field, momentum.detach().clone(), tau, n0)
                self._check(pi)
            else:
                phi, pi = self._md.enter(field, momentum.detach())
                action = getattr(self._md, "action", None) if actions else None
                s0 = None if action is None else action(phi)
                phi, pi = self._run_level(0, phi, pi, tau, n0)
                s1 = None if s0 is None else action(phi)
                self._check(pi)
                phi, pi = self._md.leave(phi, pi)
        finally:
            self._cache = [None] * len(self.levels)
            self._md = None
        return IntegrationResult(phi, pi, self._bad, list(self._count), s0, s1)

    def _force(self, k: int, phi: torch.Tensor) -> torch.Tensor:
        cached = self._cache[k]
        if cached is not None and cached[0] is phi:
            return cached[1]
        f = (self.levels[k].evaluate(phi) if self._md is None else self._md.force(phi)).detach()
        self._count[k] += 1
        self._cache[k] = (phi, f)
        return f

    def _check(self, pi: torch.Tensor) -> None:
        """Per-chain finiteness of the final momenta (:class:`IntegrationResult`): a NaN/Inf
        anywhere makes the chain's sum non-finite."""
        self._bad |= ~torch.isfinite(pi.reshape(pi.shape[0], -1).sum(dim=1))

    def _kick(self, k: int, phi: torch.Tensor, pi: torch.Tensor, h: float) -> torch.Tensor:
        return pi.sub_(self._force(k, phi), alpha=h)

    def _drift(
        self, k: int, phi: torch.Tensor, pi: torch.Tensor, h: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if k + 1 == len(self.levels):
            if self._md is not None:
                return self._md.evolve(phi, pi, h), pi
            return self.theory.evolve_field(phi, pi, h), pi
        return self._run_level(k + 1, phi, pi, h, self.levels[k + 1].n_steps)

    def _run_level(
        self, k: int, phi: torch.Tensor, pi: torch.Tensor, t: float, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = t / n
        ops = _step_ops(self.scheme_of(k), self.lam)
        if len(self.levels) == 1 and getattr(self._md, "kick", None) is not None:
            return self._run_fused(phi, pi, h, _merged_kicks(ops, n))
        for _ in range(n):
            for op, c in ops:
                if op == "kick":
                    pi = self._kick(k, phi, pi, c * h)
                else:
                    phi, pi = self._drift(k, phi, pi, c * h)
        return phi, pi

    def _run_fused(
        self, phi: object, pi: torch.Tensor, h: float, ops: list[tuple[str, float]]
    ) -> tuple[object, torch.Tensor]:
        """One level in a resident layout with a fused force-and-kick (the optional ``kick``
        of :class:`kernels.theory.ResidentMD`): the kicks that meet at a step boundary are
        one kick (:func:`_merged_kicks`), so each force is computed once and used at once,
        never stored."""
        for op, c in ops:
            if op == "kick":
                pi = self._md.kick(phi, pi, c * h)
                self._count[0] += 1
            else:
                phi = self._md.evolve(phi, pi, c * h)
        return phi, pi


def _merged_kicks(ops: tuple[tuple[str, float], ...], n: int) -> list[tuple[str, float]]:
    """``n`` steps of ``ops`` with adjacent kicks (at the same field: the last kick of a
    step and the first of the next) merged into one of the summed size."""
    out: list[tuple[str, float]] = []
    for op, c in ops * n:
        if op == "kick" and out and out[-1][0] == "kick":
            out[-1] = ("kick", out[-1][1] + c)
        else:
            out.append((op, c))
    return out


def _step_ops(scheme: str, lam: float) -> tuple[tuple[str, float], ...]:
    """The palindromic kick/drift sequence of one step of size 1."""
    if scheme == "leapfrog":
        return (("kick", 0.5), ("drift", 1.0), ("kick", 0.5))
    if scheme == "omelyan":
        return (
            ("kick", lam),
            ("drift", 0.5),
            ("kick", 1.0 - 2.0 * lam),
            ("drift", 0.5),
            ("kick", lam),
        )
    if scheme == "forest_ruth":
        w1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
        w0 = 1.0 - 2.0 * w1
        return (
            ("kick", 0.5 * w1),
            ("drift", w1),
            ("kick", 0.5 * (w1 + w0)),
            ("drift", w0),
            ("kick", 0.5 * (w0 + w1)),
            ("drift", w1),
            ("kick", 0.5 * w1),
        )
    raise ValueError(f"unknown integrator scheme {scheme!r}; known: {SCHEMES}")


@dataclass(frozen=True)
class LevelSpec:
    """A time scale as a deck names it: the action terms it integrates, its step count
    (per drift of the level above; per trajectory for the outermost) and its scheme."""

    terms: tuple[str, ...]
    steps: int
    scheme: str | None = None


def make_integrator(
    theory: Theory,
    scheme: str = "omelyan",
    n_steps: int = 10,
    trajectory_length: float = 1.0,
    levels: Sequence[LevelSpec] | None = None,
) -> Integrator:
    """The integrator of a deck.

    Without ``levels``: a single time scale with the theory's full force, ``n_steps`` steps
    over ``trajectory_length``. With ``levels`` (outermost first): level ``k`` kicks with the
    summed force of its terms (:meth:`Theory.term_force`) and takes ``levels[k].steps`` steps;
    ``n_steps`` is then ignored in favour of ``levels[0].steps``. Every action term of the
    theory must appear on exactly one level.
    """
    if not levels:
        return Integrator(
            theory,
            [Level(theory.force, n_steps, name=getattr(theory, "name", "force"))],
            scheme=scheme,
            trajectory_length=trajectory_length,
        )
    known = [t.name for t in theory.action_terms()]
    seen: list[str] = []
    for spec in levels:
        seen.extend(spec.terms)
    missing = [n for n in known if n not in seen]
    doubled = sorted({n for n in seen if seen.count(n) > 1})
    unknown = [n for n in seen if n not in known]
    if missing or doubled or unknown:
        raise ValueError(
            f"integrator levels must name every action term of {theory.name!r} once "
            f"(terms: {known}); missing {missing}, repeated {doubled}, unknown {unknown}"
        )
    built = [
        Level(theory.term_force(list(spec.terms)), spec.steps, spec.scheme, "+".join(spec.terms))
        for spec in levels
    ]
    return Integrator(theory, built, scheme=scheme, trajectory_length=trajectory_length)
