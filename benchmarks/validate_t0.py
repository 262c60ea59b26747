"""t0/a^2 of quenched SU(3) (Wilson action) against Luscher's published value.

Luscher, JHEP 1008 (2010) 071, table 1: beta = 5.96, 16^4, t0/a^2 = 2.7854(62) (clover E,
``t^2 <E(t)> = 0.3``). This script generates the ensemble with an independent numpy
heatbath + overrelaxation code (Cabibbo-Marinari SU(2) subgroups, Kennedy-Pendleton
heatbath, nothing shared with kernels/), measures every configuration with trivhmc's Wilson
flow (kernels.wilson_flow.wilson_flow, RK3, clover E), and, as a flow-independent check,
flows the first configuration (after the others) with the numpy RK3 flow and numpy clover E
of this file and compares ``t0``. Results are appended one JSON line per configuration to
``--out`` (a killed run keeps them; ``--summary`` re-reads the file); a table is printed.

    nice -n 19 OMP_NUM_THREADS=1 python benchmarks/validate_t0.py --L 8 --beta 5.96 \
        --therm 200 --sep 20 --ncfg 20 --out t0_L8.jsonl
    python benchmarks/validate_t0.py --summary t0_L8.jsonl

Conventions (same as Luscher's): ``S = (beta/3) sum_P Re Tr(1 - U_P)`` over unoriented
plaquettes; the flow is ``dV/dt = -TA(V A) V`` with ``A`` the staple sum (``g0^2 S`` at
``beta = 6``); ``E = -(1/2) sum_{mu,nu} tr G G`` with the clover ``G = TA(Q)/4``.

Finite volume: ``sqrt(8 t0) = 4.7 a`` at beta = 5.96, so L = 8, 10, 12 give
``c = sqrt(8 t0)/L = 0.59, 0.47, 0.39``. The comparison is therefore made with an explicit
finite-volume allowance (docs/measure.md): the tree-level finite-volume factor of ``t^2 E``
with periodic boundaries (Fodor et al., JHEP 1211 (2012) 007),
``t^2 <E>_L / t^2 <E>_inf = 1 + delta(c)``, ``delta(c) = theta3(exp(-1/c^2))^4 - 1 - pi^2 c^4
/ 3``, converted into a shift of t0 with the measured slope; it is an estimate (perturbative)
and used only as the allowance, not as a correction.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

LUSCHER = {5.96: (2.7854, 0.0062, 16)}  # beta: (t0/a^2, error, L/a)


# --------------------------------------------------------------------------- lattice
class Lattice:
    """Flat site index ``x = ((x0 L1 + x1) L2 + x2) L3 + x3`` (C order of the shape), neighbour
    tables ``up[mu][x] = x + mu``, ``dn[mu][x] = x - mu`` (periodic), parities."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        if any(n % 2 for n in shape):
            raise ValueError(f"checkerboard updates need even extents, got {shape}")
        self.shape = tuple(shape)
        self.nd = len(shape)
        self.volume = int(np.prod(shape))
        idx = np.arange(self.volume).reshape(shape)
        self.up = [np.roll(idx, -1, axis=mu).ravel() for mu in range(self.nd)]
        self.dn = [np.roll(idx, 1, axis=mu).ravel() for mu in range(self.nd)]
        coords = np.indices(shape).reshape(self.nd, -1)
        par = coords.sum(0) % 2
        self.sites = [np.nonzero(par == p)[0] for p in (0, 1)]


def dag(a: np.ndarray) -> np.ndarray:
    return np.conj(np.swapaxes(a, -1, -2))


def staple(u: np.ndarray, lat: Lattice, mu: int, s: np.ndarray) -> np.ndarray:
    """``A_mu(x)`` at sites ``s``: ``Re Tr(U_mu(x) A_mu(x))`` is the sum of the ``2 (d-1)``
    plaquettes containing ``U_mu(x)``."""
    a = np.zeros((len(s), 3, 3), dtype=complex)
    xp = lat.up[mu][s]
    for nu in range(lat.nd):
        if nu == mu:
            continue
        # U_nu(x+mu) U_mu(x+nu)^+ U_nu(x)^+
        a += u[nu, xp] @ dag(u[mu, lat.up[nu][s]]) @ dag(u[nu, s])
        # U_nu(x+mu-nu)^+ U_mu(x-nu)^+ U_nu(x-nu)
        xm = lat.dn[nu][s]
        a += dag(u[nu, lat.dn[nu][xp]]) @ dag(u[mu, xm]) @ u[nu, xm]
    return a


def reunitarize(u: np.ndarray) -> np.ndarray:
    """Gram-Schmidt on the first two rows, third row = conj(row0 x row1) (det 1)."""
    r0 = u[..., 0, :]
    r0 = r0 / np.linalg.norm(r0, axis=-1, keepdims=True)
    r1 = u[..., 1, :]
    r1 = r1 - (np.conj(r0) * r1).sum(-1, keepdims=True) * r0
    r1 = r1 / np.linalg.norm(r1, axis=-1, keepdims=True)
    r2 = np.conj(np.cross(r0, r1))
    return np.stack([r0, r1, r2], axis=-2)


def plaquette(u: np.ndarray, lat: Lattice) -> float:
    """``<Re Tr U_P> / 3`` over all sites and the ``d(d-1)/2`` planes."""
    tot = 0.0
    for mu in range(lat.nd):
        for nu in range(mu + 1, lat.nd):
            p = u[mu] @ u[nu, lat.up[mu]] @ dag(u[mu, lat.up[nu]]) @ dag(u[nu])
            tot += np.trace(p, axis1=-2, axis2=-1).real.sum()
    return tot / (3 * lat.volume * lat.nd * (lat.nd - 1) / 2)


# --------------------------------------------------------------------------- SU(2) pieces
SUBGROUPS = ((0, 1), (1, 2), (0, 2))


def _quat(w: np.ndarray) -> np.ndarray:
    """Real-quaternion part ``(r0, r1, r2, r3)`` of 2x2 matrices: ``w ~ r0 + i r.sigma``."""
    a, b, c, d = w[:, 0, 0], w[:, 0, 1], w[:, 1, 0], w[:, 1, 1]
    return np.stack([(a + d).real / 2, (b + c).imag / 2, (b - c).real / 2, (a - d).imag / 2], 1)


def _mat(q: np.ndarray) -> np.ndarray:
    """2x2 SU(2) matrices of unit quaternions ``q0 + i q.sigma``."""
    m = np.empty((len(q), 2, 2), dtype=complex)
    m[:, 0, 0] = q[:, 0] + 1j * q[:, 3]
    m[:, 0, 1] = q[:, 2] + 1j * q[:, 1]
    m[:, 1, 0] = -q[:, 2] + 1j * q[:, 1]
    m[:, 1, 1] = q[:, 0] - 1j * q[:, 3]
    return m


def _kp_x0(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kennedy-Pendleton: ``x0`` with density ``sqrt(1 - x0^2) exp(alpha x0)`` on [-1, 1]."""
    out = np.empty_like(alpha)
    todo = np.arange(len(alpha))
    while todo.size:
        r1, r2, r3, r4 = 1.0 - rng.random((4, todo.size))  # in (0, 1]
        delta = -(np.log(r1) + np.cos(2 * np.pi * r2) ** 2 * np.log(r3)) / alpha[todo]
        ok = (r4 * r4 <= 1 - delta / 2) & (delta <= 2)
        out[todo[ok]] = 1 - delta[ok]
        todo = todo[~ok]
    return out


def _sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def update_links(u, lat, mu, parity, beta, rng, heatbath: bool) -> None:
    """Heatbath (or overrelaxation) of ``U_mu`` on one parity, three SU(2) subgroups."""
    s = lat.sites[parity]
    a = staple(u, lat, mu, s)
    link = u[mu, s]
    for i, j in SUBGROUPS:
        w = (link @ a)[:, [i, j]][:, :, [i, j]]
        r = _quat(w)
        k = np.linalg.norm(r, axis=1)
        v = r / k[:, None]  # Re Tr(g w) = k Re Tr(g V), V = mat(v)
        vd = dag(_mat(v))
        if heatbath:
            x0 = _kp_x0(2 * beta * k / 3, rng)  # weight exp((beta/3) k Re Tr(g V))
            x = np.concatenate(
                [x0[:, None], np.sqrt(1 - x0 * x0)[:, None] * _sphere(len(k), rng)], 1
            )
            g = _mat(x) @ vd
        else:
            g = vd @ vd  # reflection: Re Tr(g V) unchanged
        rows = link[:, [i, j], :]
        link[:, [i, j], :] = g @ rows
    u[mu, s] = link


def sweep(u, lat, beta, rng, n_or: int) -> None:
    """One heatbath sweep followed by ``n_or`` overrelaxation sweeps, then reunitarization."""
    for hb in [True] + [False] * n_or:
        for mu in range(lat.nd):
            for p in (0, 1):
                update_links(u, lat, mu, p, beta, rng, hb)
    u[:] = reunitarize(u)


# --------------------------------------------------------------------------- numpy flow
def _ta(m: np.ndarray) -> np.ndarray:
    a = 0.5 * (m - dag(m))
    return a - np.trace(a, axis1=-2, axis2=-1)[..., None, None] / 3 * np.eye(3)


def _expm_ah(x: np.ndarray) -> np.ndarray:
    """``exp(X)`` of anti-hermitian X through the eigen-decomposition of ``-iX``."""
    lam, vec = np.linalg.eigh(-1j * x)
    return (vec * np.exp(1j * lam)[..., None, :]) @ dag(vec)


def _flow_z(u: np.ndarray, lat: Lattice) -> np.ndarray:
    allsites = np.arange(lat.volume)
    return np.stack([-_ta(u[mu] @ staple(u, lat, mu, allsites)) for mu in range(lat.nd)])


def numpy_flow_step(u: np.ndarray, lat: Lattice, eps: float) -> np.ndarray:
    """Luscher's RK3 (JHEP 1008:071, eqs. (C.1)-(C.3)) with ``Z = -TA(V A)``."""
    z0 = eps * _flow_z(u, lat)
    w1 = _expm_ah(z0 / 4) @ u
    z1 = eps * _flow_z(w1, lat)
    w2 = _expm_ah(8 / 9 * z1 - 17 / 36 * z0) @ w1
    z2 = eps * _flow_z(w2, lat)
    return _expm_ah(3 / 4 * z2 - 8 / 9 * z1 + 17 / 36 * z0) @ w2


def numpy_clover_e(u: np.ndarray, lat: Lattice) -> float:
    """``E = sum_{mu<nu} |G_{mu nu}|^2``, ``G = TA(sum of the four leaves at x) / 4``."""
    e = 0.0
    for mu in range(lat.nd):
        for nu in range(mu + 1, lat.nd):
            um, un = u[mu], u[nu]
            # leaves (all counter-clockwise in the mu-nu plane, starting at x)
            xpm, xpn, xmm, xmn = lat.up[mu], lat.up[nu], lat.dn[mu], lat.dn[nu]
            l1 = um @ un[xpm] @ dag(um[xpn]) @ dag(un)
            l2 = un @ dag(um[lat.dn[mu][xpn]]) @ dag(un[xmm]) @ um[xmm]
            l3 = dag(um[xmm]) @ dag(un[lat.dn[nu][xmm]]) @ um[lat.dn[nu][xmm]] @ un[xmn]
            l4 = dag(un[xmn]) @ um[xmn] @ un[lat.up[mu][xmn]] @ dag(um)
            g = _ta(l1 + l2 + l3 + l4) / 4
            e += (np.abs(g) ** 2).sum()
    return e / lat.volume


def crossing(t: np.ndarray, y: np.ndarray, target: float = 0.3) -> float:
    """First ``t`` where ``y`` reaches ``target`` (linear interpolation)."""
    above = np.nonzero(y >= target)[0]
    if above.size == 0 or above[0] == 0:
        print(f"t^2 E = {target} not crossed within t <= {t[-1]:g}; raise --t-max", file=sys.stderr)
        return math.nan
    i = int(above[0])
    return float(t[i - 1] + (target - y[i - 1]) * (t[i] - t[i - 1]) / (y[i] - y[i - 1]))


# --------------------------------------------------------------------------- trivhmc side
def trivhmc_flow(u: np.ndarray, lat: Lattice, t_max: float, eps: float, every: int):
    """trivhmc's flow of the numpy field: ``(t, t^2 E_clover, E_plaq(t=0))``."""
    import torch

    from kernels.wilson_flow import wilson_flow
    from parallel import single_rank_grid

    grid = single_rank_grid(lat.shape)
    field = torch.from_numpy(u.reshape(1, lat.nd, *lat.shape, 3, 3).copy())
    res = wilson_flow(field, grid, t_max, eps, measure_every=every)
    return res.t, res.t2e[:, 0], float(res.e_plaq[0, 0])


def tree_level_delta(c: float) -> float:
    """``delta(c) = theta3(exp(-1/c^2))^4 - 1 - pi^2 c^4 / 3`` (periodic box, T = L)."""
    q = math.exp(-1.0 / (c * c))
    theta3 = 1 + 2 * sum(q ** (n * n) for n in range(1, 20))
    return theta3**4 - 1 - math.pi**2 * c**4 / 3


# --------------------------------------------------------------------------- driver
def t0_of_mean(t: np.ndarray, y: np.ndarray, target: float = 0.3) -> float:
    """Flow time where the (ensemble-mean) curve ``y(t)`` reaches ``target``: cubic through
    the four samples around the first crossing (NaN if it is not crossed)."""
    above = np.nonzero(y >= target)[0]
    if above.size == 0 or above[0] == 0:
        return math.nan
    i = int(above[0])
    lo = max(0, min(i - 2, len(t) - 4))
    sl = slice(lo, lo + 4)
    poly = np.polynomial.Polynomial.fit(t[sl], y[sl] - target, min(3, len(t[sl]) - 1))
    roots = [r.real for r in poly.roots() if abs(r.imag) < 1e-12 and t[i - 1] <= r.real <= t[i]]
    return float(roots[0]) if roots else crossing(t, y, target)


def _jackknife(values: np.ndarray, fn) -> tuple[float, float]:
    """``fn`` of the mean over configurations and its jackknife error (rows = configs)."""
    n = len(values)
    full = fn(values.mean(0))
    if n < 2:
        return full, math.nan
    jk = np.array([fn(np.delete(values, k, 0).mean(0)) for k in range(n)])
    return full, float(np.sqrt((n - 1) / n * np.sum((jk - jk.mean()) ** 2)))


def summarize(path: Path) -> dict:
    """Table of the measured ensemble: ``t0`` from ``t^2 <E>`` (Luscher's definition; the
    mean history, jackknife error), ``t^2 <E>`` at Luscher's ``t0``, the mean of per-config
    ``t0`` (for comparison), and the checks."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    meta = [r for r in rows if r.get("kind") == "meta"]
    cfg = [r for r in rows if r.get("kind") == "config"]
    chk = [r for r in rows if r.get("kind") == "numpy_flow_check"]
    if not cfg:
        raise SystemExit(f"{path}: no measured configurations yet")
    m = meta[-1]
    n = len(cfg)
    t = np.asarray(cfg[0]["t_hist"], dtype=float)
    hist = np.array([r["t2e_hist"] for r in cfg], dtype=float)  # (n, len(t))
    t0, t0_err = _jackknife(hist, lambda y: t0_of_mean(t, y))
    nb = n // 2  # bins of 2 consecutive configurations: an autocorrelation check
    binned = hist[: 2 * nb].reshape(nb, 2, -1).mean(1)
    t0_err_b = _jackknife(binned, lambda y: t0_of_mean(t, y))[1] if nb > 1 else math.nan
    ref, ref_err, ref_l = LUSCHER.get(m["beta"], (math.nan, math.nan, 0))

    def at_ref(y: np.ndarray) -> float:
        return float(np.interp(ref, t, y)) if math.isfinite(ref) else math.nan

    e_ref, e_ref_err = _jackknife(hist, at_ref)
    per_cfg = np.array([r["t0"] for r in cfg], dtype=float)
    fin = per_cfg[np.isfinite(per_cfg)]
    # slope of t^2 <E> at t0 for the (perturbative, tree-level) finite-volume estimate
    mean_hist = hist.mean(0)
    slope = float(np.interp(t0, t, np.gradient(mean_hist, t))) if math.isfinite(t0) else math.nan
    c = math.sqrt(8 * t0) / m["L"] if math.isfinite(t0) else math.nan
    delta = tree_level_delta(c) if math.isfinite(c) else math.nan
    out = {
        "beta": m["beta"],
        "L": m["L"],
        "n_cfg": n,
        "t0 (t^2<E> = 0.3)": t0,
        "t0_err (jackknife)": t0_err,
        "t0_err (jackknife, bins of 2)": t0_err_b,
        "t^2<E> at t = Luscher t0": e_ref,
        "t^2<E> at t = Luscher t0, err": e_ref_err,
        "mean of per-config t0": float(fin.mean()) if fin.size else math.nan,
        "per-config t0 not reached": int(n - fin.size),
        "plaquette": float(np.mean([r["plaquette"] for r in cfg])),
        "plaquette_err": float(np.std([r["plaquette"] for r in cfg], ddof=1) / math.sqrt(n))
        if n > 1
        else math.nan,
        "c = sqrt(8 t0)/L": c,
        "tree-level delta(c)": delta,
        "tree-level t0 shift estimate": -delta * 0.3 / slope if math.isfinite(slope) else math.nan,
        "luscher t0": ref,
        "luscher err": ref_err,
        "luscher L": ref_l,
        "difference / error": (t0 - ref) / math.hypot(t0_err, ref_err),
        "numpy flow: t0": chk[-1]["t0_numpy"] if chk else None,
        "numpy flow: max |t^2E diff|": history_difference(cfg[0], chk[-1]) if chk else None,
        "numpy flow: up to t": chk[-1]["t_hist"][-1] if chk else None,
        "seconds per sweep": m.get("seconds_per_sweep"),
        "seconds per flow": float(np.mean([r["flow_seconds"] for r in cfg])),
    }
    print(f"# {path}: {m['host']}, {m['date']}, beta {m['beta']}, {m['L']}^4, {n} configurations")
    print("| quantity | value |\n|---|---|")
    for k, v in out.items():
        if isinstance(v, float):
            v = f"{v:.5g}"
        print(f"| {k} | {v} |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--beta", type=float, default=5.96)
    ap.add_argument("--therm", type=int, default=200, help="thermalization sweeps")
    ap.add_argument("--sep", type=int, default=20, help="sweeps between measurements")
    ap.add_argument("--ncfg", type=int, default=20)
    ap.add_argument("--nor", type=int, default=4, help="overrelaxation sweeps per heatbath")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--t-max", type=float, default=3.6)
    ap.add_argument("--eps", type=float, default=0.04)
    ap.add_argument("--every", type=int, default=2, help="measure E every N flow steps")
    ap.add_argument("--numpy-check", action="store_true", help="numpy flow of the first config")
    ap.add_argument("--out", type=Path, default=Path("t0_validation.jsonl"))
    ap.add_argument("--summary", type=Path, help="only summarize an existing --out file")
    ap.add_argument("--save-first", type=Path, help="save the first configuration (.npy)")
    ap.add_argument("--start", type=Path, help="start from a saved configuration (.npy)")
    ap.add_argument("--numpy-check-only", type=Path, help="numpy flow check of a --save-first file")
    args = ap.parse_args(argv)
    if args.summary:
        summarize(args.summary)
        return
    if args.numpy_check_only:
        u = np.load(args.numpy_check_only)
        info = json.load(open(f"{args.numpy_check_only}.json"))
        with open(args.out, "a") as log:

            def emit_only(rec: dict) -> None:
                log.write(json.dumps(rec) + "\n")
                log.flush()

            numpy_check(u, Lattice((info["L"],) * 4), info["t0"], args, emit_only)
        return
    lat = Lattice((args.L,) * 4)
    rng = np.random.default_rng(args.seed)
    u = np.broadcast_to(np.eye(3, dtype=complex), (4, lat.volume, 3, 3)).copy()
    if args.start:  # continue from a saved (e.g. --save-first) configuration
        u = np.load(args.start)
        if u.shape != (4, lat.volume, 3, 3):
            raise SystemExit(f"{args.start}: shape {u.shape} is not a {args.L}^4 SU(3) field")
    log = open(args.out, "a")

    def emit(rec: dict) -> None:
        log.write(json.dumps(rec) + "\n")
        log.flush()

    tic = time.perf_counter()
    for k in range(args.therm):
        sweep(u, lat, args.beta, rng, args.nor)
        if k % 20 == 0:
            print(f"therm {k}: plaquette {plaquette(u, lat):.5f}", file=sys.stderr, flush=True)
    per_sweep = (time.perf_counter() - tic) / max(1, args.therm)
    emit(
        {
            "kind": "meta",
            "beta": args.beta,
            "L": args.L,
            "therm": args.therm,
            "sep": args.sep,
            "nor": args.nor,
            "seed": args.seed,
            "eps": args.eps,
            "host": f"{platform.node()} {platform.machine()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds_per_sweep": per_sweep,
        }
    )
    for n in range(args.ncfg):
        if n:
            for _ in range(args.sep):
                sweep(u, lat, args.beta, rng, args.nor)
        tic = time.perf_counter()
        t, t2e, e_plaq0 = trivhmc_flow(u, lat, args.t_max, args.eps, args.every)
        dt = time.perf_counter() - tic
        t0 = crossing(t, t2e)
        slope = math.nan
        if not math.isnan(t0):
            i = int(np.nonzero(t >= t0)[0][0])
            slope = float((t2e[i] - t2e[i - 1]) / (t[i] - t[i - 1]))
        p = plaquette(u, lat)
        rec = {
            "kind": "config",
            "n": n,
            "t0": t0,
            "dt2e_dt_at_t0": slope,
            "plaquette": p,
            "e_plaq0_trivhmc": e_plaq0,
            "e_plaq0_numpy": 36 * (1 - p),
            "flow_seconds": dt,
            "t_hist": t[::5].tolist(),
            "t2e_hist": t2e[::5].tolist(),
        }
        emit(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)
        if n == 0:
            first = (u.copy(), t0)
            if args.save_first:
                np.save(args.save_first, u)
                json.dump({"L": args.L, "t0": t0}, open(f"{args.save_first}.json", "w"))
    if args.numpy_check:  # after the ensemble, so that a killed run still has its t0 values
        numpy_check(first[0], lat, first[1], args, emit)
    log.close()
    summarize(args.out)


def numpy_check(v: np.ndarray, lat: Lattice, t0: float, args, emit) -> None:
    """Flow ``v`` with the numpy RK3 and numpy clover E to ``args.t_max``; emit its t0 (NaN
    if not reached) and its ``t^2 E`` history sampled as the configs' ``t2e_hist``, beside
    trivhmc's t0 of the same configuration."""
    tic = time.perf_counter()
    steps = int(round(args.t_max / args.eps))
    ts, ys = [0.0], [0.0]
    for s in range(1, steps + 1):
        v = numpy_flow_step(v, lat, args.eps)
        if s % args.every == 0 or s == steps:
            ts.append(s * args.eps)
            ys.append(ts[-1] ** 2 * numpy_clover_e(v, lat))
    t0_np = crossing(np.array(ts), np.array(ys))
    emit(
        {
            "kind": "numpy_flow_check",
            "t0_numpy": t0_np,
            "t0_trivhmc": t0,
            "abs_diff": abs(t0_np - t0),
            "t_hist": ts[::5],
            "t2e_hist": ys[::5],
            "seconds": time.perf_counter() - tic,
        }
    )


def history_difference(config: dict, check: dict) -> float:
    """Largest ``|t^2 E|`` difference of the numpy and trivhmc flows at common flow times."""
    a = dict(zip(np.round(config["t_hist"], 9), config["t2e_hist"], strict=True))
    b = dict(zip(np.round(check["t_hist"], 9), check["t2e_hist"], strict=True))
    common = sorted(set(a) & set(b))
    return max(abs(a[t] - b[t]) for t in common) if common else math.nan


if __name__ == "__main__":
    main()
