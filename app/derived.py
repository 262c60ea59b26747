"""Derived quantities of ``trivhmc analyze`` with Gamma-method errors.

A derived quantity ``F = f(<A_1>, ..., <A_n>)`` of primary observables is estimated by
``f(abar_1, ..., abar_n)``; its error follows from the Gamma method applied to the projected
series (Wolff 2004, section 3; pyerrors' ``derived_observable`` does the same)::

    p_i^r = sum_alpha  df/dA_alpha |_{abar}  (a_{alpha, i}^r - abar_alpha)

so autocorrelations and cross-correlations of the primaries are accounted for, and
``tau_int`` of ``F`` is that of ``p``. The derivatives are central finite differences with a
relative step of 1e-6 (the truncation error, ~1e-12 relative, is far below any statistical
error). Primaries that are functions of one measured series (``M^2``, ``M^4``) are formed per
configuration first.

Quantities (each computed when its inputs are in the run; V = lattice volume):

* ``chi`` (phi^4): susceptibility ``V (<M^2> - <|M|>^2)``, M the magnetisation per site;
* ``binder`` (phi^4): Binder cumulant ``U_4 = 1 - <M^4> / (3 <M^2>^2)``;
* ``chi_t``: topological susceptibility ``<Q^2> / V`` from ``Q_int`` (else ``Q``) and from
  every ``Q@t=...`` (flowed charge of ``trivhmc measure``); lattice units;
* ``V_eff[R][T]``: static potential estimate ``ln[W(R, T) / W(R, T + 1)]`` (lattice units)
  from the Wilson loops ``W_R{R}_T{T}`` of ``trivhmc measure``;
* ``m_eff[t]``: effective mass of each correlator family ``NAME_0 .. NAME_{T-1}`` (e.g.
  ``two_point``), ``cosh`` form for a periodic time direction,
  ``m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))]`` for ``t = 1 .. T/2 - 1`` (NaN where
  the argument is below 1, i.e. noise dominates).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .analysis import DEFAULT_S, GammaResult, gamma_method

#: one primary: a list over replicas of 1D series (equal lengths across primaries)
Primary = list[np.ndarray]


def natural_key(name: str) -> tuple:
    """Sort key that orders ``C_2`` before ``C_10`` (numbers compared as numbers)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def bin_series(x: np.ndarray, size: int) -> np.ndarray:
    """Means of consecutive blocks of ``size`` entries (an incomplete last block dropped)."""
    if size <= 1:
        return x
    n = len(x) // size
    return x[: n * size].reshape(n, size).mean(axis=1)


def derived_gamma(
    f: Callable[[np.ndarray], float],
    primaries: Sequence[Primary],
    S: float = DEFAULT_S,
    bin_size: int = 1,
    tau_exp: float = 0.0,
) -> GammaResult:
    """Gamma-method estimate of ``f(<A_1>, ..., <A_n>)`` (see the module docstring); with
    ``bin_size > 1`` the primaries are averaged in blocks first."""
    primaries = [[bin_series(r, bin_size) for r in p] for p in primaries]
    n_rep = len(primaries[0])
    lengths = [len(r) for r in primaries[0]]
    for p in primaries:
        if [len(r) for r in p] != lengths:
            raise ValueError("derived_gamma: the primaries must be measured on the same configs")
    n = sum(lengths)
    if n == 0:
        raise ValueError("derived_gamma: the primaries have no measurements")
    abar = np.array([sum(float(r.sum()) for r in p) / n for p in primaries])
    # f at a point where it is undefined (0/0 of a constant observable, log of 0) gives NaN
    # or Inf, reported as a NaN result below: numpy's warnings about it are not news
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        value = float(f(abar))
        grad = np.zeros(len(abar))
        for k in range(len(abar)):
            h = 1e-6 * max(abs(abar[k]), 1e-12)
            up, dn = abar.copy(), abar.copy()
            up[k] += h
            dn[k] -= h
            grad[k] = (f(up) - f(dn)) / (2.0 * h)
    if not (math.isfinite(value) and np.all(np.isfinite(grad))):
        nan = float("nan")
        return GammaResult(value, nan, nan, nan, nan, 0, n, n_rep, np.ones(1), np.ones(1))
    projected = [
        sum(g * (p[r] - a) for g, p, a in zip(grad, primaries, abar)) for r in range(n_rep)
    ]
    res = gamma_method(projected, S=S, tau_exp=tau_exp)
    res.mean = value  # the projected series has mean 0 by construction
    return res


@dataclass
class Derived:
    """One derived quantity: its result and a one-line definition."""

    result: GammaResult | None  # None: no measurements (dropped from the result)
    formula: str


def _family(series: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Correlator families ``NAME_0 .. NAME_{T-1}`` (contiguous from 0, at least 4)."""
    groups: dict[str, dict[int, str]] = {}
    for key in series:
        m = re.fullmatch(r"(.+)_(\d+)", key)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = key
    out = {}
    for base, idx in groups.items():
        if len(idx) >= 4 and sorted(idx) == list(range(len(idx))):
            out[base] = [idx[i] for i in range(len(idx))]
    return out


def _replicas(s: np.ndarray) -> Primary:
    """(chains, T) -> list of per-chain series without the NaN (unmeasured) entries."""
    return [c[np.isfinite(c)] for c in s]


def derived_quantities(
    series: dict[str, np.ndarray],
    volume: int | None,
    S: float = DEFAULT_S,
    bin_size: int = 1,
    tau_exp: float = 0.0,
) -> dict[str, Derived]:
    """Every derived quantity the run's series allow (``series``: name -> (chains, T), as
    :func:`app.analysis.series` returns them, unbinned: primaries such as ``M^2`` are formed
    per configuration, then binned)."""
    out: dict[str, Derived] = {}

    def derived_gamma(f, primaries, S):
        if not any(len(r) >= bin_size for p in primaries for r in p):
            return None  # nothing measured after the cut (or not one full bin)
        return _derived_gamma(f, primaries, S, bin_size, tau_exp)

    if "M" in series:
        m = _replicas(series["M"])
        m2 = [x**2 for x in m]
        m4 = [x**4 for x in m]
        out["binder"] = Derived(
            derived_gamma(lambda a: 1.0 - a[1] / (3.0 * a[0] ** 2), [m2, m4], S),
            "1 - <M^4> / (3 <M^2>^2)",
        )
        if volume:
            absm = [np.abs(x) for x in m]
            out["chi"] = Derived(
                derived_gamma(lambda a: volume * (a[0] - a[1] ** 2), [m2, absm], S),
                "V (<M^2> - <|M|>^2)",
            )
    if volume:
        charges = [q for q in ("Q_int", "Q") if q in series][:1]
        charges += sorted((k for k in series if k.startswith("Q@t=")), key=natural_key)
        for q in charges:
            q2 = [x**2 for x in _replicas(series[q])]
            tag = "" if q in ("Q_int", "Q") else q[1:]
            out[f"chi_t{tag}"] = Derived(
                derived_gamma(lambda a: a[0] / volume, [q2], S), f"<{q}^2> / V"
            )
    loops = {}
    for key in series:
        m = re.fullmatch(r"W_R(\d+)_T(\d+)", key)
        if m:
            loops[(int(m.group(1)), int(m.group(2)))] = key
    for (r, t), key in sorted(loops.items()):
        nxt = loops.get((r, t + 1))
        if nxt is None:
            continue

        def veff(a: np.ndarray) -> float:
            return math.log(a[0] / a[1]) if a[0] > 0 and a[1] > 0 else float("nan")

        out[f"V_eff[{r}][{t}]"] = Derived(
            derived_gamma(veff, [_replicas(series[key]), _replicas(series[nxt])], S),
            f"ln[W({r},{t}) / W({r},{t + 1})]",
        )
    for base, keys in sorted(_family(series).items()):
        cs = [_replicas(series[k]) for k in keys]
        lt = len(keys)
        for t in range(1, lt // 2):

            def meff(a: np.ndarray) -> float:
                x = (a[0] + a[2]) / (2.0 * a[1])
                return math.acosh(x) if x >= 1.0 else float("nan")

            out[f"m_eff[{base}][{t}]"] = Derived(
                derived_gamma(meff, [cs[t - 1], cs[t], cs[(t + 1) % lt]], S),
                f"arccosh[({base}_{t - 1} + {base}_{t + 1}) / (2 {base}_{t})]",
            )
    return {k: d for k, d in out.items() if d.result is not None}


_derived_gamma = derived_gamma
