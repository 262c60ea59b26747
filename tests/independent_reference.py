"""Independent references for tests/test_independent_*.py and tests/mpi/test_independent_mpi.py.

Plain numpy (torch only for one autograd gradient), written from docs/conventions.md and
docs/conventions-su3.md alone; shares no code with ``kernels/``, ``parallel/`` or ``app/``.
Every function works on the *global* lattice with ``np.roll`` for the periodic neighbours,
so a distributed result is compared with the slice of the global reference that its rank
owns (``ProcessGrid.local_slices``).

SU(3): links ``(B, Nd, *L, 3, 3)``, ``x + mu`` is ``np.roll(f, -1, axis=1 + mu)`` on a
single-direction field ``(B, *L, 3, 3)``. Schwinger: dense Wilson-Dirac matrix with the
component index ``((x Lt) + t) 2 + s`` (a different order from tests/schwinger_reference.py).
"""

from __future__ import annotations

import math
import re
import struct
import zlib

import numpy as np

# --------------------------------------------------------------------------- SU(3)


def dag(a: np.ndarray) -> np.ndarray:
    return np.conj(np.swapaxes(a, -1, -2))


def rand_algebra(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random traceless anti-Hermitian 3x3 matrices ``(*shape, 3, 3)``."""
    a = rng.standard_normal((*shape, 3, 3)) + 1j * rng.standard_normal((*shape, 3, 3))
    h = (a + dag(a)) / 2
    h = h - np.trace(h, axis1=-2, axis2=-1)[..., None, None] * np.eye(3) / 3
    return 1j * h


def expm_ah(x: np.ndarray) -> np.ndarray:
    """``exp(X)`` of anti-Hermitian ``X`` by the eigendecomposition of the Hermitian ``-iX``."""
    h = -1j * x
    w, v = np.linalg.eigh((h + dag(h)) / 2)
    return (v * np.exp(1j * w)[..., None, :]) @ dag(v)


def rand_su3(rng: np.random.Generator, shape: tuple[int, ...], scale: float | None = None):
    """SU(3) matrices ``(*shape, 3, 3)``: Haar (QR of a Ginibre matrix, phases fixed, det
    divided out) when ``scale`` is None, else ``exp(scale X)`` with a random algebra ``X``."""
    if scale is not None:
        return expm_ah(scale * rand_algebra(rng, shape))
    n = int(np.prod(shape))
    z = rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))
    q, r = np.linalg.qr(z)
    d = np.diagonal(r, axis1=-2, axis2=-1)
    q = q * (d / abs(d))[:, None, :]
    q = q / (np.linalg.det(q) ** (1 / 3))[:, None, None]
    return q.reshape(*shape, 3, 3)


def _fw(f: np.ndarray, mu: int, k: int = 1) -> np.ndarray:
    """``f(x + k mu)`` for ``f`` of shape ``(B, *L, ...)``."""
    return np.roll(f, -k, axis=1 + mu)


def retr(m: np.ndarray) -> np.ndarray:
    return np.trace(m, axis1=-2, axis2=-1).real


def su3_loops(u: np.ndarray):
    """``({(mu, nu): Re Tr plaquette, mu < nu}, {(mu, nu): Re Tr rectangle 2 along mu})``,
    per site ``(B, *L)``, each loop written out as its ordered product of links."""
    nd = u.shape[1]
    plaq, rect = {}, {}
    for mu in range(nd):
        for nu in range(nd):
            if mu == nu:
                continue
            um, un = u[:, mu], u[:, nu]
            if mu < nu:
                plaq[(mu, nu)] = retr(um @ _fw(un, mu) @ dag(_fw(um, nu)) @ dag(un))
            r = (
                um
                @ _fw(um, mu)
                @ _fw(un, mu, 2)
                @ dag(_fw(_fw(um, mu), nu))
                @ dag(_fw(um, nu))
                @ dag(un)
            )
            rect[(mu, nu)] = retr(r)
    return plaq, rect


def su3_action(u: np.ndarray, beta: float, c1: float) -> np.ndarray:
    """``beta [c0 sum_P (1 - ReTr/3) + c1 sum_R (1 - ReTr/3)]`` per chain, ``c0 = 1 - 8 c1``."""
    plaq, rect = su3_loops(u)
    b = u.shape[0]
    sp = sum((1 - p / 3).reshape(b, -1).sum(1) for p in plaq.values())
    sr = sum((1 - r / 3).reshape(b, -1).sum(1) for r in rect.values())
    return beta * ((1 - 8 * c1) * sp + c1 * sr)


def central_difference(f, h: float):
    """Fourth-order central difference of ``f`` at 0."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


def su3_directional_derivative(u, x, beta, c1, h=5e-4):
    """``d/dt S(exp(tX) U)`` at 0, per chain (numerical)."""
    return central_difference(lambda t: su3_action(expm_ah(t * x) @ u, beta, c1), h)


def gell_mann_generators() -> np.ndarray:
    """``T_a = i lambda_a / 2``, the standard Gell-Mann order, ``(8, 3, 3)``."""
    lam = np.zeros((8, 3, 3), complex)
    lam[0][0, 1] = lam[0][1, 0] = 1
    lam[1][0, 1], lam[1][1, 0] = -1j, 1j
    lam[2][0, 0], lam[2][1, 1] = 1, -1
    lam[3][0, 2] = lam[3][2, 0] = 1
    lam[4][0, 2], lam[4][2, 0] = -1j, 1j
    lam[5][1, 2] = lam[5][2, 1] = 1
    lam[6][1, 2], lam[6][2, 1] = -1j, 1j
    lam[7] = np.diag([1, 1, -2]) / math.sqrt(3)
    return 1j * lam / 2


def su3_lie_gradient(u: np.ndarray, beta: float, c1: float) -> np.ndarray:
    """``F = sum_a T_a d/dw_a S(exp(w_a T_a) U)`` by torch autograd through an own torch copy
    of :func:`su3_action` (``torch.roll`` neighbours, ``torch.linalg.matrix_exp``)."""
    import torch

    t = torch.from_numpy(gell_mann_generators())
    ut = torch.from_numpy(u)
    nd = u.shape[1]

    def fw(f, mu, k=1):
        return torch.roll(f, -k, 1 + mu)

    def dg(a):
        return a.conj().transpose(-1, -2)

    def rt(m):
        return torch.diagonal(m, dim1=-2, dim2=-1).sum(-1).real

    w = torch.zeros(u.shape[:-2] + (8,), dtype=torch.float64, requires_grad=True)
    v = torch.linalg.matrix_exp(torch.einsum("...a,aij->...ij", w.to(torch.complex128), t)) @ ut
    s = 0.0
    for mu in range(nd):
        for nu in range(nd):
            if mu == nu:
                continue
            vm, vn = v[:, mu], v[:, nu]
            if mu < nu:
                s = s + (1 - 8 * c1) * (1 - rt(vm @ fw(vn, mu) @ dg(fw(vm, nu)) @ dg(vn)) / 3).sum()
            if c1:
                r = vm @ fw(vm, mu) @ fw(vn, mu, 2) @ dg(fw(fw(vm, mu), nu)) @ dg(fw(vm, nu))
                s = s + c1 * (1 - rt(r @ dg(vn)) / 3).sum()
    (g,) = torch.autograd.grad(beta * s, w)
    return torch.einsum("...a,aij->...ij", g.to(torch.complex128), t).numpy()


def flow_rk3(u: np.ndarray, eps: float, c1: float = 0.0) -> np.ndarray:
    """One step of Luscher's RK3 (JHEP 1008 (2010) 071, (C.1)-(C.3)) with
    ``Z = -g0^2 dS_w = -F`` at ``beta = 6``."""

    def z(v):
        return -eps * su3_lie_gradient(v, 6.0, c1)

    z0 = z(u)
    w1 = expm_ah(0.25 * z0) @ u
    z1 = z(w1)
    w2 = expm_ah(8 / 9 * z1 - 17 / 36 * z0) @ w1
    z2 = z(w2)
    return expm_ah(0.75 * z2 - 8 / 9 * z1 + 17 / 36 * z0) @ w2


def clover_observables(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(E_clover, E_plaq, Q)`` per chain (4D): the four leaves of each plane written out
    as paths, ``G = TA(sum)/4``, ``E = -sum_{mu<nu} tr G^2`` (lattice mean),
    ``E_plaq = 2 sum_{mu<nu} (3 - ReTr P)`` (mean), ``Q = -(1/4 pi^2) sum_x tr(G01 G23 -
    G02 G13 + G03 G12)``."""
    b = u.shape[0]
    g = {}
    for mu in range(4):
        for nu in range(mu + 1, 4):
            um, un = u[:, mu], u[:, nu]
            m_um, m_un = _fw(um, mu, -1), _fw(un, nu, -1)  # U_mu(x-mu), U_nu(x-nu)
            leaves = (
                um @ _fw(un, mu) @ dag(_fw(um, nu)) @ dag(un),
                un @ dag(_fw(m_um, nu)) @ dag(_fw(un, mu, -1)) @ m_um,
                dag(m_um) @ dag(_fw(_fw(un, mu, -1), nu, -1)) @ _fw(m_um, nu, -1) @ m_un,
                dag(m_un) @ _fw(um, nu, -1) @ _fw(m_un, mu) @ dag(um),
            )
            q = sum(leaves)
            a = (q - dag(q)) / 2
            a = a - np.trace(a, axis1=-2, axis2=-1)[..., None, None] * np.eye(3) / 3
            g[(mu, nu)] = a / 4

    def tr(x, y):
        return np.einsum("...ij,...ji->...", x, y).real

    e = -sum(tr(x, x) for x in g.values()).reshape(b, -1).mean(1)
    qd = tr(g[(0, 1)], g[(2, 3)]) - tr(g[(0, 2)], g[(1, 3)]) + tr(g[(0, 3)], g[(1, 2)])
    plaq, _ = su3_loops(u)
    ep = 2 * sum(3 - p for p in plaq.values()).reshape(b, -1).mean(1)
    return e, ep, -qd.reshape(b, -1).sum(1) / (4 * math.pi**2)


# --------------------------------------------------------------------------- U(1), phi^4


def u1_plaquettes(theta: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    nd = theta.shape[1]
    return {
        (mu, nu): theta[:, mu] + _fw(theta[:, nu], mu) - _fw(theta[:, mu], nu) - theta[:, nu]
        for mu in range(nd)
        for nu in range(mu + 1, nd)
    }


def u1_action(theta: np.ndarray, beta: float) -> np.ndarray:
    b = theta.shape[0]
    return beta * sum((1 - np.cos(p)).reshape(b, -1).sum(1) for p in u1_plaquettes(theta).values())


def phi4_action(phi: np.ndarray, beta: float, lam: float) -> np.ndarray:
    nd = phi.ndim - 1
    hop = sum(_fw(phi, mu) for mu in range(nd))
    s = -beta * phi * hop + phi * phi + lam * (phi * phi - 1) ** 2
    return s.reshape(phi.shape[0], -1).sum(1)


# --------------------------------------------------------------------------- Schwinger

SIGMA = (np.array([[0, 1], [1, 0]], complex), np.array([[0, -1j], [1j, 0]], complex))


def dense_dirac(theta: np.ndarray, kappa: float, sign: int = 1) -> np.ndarray:
    """``D`` (``sign = -1``: ``g_mu -> -g_mu``) for one field ``theta (2, Lx, Lt)``, site by site:
    ``D psi(x) = psi(x) - kappa sum_mu [(1 - g_mu) U_mu(x) psi(x + mu)
    + (1 + g_mu) U_mu(x - mu)^* psi(x - mu)]``, a hop across the t boundary times -1."""
    _, lx, lt = theta.shape
    d = np.eye(2 * lx * lt, dtype=complex)

    def at(x, t):
        return ((x % lx) * lt + (t % lt)) * 2

    one = np.eye(2)
    for x in range(lx):
        for t in range(lt):
            i = at(x, t)
            for mu in range(2):
                g = sign * SIGMA[mu]
                dx, dt = (1, 0) if mu == 0 else (0, 1)
                j = at(x + dx, t + dt)
                bc = -1.0 if t + dt == lt else 1.0
                d[i : i + 2, j : j + 2] -= kappa * bc * (one - g) * np.exp(1j * theta[mu, x, t])
                j = at(x - dx, t - dt)
                bc = -1.0 if t - dt == -1 else 1.0
                link = np.exp(-1j * theta[mu, (x - dx) % lx, (t - dt) % lt])
                d[i : i + 2, j : j + 2] -= kappa * bc * (one + g) * link
    return d


def to_dense(psi: np.ndarray) -> np.ndarray:
    """Spinor ``(2, Lx, Lt)`` -> dense vector (index ``((x Lt) + t) 2 + s``)."""
    return np.moveaxis(psi, 0, -1).reshape(-1)


def from_dense(v: np.ndarray, lx: int, lt: int) -> np.ndarray:
    return np.moveaxis(v.reshape(lx, lt, 2), -1, 0)


def pseudofermion_action(theta, phi, kappa, kappa_1=None) -> float:
    """``phi^+ (D^+ D)^{-1} phi`` or, with ``kappa_1``, ``phi^+ D_1 (D^+ D)^{-1} D_1^+ phi``."""
    d = dense_dirac(theta, kappa)
    eta = to_dense(phi)
    if kappa_1 is not None:
        eta = dense_dirac(theta, kappa_1).conj().T @ eta
    return float(np.real(np.conj(eta) @ np.linalg.solve(d.conj().T @ d, eta)))


# --------------------------------------------------------------------------- files


def lime_records(path) -> list[tuple[str, bytes, int]]:
    """``(type, payload, MB/ME flags)`` of every LIME record, parsed from the bytes: 144-byte
    big-endian header (magic 0x456789ab, version, flags, length, 128-byte type), payload
    padded to 8 bytes."""
    data = open(path, "rb").read()
    off, out = 0, []
    while off < len(data):
        magic, _, flags, n = struct.unpack(">IHHQ", data[off : off + 16])
        assert magic == 0x456789AB, f"bad LIME magic {magic:#x} at byte {off}"
        rtype = data[off + 16 : off + 144].split(b"\0")[0].decode()
        out.append((rtype, data[off + 144 : off + 144 + n], flags))
        off += 144 + n + (-n) % 8
    return out


def xml_number(text: str, tag: str) -> str:
    """The text of the first element ``tag`` (any namespace prefix)."""
    m = re.search(rf"<(?:\w+:)?{tag}>\s*([^<\s]+)", text)
    assert m, f"no <{tag}> in {text[:200]!r}"
    return m.group(1)


def ildg_links(path) -> tuple[np.ndarray, tuple[int, int, int, int], bytes, dict[str, bytes]]:
    """``(links (4, Lx, Ly, Lz, Lt, 3, 3), dims, binary payload, records)`` of an ILDG file:
    sites t slowest, x fastest, then mu, 3x3 row major, big-endian complex."""
    recs = {t: p for t, p, _ in lime_records(path)}
    fmt = recs["ildg-format"].decode(errors="replace")
    dims = tuple(int(xml_number(fmt, k)) for k in ("lx", "ly", "lz", "lt"))
    dtype = ">c16" if int(xml_number(fmt, "precision")) == 64 else ">c8"
    raw = recs["ildg-binary-data"]
    blk = np.frombuffer(raw, dtype=dtype).reshape(*dims[::-1], 4, 3, 3)
    return np.transpose(blk, (4, 3, 2, 1, 0, 5, 6)).astype(complex), dims, raw, recs


def scidac_checksum(raw: bytes, volume: int) -> tuple[int, int]:
    """SciDAC checksum: CRC32 of each site's bytes, rotated left by ``r mod 29`` / ``r mod 31``
    (``r`` the site's index in file order), XOR over sites."""
    sites = np.frombuffer(raw, dtype=np.uint8).reshape(volume, -1)
    a = b = 0
    for r, row in enumerate(sites):
        c = zlib.crc32(row.tobytes()) & 0xFFFFFFFF
        for k, s in ((0, r % 29), (1, r % 31)):
            rot = ((c << s) | (c >> (32 - s))) & 0xFFFFFFFF if s else c
            if k == 0:
                a ^= rot
            else:
                b ^= rot
    return a, b


def plaquette_and_trace(links: np.ndarray) -> tuple[float, float, float, float]:
    """``(plaquette, spatial, temporal, link trace)`` of one configuration
    ``(4, Lx, Ly, Lz, Lt, 3, 3)``, each ``Re Tr / 3`` averaged."""
    plaq, _ = su3_loops(links[None])
    p = np.mean([v.mean() for v in plaq.values()]) / 3
    ps = np.mean([v.mean() for k, v in plaq.items() if k[1] != 3]) / 3
    pt = np.mean([v.mean() for k, v in plaq.items() if k[1] == 3]) / 3
    return p, ps, pt, retr(links).mean() / 3
