"""Monte Carlo error analysis: the Gamma method and the ``trivhmc analyze`` back end.

Gamma method (U. Wolff, Comput. Phys. Commun. 156 (2004) 143, hep-lat/0306017), for one or
several replica chains r = 1..R of lengths N_r, N = sum_r N_r:

* mean ``abar = sum_r N_r abar_r / N``; fluctuations ``delta_i^r = a_i^r - abar_r``
  (each replica about its own mean, as pyerrors does);
* autocorrelation ``Gamma(t) = sum_r sum_{i=1}^{N_r - t} delta_i^r delta_{i+t}^r /
  sum_r (N_r - t)`` for ``t < w_max = max_r N_r // 2`` (FFT), ``rho(t) = Gamma(t)/Gamma(0)``;
* ``tau_int(W) = 1/2 + sum_{t=1}^{W} rho(t)``;
* automatic window: W is the first ``W >= 1`` with ``g(W) < 0``, where
  ``g(W) = exp(-W/tau(W)) - tau(W)/sqrt(W N)`` and ``tau(W) = S / ln((2 tau_int(W) + 1) /
  (2 tau_int(W) - 1))`` (Wolff eq. 52, S = 1.5 by default);
* bias-corrected ``tau_int = tau_int(W) (1 + (2W + 1)/N) / (1 + 1/N)`` (eq. 49),
  ``error = sqrt(2 tau_int Gamma(0) (1 + 1/N) / N)``;
* ``delta tau_int = 2 tau_int(W) sqrt((W + 1/2 - tau_int(W)) / N)`` (eq. 42),
  ``delta error = error sqrt((W + 1/2) / N)``, ``delta rho(t)`` from eq. E.11;
* critical slowing down (``tau_exp > 0``; Schaefer, Sommer, Virotta, Nucl. Phys. B 845 (2011)
  93, arXiv:1009.5228): a slow mode (topology) that the automatic window cuts off is added as
  an exponential tail. W is the first ``W >= 1`` with ``rho(W) < n_sigma delta rho(W)`` (rho
  compatible with zero), and ``tau_int = tau_int(W) (bias-corrected) + tau_exp |rho(W + 1)|``,
  ``delta tau_int = sqrt(delta tau_int(W)^2 + tau_exp^2 delta rho(W + 1)^2)``; ``tau_exp``
  (the slowest mode's exponential autocorrelation time, in units of the analysed series) is an
  input, estimated from the slowest observable or a longer run. Needs ``w_max >= 4``;
* ``Gamma(0) = 0``: data that are one constant are exact (error 0, ``tau_int = 1/2``, as
  pyerrors returns for ``Gamma(0) = 0``); chains that are each constant but differ from each
  other (a sampler that never moved) give NaN error and ``tau_int``: nothing is known about
  their autocorrelation. "Constant" is decided on the values themselves (every value of a
  replicum equal), not on ``Gamma(0)``, which rounding of the replicum's mean makes a tiny
  positive number (pyerrors then reports a meaningless ``tau_int``);
* one measurement per chain (e.g. ``--skip`` leaving one trajectory): no fluctuation can be
  measured, so the error and ``tau_int`` are NaN (``null`` in JSON), never 0.

These are the same conventions as pyerrors (``Obs.gamma_method(S=..., tau_exp=...,
N_sigma=...)``), against which tests/test_analysis.py checks this implementation; the only
difference is our default S = 1.5 (Wolff's recommendation) instead of pyerrors' 2.0.

Run directories and HDF5 ensembles are read as documented in docs/run-output.md.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

DEFAULT_S = 1.5
RECORDS_FILE = "records.jsonl"


# ---------------------------------------------------------------------------- Gamma method
@dataclass
class GammaResult:
    """Result of the Gamma method for one observable."""

    mean: float
    error: float
    error_of_error: float
    tau_int: float
    tau_int_error: float
    window: int
    n: int
    n_replicas: int
    #: normalised autocorrelation function rho(t), t = 0 .. w_max - 1
    rho: np.ndarray = field(repr=False)
    #: tau_int(W) before bias correction, W = 0 .. w_max - 1
    tau_int_curve: np.ndarray = field(repr=False)

    def drho(self, t_max: int) -> np.ndarray:
        """Statistical error of rho(t) for t = 0 .. t_max (Wolff eq. E.11, as in pyerrors):
        ``drho(t)^2 = sum_{k=1}^{w_max-1-t} [rho(k+t) + rho(|k-t|) - 2 rho(k) rho(t)]^2 / N``.
        """
        out = np.zeros(min(t_max, len(self.rho) - 1) + 1)
        for t in range(1, len(out)):
            out[t] = _drho(self.rho, t, self.n)
        return out

    def as_dict(self) -> dict[str, float]:
        """The scalar results (mean, errors, ``tau_int``, window, ``n``, replicas) as a dict."""
        return {
            "mean": self.mean,
            "error": self.error,
            "tau_int": self.tau_int,
            "tau_int_error": self.tau_int_error,
            "error_of_error": self.error_of_error,
            "window": self.window,
            "n": self.n,
            "replicas": self.n_replicas,
        }


def _drho(rho: np.ndarray, t: int, n: int) -> float:
    """``delta rho(t)`` of Wolff eq. E.11 (see :meth:`GammaResult.drho`)."""
    k = np.arange(1, len(rho) - t)
    tmp = rho[k + t] + rho[np.abs(k - t)] - 2.0 * rho[t] * rho[k]
    return math.sqrt(float(np.sum(tmp**2)) / n)


def _autocov_sum(delta: np.ndarray, w_max: int) -> np.ndarray:
    """``sum_i delta_i delta_{i+t}`` for t = 0 .. w_max - 1 (zero-padded FFT)."""
    n = len(delta)
    m = min(n, w_max)
    pad = n + m + (n + m) % 2
    out = np.zeros(w_max)
    out[:m] = np.fft.irfft(np.abs(np.fft.rfft(delta, pad)) ** 2, pad)[:m]
    return out


def gamma_method(
    data: Any, S: float = DEFAULT_S, tau_exp: float = 0.0, n_sigma: float = 1.0
) -> GammaResult:
    """Mean, error and integrated autocorrelation time of a Monte Carlo series.

    ``data``: one 1D series, a 2D array (replicas along axis 0), or a list of 1D series of
    possibly different lengths (independent replica chains of the same ensemble).
    ``S``: Wolff's window parameter; ``S = 0`` assumes no autocorrelation.
    ``tau_exp > 0``: attach the exponential tail of a slow mode with this autocorrelation time
    (in units of the series) where ``rho`` first falls below ``n_sigma`` errors (module
    docstring); then ``S`` is not used.
    """
    if isinstance(data, np.ndarray):
        if data.ndim > 2:
            raise ValueError("gamma_method: data must be 1D (one chain) or 2D (replicas, N)")
        reps = [np.asarray(r, dtype=np.float64) for r in np.atleast_2d(data)]
    elif all(np.ndim(x) == 0 for x in data):
        reps = [np.asarray(data, dtype=np.float64)]
    else:
        reps = [np.asarray(r, dtype=np.float64).ravel() for r in data]
    reps = [r for r in reps if len(r) > 0]
    if not reps:
        raise ValueError("gamma_method needs at least one sample")
    if any(not np.all(np.isfinite(r)) for r in reps):
        raise ValueError("gamma_method: the data contain NaN or Inf")
    if not (S >= 0 and math.isfinite(S)):
        raise ValueError(f"S must be a finite number >= 0, got {S}")
    if not (tau_exp >= 0 and math.isfinite(tau_exp)):
        raise ValueError(f"tau_exp must be a finite number >= 0, got {tau_exp}")
    if not (n_sigma > 0 and math.isfinite(n_sigma)):
        raise ValueError(f"n_sigma must be a finite number > 0, got {n_sigma}")
    lengths = np.array([len(r) for r in reps])
    n = int(lengths.sum())
    means = np.array([r.mean() for r in reps])
    mean = float(np.sum(lengths * means) / n)
    w_max = int(lengths.max()) // 2
    short = _short_or_constant(reps, means, mean, w_max)
    if short is not None:
        return short

    gamma = np.zeros(w_max)
    div = np.zeros(w_max)
    for r, m in zip(reps, means):
        gamma += _autocov_sum(r - m, w_max)
        div += np.clip(len(r) - np.arange(w_max), 0, None)
    div[div < 1] = 1.0
    gamma /= div

    if abs(gamma[0]) < 10 * np.finfo(float).tiny:  # fluctuations below the float range
        return _constant_result(mean, bool(np.ptp(means) == 0.0), n, len(reps), w_max)

    rho = gamma / gamma[0]
    tau_n = np.cumsum(np.concatenate(([0.5], rho[1:])))
    tau_n[tau_n <= 0.5] = 0.5 + np.finfo(np.float64).eps
    dtau_n = tau_n * 2.0 * np.sqrt(np.abs(np.arange(w_max) + 0.5 - tau_n) / n)
    dtau_n[0] = 0.0

    if S == 0 and tau_exp == 0:
        err = math.sqrt(gamma[0] / (n - 1))
        return GammaResult(
            mean, err, err * math.sqrt(0.5 / n), 0.5, 0.0, 0, n, len(reps), rho, tau_n
        )
    if tau_exp > 0:
        window, tail, dtau = _tail_window(rho, dtau_n, n, tau_exp, n_sigma)
    else:  # Wolff's automatic window
        w = np.arange(1, w_max)
        tau = S / np.log((2.0 * tau_n[1:] + 1.0) / (2.0 * tau_n[1:] - 1.0))
        g = np.exp(-w / tau) - tau / np.sqrt(w * n)
        below = np.nonzero(g < 0)[0]
        window = int(w[below[0]]) if len(below) else w_max - 1
        window = min(window, w_max - 1)
        tail, dtau = 0.0, float(dtau_n[window])
    tau_int = float(tau_n[window] * (1.0 + (2 * window + 1) / n) / (1.0 + 1.0 / n) + tail)
    err = math.sqrt(2.0 * tau_int * gamma[0] * (1.0 + 1.0 / n) / n)
    return GammaResult(
        mean=mean,
        error=err,
        error_of_error=err * math.sqrt((window + 0.5) / n),
        tau_int=tau_int,
        tau_int_error=dtau,
        window=window,
        n=n,
        n_replicas=len(reps),
        rho=rho,
        tau_int_curve=tau_n,
    )


def _short_or_constant(
    reps: list[np.ndarray], means: np.ndarray, mean: float, w_max: int
) -> GammaResult | None:
    """The result of data with no fluctuation, one measurement per chain, or too few for an
    autocorrelation analysis (module docstring); ``None`` for every other series."""
    n, n_rep = sum(len(r) for r in reps), len(reps)
    nan = float("nan")
    if max(len(r) for r in reps) < 2:  # one measurement per chain: no fluctuation measured
        return GammaResult(mean, nan, nan, nan, nan, 0, n, n_rep, np.full(1, nan), np.full(1, nan))
    if all(np.ptp(r) == 0.0 for r in reps):  # no fluctuation inside any replicum (exactly:
        # the deviations from a replicum's mean would be rounding noise, not Gamma(0) = 0)
        same = len({float(r[0]) for r in reps}) == 1  # one value in every replicum
        mean = float(reps[0][0]) if same else mean  # that value, not its rounded average
        return _constant_result(mean, same, n, n_rep, max(w_max, 1))
    if w_max < 2:  # too short for any autocorrelation analysis
        var = float(sum(np.sum((r - m) ** 2) for r, m in zip(reps, means)))
        err = math.sqrt(var / (n * (n - 1))) if n > 1 else nan
        return GammaResult(mean, err, nan, 0.5, nan, 0, n, n_rep, np.ones(1), np.full(1, 0.5))
    return None


def _constant_result(mean: float, same: bool, n: int, n_rep: int, w_max: int) -> GammaResult:
    """Data without fluctuation inside any replicum (``Gamma(0) = 0``); ``same``: the
    replica hold the same value."""
    if same:  # one constant: exact, error 0 and tau_int = 1/2 (as pyerrors)
        return GammaResult(
            mean, 0.0, 0.0, 0.5, 0.0, 0, n, n_rep, np.ones(w_max), np.full(w_max, 0.5)
        )
    # frozen chains that differ from each other (e.g. a sampler that never accepted):
    # nothing is known about the autocorrelation, so neither tau_int nor the error is
    nan = float("nan")
    return GammaResult(
        mean, nan, nan, nan, nan, 0, n, n_rep, np.full(w_max, nan), np.full(w_max, nan)
    )


def _tail_window(
    rho: np.ndarray, dtau_n: np.ndarray, n: int, tau_exp: float, n_sigma: float
) -> tuple[int, float, float]:
    """``(W, tail, delta tau_int)`` of the critical-slowing-down window: W the first
    ``rho(W)`` compatible with zero within ``n_sigma`` errors, ``tail = tau_exp |rho(W+1)|``
    (module docstring)."""
    w_max = len(rho)
    if w_max // 2 <= 1:
        raise ValueError(
            f"gamma_method: tau_exp needs at least 8 measurements per chain, got {2 * w_max}"
        )
    for w in range(1, w_max // 2):
        if rho[w] - n_sigma * _drho(rho, w, n) < 0 or w >= w_max // 2 - 2:
            break
    dtau = math.sqrt(float(dtau_n[w]) ** 2 + (tau_exp * _drho(rho, w + 1, n)) ** 2)
    return w, tau_exp * abs(float(rho[w + 1])), dtau


# ---------------------------------------------------------------------------- reading runs
@dataclass
class RunData:
    """Per-trajectory series of a run: arrays with axis 0 = trajectory, axis 1 = chain."""

    source: str
    dH: np.ndarray | None = None
    accepted: np.ndarray | None = None
    exp_minus_dH: np.ndarray | None = None
    #: name -> (T_measured, chains, *components)
    observables: dict[str, np.ndarray] = field(default_factory=dict)
    #: global lattice extents, when the file says (HDF5 ensembles)
    lattice: tuple[int, ...] | None = None
    #: Wilson-flow histories of measurements*.jsonl: "t" (m,), "t2E"/"tdt2E" (rows, chains,
    #: m): one row per line (per trajectory; offline: per configuration, one chain)
    flow: dict[str, np.ndarray] = field(default_factory=dict)
    #: what an HDF5 ensemble records about its run: "theory", "lattice", "params"
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def volume(self) -> int | None:
        """Number of lattice sites (product of :attr:`lattice`), None if the extents are unknown."""
        return None if self.lattice is None else int(np.prod(self.lattice))


#: what ``trivhmc analyze`` reads, for the messages about anything else
READS = "analyze reads records.jsonl, measurements*.jsonl or ensemble_c*.h5 (docs/run-output.md)"
_SERIES_KEYS = ("dH", "accepted", "exp_minus_dH")
_CHAIN_FILE = re.compile(r"^ensemble_c(\d+)\.h5$|_c(\d+)_\d+(?:\.[A-Za-z0-9]+)?$")


def chain_of_file(name: str | Path) -> int | None:
    """The chain a file of a run holds, from its name: ``ensemble_c<chain>.h5`` or
    ``<name>_c<chain>_<count>.lime`` / ``.nersc`` (docs/run-output.md); None for any other
    name."""
    m = _CHAIN_FILE.search(Path(str(name)).name)
    return None if m is None else int(m.group(1) or m.group(2))


def _is_numeric(value: Any) -> bool:
    """A JSON number (``true``/``false``, ``null`` as not measured) or nested lists of them."""
    if isinstance(value, list):
        return all(_is_numeric(x) for x in value)
    return value is None or isinstance(value, (int, float))


def _chain_array(value: Any, n_chains: int | None, what: str) -> np.ndarray:
    """``value`` (a number or a list over chains) as a float array; ``what`` (``file:line:
    key``) names it in the error for anything that is not numbers."""
    if not _is_numeric(value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InputError(f"{what}: {shown} is not a number or a list of numbers (one per chain)")
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what}: the lists of its chains differ in length") from None
    if a.ndim == 0:
        a = a.reshape(1)
    if n_chains is not None and a.shape[0] != n_chains:
        raise InputError(f"{what}: {a.shape[0]} chains, expected {n_chains}")
    return a


def read_records(path: str | Path) -> RunData:
    """Read a ``records.jsonl`` or ``measurements*.jsonl`` file (docs/run-output.md):
    production records only, the last record of each trajectory number (a resumed run may
    repeat trajectories after its checkpoint), sorted by trajectory. Offline measurements
    (``trivhmc measure``: one line per configuration, with ``file`` and ``chain``) are grouped
    by chain (:func:`_read_offline`). A truncated last line (a killed run) is ignored with a
    warning; any other malformed line, a value that is not a number, a file without
    production records or without anything to analyse is an :class:`InputError`."""
    path = Path(path)
    lines, lattice = _production_records(path)
    if any("file" in rec or "chain" in rec for _, rec in lines):
        run = _read_offline(path, lines, lattice)
    else:
        by_traj = {rec["trajectory"]: (i, rec) for i, rec in lines}  # the last one counts
        run = _read_per_trajectory(path, [by_traj[t] for t in sorted(by_traj)], lattice)
    if not run.observables and all(getattr(run, k) is None for k in _SERIES_KEYS):
        hint = " (the run's progress file)" if path.name == "progress.json" else ""
        raise InputError(
            f"{path}{hint}: none of its {len(lines)} production record(s) has dH, accepted, "
            f"exp_minus_dH or observables: not a records or measurements file; {READS}"
        )
    return run


def _read_per_trajectory(
    path: Path, recs: list[tuple[int, dict[str, Any]]], lattice: tuple[int, ...] | None
) -> RunData:
    """A records file or on-the-fly ``measurements.jsonl``: one record per trajectory, each
    value a list over chains (``recs``: ``(line, record)`` sorted by trajectory)."""
    run = RunData(source=str(path), lattice=lattice)
    cols, obs = _record_columns(path, recs)
    run.flow = _flow_histories([rec for _, rec in recs])
    for key, vals in cols.items():
        if vals:
            if len(vals) != len(recs):
                raise InputError(f"{path}: {key} is missing in some production records")
            setattr(run, key, np.stack(vals))
    for name, vals in obs.items():
        try:
            run.observables[name] = np.stack(vals)
        except ValueError:
            raise InputError(f"{path}: observable {name} changes shape between records") from None
    return run


def _read_offline(
    path: Path, lines: list[tuple[int, dict[str, Any]]], lattice: tuple[int, ...] | None
) -> RunData:
    """Offline measurements (``trivhmc measure``): one line per configuration with its
    ``file`` and ``chain`` (files written before the ``chain`` field: the chain the file name
    gives, :func:`chain_of_file`, else 0). The series are ``(trajectories, chains)`` with NaN
    where a chain has no configuration of that trajectory; a configuration measured twice
    (the same chain and trajectory) is an error, never a silent choice."""
    rows: list[tuple[int, int, int, dict[str, Any]]] = []
    seen: dict[tuple[int, int], tuple[int, Any]] = {}
    for i, rec in lines:
        if "file" not in rec and "chain" not in rec:
            raise InputError(
                f"{path}:{i}: a record without `file` among offline measurement lines "
                "(trivhmc measure writes `file` and `chain` on every line); analyze the "
                "records and the measurements files separately"
            )
        chain = rec.get("chain")
        if chain is None:  # written before trivhmc measure recorded the chain
            chain = chain_of_file(str(rec.get("file", "")))
            chain = 0 if chain is None else chain
        elif isinstance(chain, bool) or not isinstance(chain, int) or chain < 0:
            raise InputError(f"{path}:{i}: chain: {chain!r} is not an integer >= 0")
        key = (chain, rec["trajectory"])
        if key in seen:
            j, other = seen[key]
            files = f" ({other} and {rec.get('file')})" if "file" in rec else ""
            raise InputError(
                f"{path}:{i}: chain {chain} trajectory {rec['trajectory']} was measured already "
                f"on line {j}{files}; each configuration must be measured once: measure again "
                "with each configuration file once (not, e.g., both its .lime and .nersc copy)"
            )
        seen[key] = (i, rec.get("file"))
        rows.append((chain, rec["trajectory"], i, rec))
    chains = sorted({c for c, _, _, _ in rows})
    trajs = sorted({t for _, t, _, _ in rows})
    ci, ti = {c: k for k, c in enumerate(chains)}, {t: k for k, t in enumerate(trajs)}
    values: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    for c, t, i, rec in rows:
        for name, value in _observables_of(path, i, rec).items():
            what = f"{path}:{i}: observables.{name}"
            a = _chain_array(value, None, what)
            if a.shape[0] != 1:
                raise InputError(f"{what}: {a.shape[0]} values; an offline line holds one")
            values.setdefault(name, []).append((ti[t], ci[c], a[0]))
    run = RunData(source=str(path), lattice=lattice)
    for name, vals in values.items():
        shape = vals[0][2].shape
        if any(v.shape != shape for _, _, v in vals):
            raise InputError(f"{path}: observable {name} changes shape between records")
        a = np.full((len(trajs), len(chains), *shape), np.nan)
        for t, c, v in vals:
            a[t, c] = v
        run.observables[name] = a
    # histories, one row per line ((lines, 1, m)): only plotted, as the mean over all rows
    run.flow = _flow_histories([rec for _, _, _, rec in rows])
    return run


def _observables_of(path: Path, line: int, rec: dict[str, Any]) -> dict[str, Any]:
    obs = rec.get("observables") or {}
    if not isinstance(obs, dict):
        raise InputError(f"{path}:{line}: observables: not a JSON object {{NAME: values}}")
    return obs


def _production_records(
    path: Path,
) -> tuple[list[tuple[int, dict[str, Any]]], tuple[int, ...] | None]:
    """``(line number, record)`` of every production record of a JSON-lines file, in file
    order, and the lattice extents if a record gives them (see :func:`read_records`). A file
    that is empty, holds only thermalization records, or is not text (an ILDG/NERSC
    configuration) is an :class:`InputError`."""
    _refuse_configuration(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a records file (not UTF-8 text); {READS}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    out: list[tuple[int, dict[str, Any]]] = []
    lattice = None
    n_therm = 0
    last = max((i for i, s in enumerate(lines) if s.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:
                # stacklevel 3: the caller of read_records
                warnings.warn(f"{path}:{i + 1}: ignoring a truncated last record", stacklevel=3)
                continue
            raise InputError(f"{path}:{i + 1}: not a JSON object: {exc}") from None
        traj = rec.get("trajectory") if isinstance(rec, dict) else None
        if not isinstance(traj, int) or isinstance(traj, bool):
            raise InputError(f"{path}:{i + 1}: a record needs an integer 'trajectory'")
        if rec.get("thermalization", False):
            n_therm += 1
            continue
        out.append((i + 1, rec))
        if "lattice" in rec:  # measurements*.jsonl (app/measure.py)
            lattice = _lattice_field(rec["lattice"], f"{path}:{i + 1}")
    if not out:
        if n_therm:
            raise InputError(
                f"{path} holds no production records yet: its {n_therm} record(s) are all "
                "thermalization (run.thermalization); analyse it once production has started"
            )
        empty = " (it is empty)" if last < 0 else ""
        raise InputError(f"{path} holds no records{empty}; {READS}")
    return out, lattice


def _refuse_configuration(path: Path) -> None:
    """An ILDG or NERSC configuration given where a records file is read: say what it is."""
    from app.io.errors import ConfigFormatError
    from app.io.formats import detect_format

    try:
        fmt = detect_format(path)
    except ConfigFormatError:
        return
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if fmt in ("ildg", "nersc"):
        kind = {"ildg": "an ILDG", "nersc": "a NERSC"}[fmt]
        raise InputError(
            f"{path} is {kind} configuration, not a records file or ensemble; {READS} "
            "(trivhmc measure DECK FILE measures a configuration)"
        )


def _lattice_field(lat: Any, where: str) -> tuple[int, ...]:
    """The ``lattice`` of a measurement line, checked to be a list of extents > 0."""
    if not (
        isinstance(lat, list)
        and lat
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in lat)
    ):
        raise InputError(f"{where}: lattice: {lat!r} is not a list of extents > 0")
    return tuple(lat)


def _record_columns(
    path: Path, recs: list[tuple[int, dict[str, Any]]]
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """Per-record chain arrays of ``dH``/``accepted``/``exp_minus_dH`` and of each observable,
    with the number of chains checked to be the same throughout."""
    n_chains = None
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _SERIES_KEYS}
    obs: dict[str, list[np.ndarray]] = {}
    for i, rec in recs:
        where = f"{path}:{i}: trajectory {rec['trajectory']}"
        for key in cols:
            if key in rec:
                a = _chain_array(rec[key], n_chains, f"{where}: {key}")
                n_chains = a.shape[0]
                cols[key].append(a)
        for name, value in _observables_of(path, i, rec).items():
            a = _chain_array(value, n_chains, f"{where}: observables.{name}")
            n_chains = a.shape[0]
            obs.setdefault(name, []).append(a)
    return cols, obs


def _flow_histories(recs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Wilson-flow histories ``t`` and, where every record has them, ``t2E``/``tdt2E``; empty
    unless every record has a flow history, or when the histories differ in length."""
    flows = [rec.get("flow") for rec in recs]
    if not (flows and all(isinstance(f, dict) and "t" in f for f in flows)):
        return {}
    try:
        out = {"t": np.asarray(flows[0]["t"], dtype=float)}
        for key in ("t2E", "tdt2E"):
            if all(key in f for f in flows):
                out[key] = np.array([f[key] for f in flows], dtype=float)
    except (TypeError, ValueError):
        return {}  # histories of different lengths (or not numbers): not plotted
    return out


def _attr_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_hdf5(path: str | Path) -> RunData:
    """Read per-trajectory data from an HDF5 ensemble file: datasets ``observables/NAME``
    and ``dH``, ``accepted`` (optionally ``exp_minus_dH``) at the root, each with axis 0 =
    trajectory and, when 2D or more, axis 1 = chain (docs/run-output.md). A file of another
    format (a checkpoint), without any of these datasets, or without a committed row is an
    :class:`InputError`. Opened without HDF5 file locking (a running run's writer is never
    disturbed, app/io/hdf5.py)."""
    import h5py

    from app.io.errors import ConfigFormatError
    from app.io.hdf5 import FORMAT, committed_rows, open_ensemble

    path = Path(path)
    run = RunData(source=str(path))
    try:
        with open_ensemble(path, "r") as f:
            fmt = _attr_text(f.attrs.get("format", ""))
            if fmt and fmt != FORMAT:
                raise InputError(f"{path} is not a trivhmc ensemble (format {fmt}); {READS}")
            run.identity = _identity(f.attrs)
            if "lattice" in run.identity:
                run.lattice = tuple(run.identity["lattice"])
            rows = slice(committed_rows(f)[1])  # an ensemble's committed rows only
            for key in _SERIES_KEYS:
                ds = f.get(key)
                if ds is None and "observables" in f:
                    ds = f["observables"].get(key)
                if isinstance(ds, h5py.Dataset):
                    a = np.asarray(ds[rows], dtype=np.float64)
                    setattr(run, key, a.reshape(a.shape[0], -1) if a.ndim <= 2 else a)
            grp = f.get("observables")
            if isinstance(grp, h5py.Group):
                for name, ds in grp.items():
                    if name in ("dH", "accepted", "exp_minus_dH", "trajectory"):
                        continue
                    if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "fiub":
                        a = np.asarray(ds[rows], dtype=np.float64)
                        run.observables[name] = a[:, None] if a.ndim == 1 else a
    except (OSError, ConfigFormatError) as exc:
        raise InputError(f"cannot read HDF5 file {path}: {exc}") from None
    if not run.observables and all(getattr(run, k) is None for k in _SERIES_KEYS):
        raise InputError(
            f"{path} holds no observables/NAME, dH or accepted datasets: not a trivhmc "
            f"ensemble; {READS}"
        )
    if production_count(run) == 0:
        raise InputError(f"{path} holds no committed trajectory yet; nothing to analyse")
    return run


def merge_chains(runs: list[RunData], source: str) -> RunData:
    """Combine single-run data (e.g. one HDF5 file per chain) along the chain axis; series
    of unequal length are cut to the shortest."""
    out = RunData(source=source, lattice=runs[0].lattice if runs else None)
    for key in _SERIES_KEYS:
        parts = [getattr(r, key) for r in runs]
        if all(p is not None for p in parts):
            n = min(p.shape[0] for p in parts)
            setattr(out, key, np.concatenate([p[:n] for p in parts], axis=1))
    names = set.intersection(*(set(r.observables) for r in runs)) if runs else set()
    for name in sorted(names):
        parts = [r.observables[name] for r in runs]
        n = min(p.shape[0] for p in parts)
        out.observables[name] = np.concatenate([p[:n] for p in parts], axis=1)
    return out


def _check_one_run(files: list[Path], runs: list[RunData]) -> None:
    """The ensemble files of a directory must be chains of one run: the same theory,
    couplings (``params``) and lattice where the files record them."""
    first = runs[0].identity
    for f, r in zip(files[1:], runs[1:]):
        diffs = []
        for key in ("theory", "lattice", "params"):
            a, b = first.get(key), r.identity.get(key)
            if a is not None and b is not None and a != b:
                if key == "params":
                    a, b = _params_diff(a, b)
                diffs.append(f"{key} {a} != {b}")
        if diffs:
            raise InputError(
                f"{files[0]} and {f} are not chains of one run ({'; '.join(diffs)}): analyze "
                "each ensemble file on its own, or keep the chains of one run in a directory"
            )


def _identity(attrs: Any) -> dict[str, Any]:
    """The ``theory``, ``lattice`` and ``params`` an ensemble's root attributes record (the
    couplings decoded from JSON: compared as values, not as text)."""
    out: dict[str, Any] = {}
    if "theory" in attrs:
        out["theory"] = _attr_text(attrs["theory"])
    if "lattice" in attrs:
        out["lattice"] = [int(x) for x in np.asarray(attrs["lattice"]).ravel()]
    if "params" in attrs:
        out["params"] = _json_or_text(_attr_text(attrs["params"]))
    return out


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _params_diff(pa: Any, pb: Any) -> tuple[str, str]:
    """The couplings in which two ``params`` attributes differ, as JSON text."""
    if not (isinstance(pa, dict) and isinstance(pb, dict)):
        return json.dumps(pa), json.dumps(pb)
    keys = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
    return (json.dumps({k: pa.get(k) for k in keys}), json.dumps({k: pb.get(k) for k in keys}))


def _lattice_of(files: list[Path]) -> tuple[int, ...] | None:
    """The lattice an ensemble file of the run records (None if there is none)."""
    from app.io.errors import ConfigFormatError
    from app.io.hdf5 import open_ensemble

    for f in files:
        try:
            with open_ensemble(f, "r") as h:
                if "lattice" in h.attrs:
                    return tuple(int(x) for x in np.asarray(h.attrs["lattice"]).ravel())
        except (OSError, ConfigFormatError):
            continue
    return None


def load_run(path: str | Path) -> RunData:
    """A run directory (its ``records.jsonl``, else its ``ensemble_c*.h5`` files, which must be
    chains of one run), a ``.jsonl`` file or an HDF5 file."""
    path = Path(path)
    if path.is_dir():
        rec = path / RECORDS_FILE
        files = sorted(path.glob("ensemble_c*.h5"))
        if rec.is_file():
            run = read_records(rec)
            run.lattice = run.lattice or _lattice_of(files)
            return run
        if not files:
            raise InputError(f"{path} holds neither {RECORDS_FILE} nor ensemble_c*.h5 files")
        runs = [read_hdf5(f) for f in files]
        _check_one_run(files, runs)
        return merge_chains(runs, source=str(path))
    if not path.exists():
        raise InputError(f"{path} does not exist")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if magic == b"\x89HDF\r\n\x1a\n":
        return read_hdf5(path)
    return read_records(path)


# ---------------------------------------------------------------------------- analysis
@dataclass
class Analysis:
    """Everything ``trivhmc analyze`` reports."""

    source: str
    n_trajectories: int
    n_chains: int
    skip: int
    acceptance: float | None
    exp_minus_dH: GammaResult | None
    observables: dict[str, GammaResult]
    #: derived quantities (app/derived.py): name -> Derived(result, formula)
    derived: dict[str, Any] = field(default_factory=dict)
    bin_size: int = 1
    volume: int | None = None
    #: the slow mode's tau_exp of the tail window (0: Wolff's automatic window)
    tau_exp: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """JSON-safe summary (non-finite numbers become null)."""
        obs = {k: v.as_dict() for k, v in self.observables.items()}
        derived = {k: {**d.result.as_dict(), "formula": d.formula} for k, d in self.derived.items()}
        e = self.exp_minus_dH
        return _finite(
            {
                "source": self.source,
                "trajectories": self.n_trajectories,
                "chains": self.n_chains,
                "skip": self.skip,
                "bin_size": self.bin_size,
                "volume": self.volume,
                "tau_exp": self.tau_exp,
                "observables": obs,
                "derived": derived,
                "acceptance": self.acceptance,
                "exp_minus_dH": None if e is None else e.mean,
                "exp_minus_dH_error": None if e is None else e.error,
            }
        )


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _components(name: str, a: np.ndarray) -> dict[str, np.ndarray]:
    """(T, C, *comp) -> {name or name[i,...]: (C, T)} per component."""
    if a.ndim == 2:
        return {name: a.T}
    out = {}
    for idx in np.ndindex(*a.shape[2:]):  # row-major: numeric order of the indices
        out[f"{name}[{','.join(map(str, idx))}]"] = a[(slice(None), slice(None)) + idx].T
    return out


def production_count(run: RunData) -> int:
    """Number of production trajectories of a run (rows of ``dH``; without ``dH``, e.g. a
    measurements file, the longest observable series)."""
    for a in (run.dH, run.exp_minus_dH, run.accepted):
        if a is not None:
            return int(a.shape[0])
    return max((int(a.shape[0]) for a in run.observables.values()), default=0)


def series(run: RunData, skip: int = 0) -> dict[str, np.ndarray]:
    """Every analysed series as (chains, T) after the thermalisation cut: observable
    components and ``exp_minus_dH``. ``skip`` counts production trajectories; observables
    measured every k-th trajectory lose the measurements made in the skipped range."""
    if skip < 0:
        raise InputError("--skip must be >= 0")
    n_all = None if run.dH is None else run.dH.shape[0]
    n_prod = production_count(run)
    if skip and skip >= n_prod:
        what = "trajectory" if n_prod == 1 else "trajectories"
        raise InputError(
            f"--skip {skip} leaves nothing to analyse: {run.source} has {n_prod} production "
            f"{what}; skip fewer (an error needs at least 2 measurements left per chain)"
        )
    out: dict[str, np.ndarray] = {}
    from .derived import natural_key

    for name in sorted(run.observables, key=natural_key):  # C_2 before C_10
        a = run.observables[name]
        cut = skip if not n_all else int(math.ceil(skip * a.shape[0] / n_all))
        for comp, s in _components(name, a[cut:]).items():
            out[comp] = s
    if run.exp_minus_dH is not None or run.dH is not None:
        e = run.exp_minus_dH if run.exp_minus_dH is not None else np.exp(-run.dH)
        out["exp_minus_dH"] = e[skip:].T
    return out


def _gamma_of(name: str, chains: list[np.ndarray], S: float, tau_exp: float) -> GammaResult:
    """:func:`gamma_method` of one observable; a series too short for the analysis asked for
    is an input error naming the observable."""
    try:
        return gamma_method(chains, S=S, tau_exp=tau_exp)
    except ValueError as exc:
        raise InputError(f"observable {name!r}: {exc}") from None


def analyze_data(
    run: RunData,
    skip: int = 0,
    S: float = DEFAULT_S,
    names: list[str] | None = None,
    bin_size: int = 1,
    volume: int | None = None,
    derived: bool = True,
    tau_exp: float = 0.0,
) -> Analysis:
    """Gamma-method analysis of every observable (each chain a replica), acceptance,
    ``<exp(-dH)>`` and the derived quantities of :mod:`app.derived`, after dropping the first
    ``skip`` production trajectories (the thermalization cut) and averaging ``bin_size``
    consecutive measurements per chain. ``volume`` overrides the run's lattice volume.
    ``tau_exp > 0`` (in units of the analysed series: measurements, or bins) attaches the
    exponential tail of a slow mode to every observable's autocorrelation (module docstring)."""
    from .derived import bin_series, derived_quantities

    if bin_size < 1:
        raise InputError(f"--bin {bin_size}: the bin size must be >= 1")
    volume = volume or run.volume
    data = series(run, skip)

    def wanted(name: str) -> bool:
        return name == "exp_minus_dH" or not names or name in names or _base(name) in names

    if names and set(names) - set(run.observables) - set(data):
        # derived names too (whatever the binning leaves of them; S = 0: names only)
        both = derived_quantities(data, volume, S=0.0) if derived else {}
        known = set(run.observables) | set(data) | set(both) | {_base(k) for k in both}
        unknown = set(names) - known
        if unknown:
            raise InputError(
                f"unknown observable(s) {sorted(unknown)}; available: {sorted(run.observables)}"
                + (f", derived: {sorted({_base(k) for k in both})}" if both else "")
            )
    _check_bin(run.source, {k: v for k, v in data.items() if wanted(k)}, bin_size)
    der = {}
    if derived:
        der = derived_quantities(data, volume, S=S, bin_size=bin_size, tau_exp=tau_exp)
        der = {k: v for k, v in der.items() if wanted(k)}
    acceptance = None
    if run.accepted is not None and np.isfinite(run.accepted[skip:]).any():
        acceptance = float(np.nanmean(run.accepted[skip:]))
    obs: dict[str, GammaResult] = {}
    emd = None
    n_chains = 1
    if run.dH is not None:
        n_traj = max(0, run.dH.shape[0] - skip)
    else:  # measurements: the rows (trajectories) of the longest series
        n_traj = max((s.shape[1] for s in data.values()), default=0)
    for name, s in data.items():
        n_chains = max(n_chains, s.shape[0])
        chains = [bin_series(c[np.isfinite(c)], bin_size) for c in s]  # NaN: not measured
        if not any(len(c) for c in chains):
            continue
        if name == "exp_minus_dH":
            emd = _gamma_of(name, chains, S, tau_exp)
        elif wanted(name):
            obs[name] = _gamma_of(name, chains, S, tau_exp)
    after = f" after --skip {skip}" if skip else ""
    if names:
        got = set(obs) | set(der) | {_base(k) for k in (*obs, *der)}
        got |= set() if emd is None else {"exp_minus_dH"}
        missing = sorted(set(names) - got)
        if missing:
            short = f" (or fewer than --bin {bin_size} per chain)" if bin_size > 1 else ""
            raise InputError(
                f"observable(s) {missing} of {run.source}: no finite measurement{after}{short}"
            )
    if not obs and emd is None and not der and acceptance is None:
        raise InputError(f"{run.source}: nothing to analyse: no finite measurement{after}")
    return Analysis(
        run.source, n_traj, n_chains, skip, acceptance, emd, obs, der, bin_size, volume, tau_exp
    )


def _base(name: str) -> str:
    """``m_eff[C][3]`` -> ``m_eff``: the name ``--observable`` selects a family by."""
    return name.split("[")[0]


def _check_bin(source: str, data: dict[str, np.ndarray], bin_size: int) -> None:
    """``--bin B`` must not exceed the measurements per chain of any analysed series (their
    bins would be empty and the series silently left out)."""
    if bin_size <= 1:
        return
    counts = {k: max(int(np.count_nonzero(np.isfinite(c))) for c in s) for k, s in data.items()}
    short = {k: n for k, n in counts.items() if 0 < n < bin_size}
    if not short:
        return
    longest = max(counts.values())
    if longest < bin_size:
        raise InputError(
            f"--bin {bin_size} exceeds the {longest} measurements per chain of {source}; "
            f"use --bin {max(1, longest // 2)} or less (an error needs at least 2 bins per chain)"
        )
    listed = sorted(short, key=lambda k: (short[k], k))
    text = ", ".join(f"{k} ({short[k]})" for k in listed[:5])
    more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
    raise InputError(
        f"--bin {bin_size} exceeds the measurements per chain of {text}{more} in {source}; use "
        f"--bin {max(1, min(short.values()) // 2)} or less, or select the other observables "
        "with --observable"
    )


def analyze(
    path: str | Path,
    skip: int = 0,
    S: float = DEFAULT_S,
    names: list[str] | None = None,
    bin_size: int = 1,
    tau_exp: float = 0.0,
) -> Analysis:
    """Read a run directory, records file or HDF5 ensemble and analyse it."""
    return analyze_data(
        load_run(path), skip=skip, S=S, names=names, bin_size=bin_size, tau_exp=tau_exp
    )


def format_table(a: Analysis) -> str:
    """Human-readable report."""
    lines = [
        f"source: {a.source}",
        f"trajectories: {a.n_trajectories} x {a.n_chains} chain(s) (first {a.skip} skipped)"
        + (f", bins of {a.bin_size}" if a.bin_size > 1 else ""),
    ]
    if a.tau_exp > 0:
        lines.append(
            f"window:       tail with tau_exp = {a.tau_exp:g} attached where rho(W) is compatible "
            "with zero"
        )
    if a.acceptance is not None:
        lines.append(f"acceptance:   {a.acceptance:.4f}")
    if a.exp_minus_dH is not None:
        e = a.exp_minus_dH
        lines.append(f"<exp(-dH)>:   {e.mean:.6g} +- {e.error:.2g}   (expected 1)")
    if a.observables:
        width = max(12, *(len(k) for k in a.observables))
        lines.append("")
        lines.append(
            f"{'observable':<{width}}  {'mean':>14}  {'error':>10}  {'tau_int':>8}  "
            f"{'+-':>7}  {'W':>5}"
        )
        for name, r in a.observables.items():
            lines.append(
                f"{name:<{width}}  {r.mean:>14.8g}  {r.error:>10.3g}  {r.tau_int:>8.3f}  "
                f"{r.tau_int_error:>7.3f}  {r.window:>5d}"
            )
    elif not a.derived:
        lines.append("no observables recorded")
    if a.derived:
        width = max(12, *(len(k) for k in a.derived))
        lines.append("")
        vol = f", V = {a.volume}" if a.volume else ""
        lines.append(f"derived (Gamma method, errors propagated linearly{vol}):")
        for name, d in a.derived.items():
            r = d.result
            lines.append(
                f"{name:<{width}}  {r.mean:>14.8g}  {r.error:>10.3g}  {r.tau_int:>8.3f}  "
                f"{r.tau_int_error:>7.3f}  {r.window:>5d}   {d.formula}"
            )
    return "\n".join(lines)


def plot(run: RunData, a: Analysis, directory: str | Path) -> list[Path]:
    """Write one PNG per observable component: Monte Carlo history (every chain) and the
    normalised autocorrelation function rho(t) with errors, the window W and tau_int(t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, s in series(run, a.skip).items():
        r = a.exp_minus_dH if name == "exp_minus_dH" else a.observables.get(name)
        if r is None:
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
        for c, chain in enumerate(s):
            ax1.plot(chain, lw=0.7, label=f"chain {c}" if len(s) > 1 else None)
        ax1.axhline(r.mean, color="k", lw=1)
        ax1.axhspan(r.mean - r.error, r.mean + r.error, color="k", alpha=0.15)
        ax1.set_xlabel("measurement")
        ax1.set_ylabel(name)
        ax1.set_title(f"{name} = {r.mean:.6g} +- {r.error:.2g}")
        if len(s) > 1 and len(s) <= 8:
            ax1.legend(fontsize=7)
        t_max = int(min(len(r.rho) - 1, max(4 * r.window, 20)))
        t = np.arange(t_max + 1)
        ax2.errorbar(t, r.rho[: t_max + 1], yerr=r.drho(t_max), fmt=".", ms=3, capsize=1)
        ax2.axhline(0, color="k", lw=0.5)
        ax2.axvline(r.window, color="r", ls="--", lw=1, label=f"W = {r.window}")
        ax2.set_xlabel("t")
        ax2.set_ylabel("rho(t)")
        ax3 = ax2.twinx()
        ax3.plot(t, r.tau_int_curve[: t_max + 1], color="g", lw=1)
        ax3.set_ylabel("tau_int(t)", color="g")
        ax2.set_title(f"tau_int = {r.tau_int:.3g} +- {r.tau_int_error:.2g}")
        ax2.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        p = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    written += _plot_derived(a, out_dir, plt)
    if run.flow.get("t2E") is not None:
        written.append(_plot_flow(run, a, out_dir, plt))
    return written


def _plot_flow(run: RunData, a: Analysis, out_dir: Path, plt) -> Path:
    """``flow.png``: t^2 E(t) and t d/dt t^2 E(t), mean over configurations and chains with
    the naive standard error, the reference value 0.3 and t0, w0^2 (Gamma-method errors)."""
    t = run.flow["t"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("t2E", "t^2 E(t)"), ("tdt2E", "t d/dt t^2 E(t)")):
        h = run.flow.get(key)
        if h is None:
            continue
        h = h.reshape(-1, h.shape[-1])
        mean = h.mean(axis=0)
        err = h.std(axis=0, ddof=1) / np.sqrt(len(h)) if len(h) > 1 else 0 * mean
        ax.plot(t, mean, label=label)
        ax.fill_between(t, mean - err, mean + err, alpha=0.3)
    ax.axhline(0.3, color="k", lw=0.7, ls=":")
    for name, square, color in (("t0", False, "C0"), ("w0", True, "C1")):
        r = a.observables.get(name)
        if r is not None and math.isfinite(r.mean):
            x, dx = (r.mean**2, 2 * r.mean * r.error) if square else (r.mean, r.error)
            ax.axvspan(x - dx, x + dx, color=color, alpha=0.2)
            ax.axvline(x, color=color, lw=0.8, label=f"{name}{'^2' if square else ''} = {x:.4g}")
    ax.set_xlabel("flow time t / a^2")
    ax.legend(fontsize=8)
    ax.set_title("Wilson flow (naive errors of the histories)")
    fig.tight_layout()
    p = out_dir / "flow.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def _plot_derived(a: Analysis, out_dir: Path, plt) -> list[Path]:
    """``correlator_NAME.png`` (C(t) and m_eff(t) with errors) per correlator family and
    ``derived.png`` (every scalar derived quantity with its error)."""
    from .derived import _family

    written = []
    families = _family({k: None for k in a.observables})
    for base, keys in sorted(families.items()):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
        c = np.array([a.observables[k].mean for k in keys])
        dc = np.array([a.observables[k].error for k in keys])
        ax1.errorbar(np.arange(len(c)), np.abs(c), yerr=dc, fmt="o", ms=3, capsize=2)
        if np.all(np.abs(c) > 0):
            ax1.set_yscale("log")
        ax1.set_xlabel("t")
        ax1.set_ylabel(f"|{base}(t)|")
        ax1.set_title(base)
        meff = [
            (int(k.rsplit("[", 1)[1][:-1]), d.result)
            for k, d in a.derived.items()
            if k.startswith(f"m_eff[{base}][")
        ]
        if meff:
            t = [x for x, _ in meff]
            ax2.errorbar(
                t,
                [r.mean for _, r in meff],
                yerr=[r.error for _, r in meff],
                fmt="o",
                ms=3,
                capsize=2,
            )
        ax2.set_xlabel("t")
        ax2.set_ylabel("m_eff(t)")
        ax2.set_title("effective mass, arccosh form")
        fig.tight_layout()
        p = out_dir / f"correlator_{re.sub(r'[^A-Za-z0-9_.-]+', '_', base)}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    scalars = [(k, d) for k, d in a.derived.items() if not k.startswith("m_eff[")]
    if scalars:
        fig, axes = plt.subplots(
            len(scalars), 1, figsize=(6, 1.2 + 0.9 * len(scalars)), squeeze=False
        )
        for ax, (name, d) in zip(axes[:, 0], scalars):
            r = d.result
            ax.errorbar([r.mean], [0], xerr=[r.error], fmt="o", capsize=3)
            ax.set_yticks([])
            ax.set_title(f"{name} = {d.formula} = {r.mean:.6g} +- {r.error:.2g}", fontsize=8)
        fig.tight_layout()
        p = out_dir / "derived.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written
