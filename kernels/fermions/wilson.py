"""The 2D Wilson-Dirac operator with U(1) links (hopping form, r = 1), batched and
matrix-free, distributed through :func:`parallel.shift`.

Conventions (docs/conventions.md, "Schwinger model"): axes ``(x, t) = (0, 1)``, links
``U_mu(x) = exp(i theta_mu(x))`` from angles of layout ``(B, 2, Lx, Lt)``, spinors of layout
``(B, 2, Lx, Lt)`` complex (dim 1 = spin), and

    D psi(x) = psi(x) - kappa sum_mu [ (1 - g_mu) U_mu(x) psi(x + mu)
                                     + (1 + g_mu) U_mu(x - mu)^* psi(x - mu) ]

with ``g_0 = sigma_1``, ``g_1 = sigma_2``, ``g_5 = sigma_3``. Spinors are periodic in ``x`` and
**antiperiodic in t**: the sign is applied by the shift when a hop crosses the *global* t
boundary (:func:`parallel.shift` with ``bc = (periodic, antiperiodic)``), so it is right on
every process grid.

The adjoint is ``D^+ = g5 D g5``, i.e. the same hopping with ``g_mu -> -g_mu``; it is applied
directly (``sign = -1`` below), not through ``g5``, so the tests can check the identity.

Even-odd: with the parity ``p(x) = (x_0 + x_1) mod 2`` of the *global* site (even extents
required) the hopping term ``H`` (``D = 1 - kappa H``) only connects opposite parities, so

    D = [[1, -kappa H_eo], [-kappa H_oe, 1]],   det D = det D_hat,
    D_hat = 1 - kappa^2 H_oe H_eo                (on the odd sites),

and ``D x = b`` is solved by ``D_hat x_o = b_o + kappa H_oe b_e``, ``x_e = b_e + kappa H_eo x_o``.
Here ``D_hat`` acts on full-lattice spinors that vanish on the even sites (masks), which keeps
the layout of the halo exchange unchanged.
"""

from __future__ import annotations

import torch

from parallel import ProcessGrid, shift

#: fermion boundary conditions per axis (x periodic, t antiperiodic)
FERMION_BC = ("periodic", "antiperiodic")

#: gamma matrices (g_0, g_1, g_5) = (sigma_1, sigma_2, sigma_3)
GAMMA = (
    torch.tensor([[0, 1], [1, 0]], dtype=torch.complex128),
    torch.tensor([[0, -1j], [1j, 0]], dtype=torch.complex128),
    torch.tensor([[1, 0], [0, -1]], dtype=torch.complex128),
)


def apply_gamma(mu: int, psi: torch.Tensor) -> torch.Tensor:
    """``g_mu psi`` on spin dim 1 (``mu`` = 0, 1, or 5): ``sigma_1 psi = (psi_1, psi_0)``,
    ``sigma_2 psi = (-i psi_1, i psi_0)``, ``sigma_3 psi = (psi_0, -psi_1)``."""
    p0, p1 = psi[:, 0], psi[:, 1]
    if mu == 0:
        return torch.stack((p1, p0), dim=1)
    if mu == 1:
        return torch.stack((-1j * p1, 1j * p0), dim=1)
    if mu == 5:
        return torch.stack((p0, -p1), dim=1)
    raise ValueError(f"no gamma matrix g_{mu} in 2D (0, 1 or 5)")


class WilsonDirac:
    """``D[U]`` for a batch of U(1) gauge fields ``theta`` (layout ``(B, 2, Lx, Lt)``).

    All methods take and return spinors of layout ``(B, 2, Lx, Lt)`` (complex, local block).
    The links are detached from ``theta`` unless ``differentiable`` (dense log-dets by autograd).
    """

    first = 2  # lattice axis 0 of a spinor

    def __init__(
        self,
        grid: ProcessGrid,
        theta: torch.Tensor,
        kappa: float,
        bc: tuple[str, str] = FERMION_BC,
        differentiable: bool = False,
    ) -> None:
        if grid.ndim != 2:
            raise ValueError(f"the Wilson-Dirac operator here is 2D, lattice {grid.shape}")
        self.grid = grid
        self.kappa = float(kappa)
        #: spinor boundary conditions per axis (the physics default: :data:`FERMION_BC`)
        self.bc = tuple(bc)
        if not differentiable:
            theta = theta.detach()
        cdtype = torch.complex128 if theta.dtype == torch.float64 else torch.complex64
        self.dtype = cdtype
        #: links ``U_mu(x)``, shape ``(B, 2, Lx, Lt)``
        self.u = torch.polar(torch.ones_like(theta), theta).to(cdtype)
        self.u_conj = self.u.conj()
        self._parity: torch.Tensor | None = None
        self._proj: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # ------------------------------------------------------------ building blocks
    def _shift(self, psi: torch.Tensor, mu: int, k: int) -> torch.Tensor:
        return shift(psi, self.grid, mu, k, first=self.first, bc=self.bc)

    def _projectors(self, sign: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(1 - s g_mu), (1 + s g_mu)]`` per ``mu`` as ``(2, 2)`` matrices."""
        key = int(sign)
        if key not in self._proj:
            one = torch.eye(2, dtype=self.dtype, device=self.u.device)
            self._proj[key] = [
                (one - key * GAMMA[mu].to(one), one + key * GAMMA[mu].to(one)) for mu in range(2)
            ]
        return self._proj[key]

    def hop(self, psi: torch.Tensor, sign: int = 1) -> torch.Tensor:
        """``H psi = sum_mu [(1 - s g_mu) U_mu(x) psi(x+mu) + (1 + s g_mu) U_mu(x-mu)^*
        psi(x-mu)]``; ``s = +1`` is the hopping term of ``D``, ``s = -1`` that of ``D^+``."""
        batch = psi.shape[0]
        out = None
        for mu, (p_fwd, p_bwd) in enumerate(self._projectors(sign)):
            fwd = self.u[:, mu].unsqueeze(1) * self._shift(psi, mu, 1)
            bwd = self._shift(self.u_conj[:, mu].unsqueeze(1) * psi, mu, -1)
            # spin matrices on dim 1: (2, 2) @ (B, 2, V)
            term = p_fwd @ fwd.reshape(batch, 2, -1) + p_bwd @ bwd.reshape(batch, 2, -1)
            out = term if out is None else out + term
        return out.reshape(psi.shape)

    # ------------------------------------------------------------ the operator
    def apply(self, psi: torch.Tensor) -> torch.Tensor:
        """``D psi``."""
        return psi - self.kappa * self.hop(psi, 1)

    def apply_dag(self, psi: torch.Tensor) -> torch.Tensor:
        """``D^+ psi`` (hopping with ``g_mu -> -g_mu``)."""
        return psi - self.kappa * self.hop(psi, -1)

    def normal(self, psi: torch.Tensor) -> torch.Tensor:
        """``D^+ D psi`` (Hermitian, positive definite for ``|kappa|`` below critical)."""
        return self.apply_dag(self.apply(psi))

    # ------------------------------------------------------------ even-odd
    def parity(self) -> torch.Tensor:
        """``p(x) = (x_0 + x_1) mod 2`` of the global site, shape ``(1, 1, Lx, Lt)``, real."""
        if self._parity is None:
            if any(n % 2 for n in self.grid.shape):
                raise ValueError(
                    f"even-odd preconditioning needs even lattice extents, got "
                    f"{list(self.grid.shape)}"
                )
            cx, ct = self.grid.global_coords
            p = torch.as_tensor((cx + ct) % 2, device=self.u.device)
            self._parity = p.to(self.u.real.dtype).reshape(1, 1, *self.grid.local_shape)
        return self._parity

    def odd(self, psi: torch.Tensor) -> torch.Tensor:
        """``psi`` on the odd sites, zero on the even ones."""
        return psi * self.parity()

    def even(self, psi: torch.Tensor) -> torch.Tensor:
        """``psi`` on the even sites, zero on the odd ones."""
        return psi * (1.0 - self.parity())

    def schur(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``D_hat psi_o = psi_o - kappa^2 H_oe H_eo psi_o`` (``psi_o`` odd-only)."""
        return psi_o - self.kappa**2 * self.odd(self.hop(self.even(self.hop(psi_o, 1)), 1))

    def schur_dag(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``D_hat^+ psi_o`` (hopping with ``g_mu -> -g_mu``)."""
        return psi_o - self.kappa**2 * self.odd(self.hop(self.even(self.hop(psi_o, -1)), -1))

    def schur_normal(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``D_hat^+ D_hat psi_o``."""
        return self.schur_dag(self.schur(psi_o))

    def schur_rhs(self, b: torch.Tensor) -> torch.Tensor:
        """Right-hand side of the odd system: ``b_o + kappa H_oe b_e``."""
        return self.odd(b) + self.kappa * self.odd(self.hop(self.even(b), 1))

    def schur_reconstruct(self, b: torch.Tensor, x_o: torch.Tensor) -> torch.Tensor:
        """Full solution from the odd part: ``x = x_o + b_e + kappa H_eo x_o``."""
        return x_o + self.even(b) + self.kappa * self.even(self.hop(x_o, 1))
