"""A fake accelerator for CPU-only machines, and the device scenarios run on it.

``setup()`` registers torch's PrivateUse1 backend as device ``fakegpu`` (a Python backend:
torch.utils.backend_registration) whose tensors hold a CPU tensor and compute on the CPU, but
look like accelerator tensors to the code under test: ``device.type == "fakegpu"`` (so every
``device.type == "cpu"`` routing sends them down the device path), ``.numpy()`` and
``np.asarray`` refuse them, and an operation that mixes them with a CPU tensor of one or more
dimensions raises "Expected all tensors to be on the same device", as CUDA and XPU do (0-d CPU
tensors and CPU index tensors are accepted, as there). ``.cpu()``, ``.to(device)``,
``.tolist()``, ``float()``/``.item()`` and autograd work as on a GPU. For GPU-aware MPI a
tensor exposes ``__cuda_array_interface__`` over its host memory (no ``__dlpack__``), which
a host MPI reads and writes like device memory, so the device-buffer path of parallel/comm.py
runs too; ``torch.accelerator.synchronize`` is a no-op for the fake device.

It registers a backend for the rest of the process (``torch.accelerator`` then reports one),
so the tests run each scenario in its own interpreter (tests/test_fake_device.py)::

    python tests/fake_device.py <scenario>                 # one process
    mpiexec -n 2 python tests/fake_device.py <scenario>    # the MPI ones

Each scenario prints ``OK <scenario>`` on world rank 0 when it passes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves, tree_map

NAME = "fakegpu"
ROOT = Path(__file__).resolve().parents[1]
_LIBS: list = []

#: ops that accept CPU tensors next to device ones (as CUDA does: copies, transfers, indexing
#: with CPU index tensors)
_CROSS_DEVICE = {
    "aten::copy_",
    "aten::_to_copy",
    "aten::index",
    "aten::index_put_",
    "aten::index_put",
    "aten::_index_put_impl_",
    "aten::_copy_from",
    "aten::_copy_from_and_resize",
}
_TYPESTR = {
    torch.float64: "<f8",
    torch.float32: "<f4",
    torch.complex128: "<c16",
    torch.complex64: "<c8",
    torch.int64: "<i8",
    torch.int32: "<i4",
    torch.bool: "|b1",
}


class DeviceMismatch(RuntimeError):
    """A CPU tensor met a device tensor in one operation."""


def _resolved(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its lazy conj/neg bits applied (the Python key runs below those keys)."""
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def _unwrap(x):
    if isinstance(x, FakeDeviceTensor):
        return _resolved(x.inner)
    if isinstance(x, torch.device) and x.type == NAME:
        return torch.device("cpu")
    return x


def _wrap(x):
    if isinstance(x, torch.Tensor) and not isinstance(x, FakeDeviceTensor):
        return FakeDeviceTensor(x)
    return x


def _refuse_numpy() -> None:
    raise TypeError(
        f"can't convert {NAME}:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
        "tensor to host memory first."
    )


class FakeDeviceTensor(torch.Tensor):
    """A tensor on the fake device: a wrapper around a CPU tensor (``inner``)."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            device=torch.device(NAME, 0),
            requires_grad=inner.requires_grad,
        )
        r.inner = inner
        return r

    def __repr__(self, **kwargs) -> str:
        return f"FakeDeviceTensor({self.inner!r})"

    def __deepcopy__(self, memo):
        import copy

        out = FakeDeviceTensor(copy.deepcopy(self.inner, memo))
        out.requires_grad_(self.requires_grad)
        memo[id(self)] = out
        return out

    def __reduce_ex__(self, protocol):
        """``torch.save`` stores it (as the host tensor it is: loaded with ``map_location="cpu"``
        as a device tensor would be); any other pickle, such as an MPI object message
        (``comm.gather``), fails: the code should not send device tensors that way."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.endswith(os.path.join("torch", "serialization.py")):
                return _resolved(self.inner).__reduce_ex__(protocol)
            frame = frame.f_back
        raise TypeError(f"a {NAME} tensor pickled outside torch.save (an MPI object message?)")

    def tolist(self):
        return _resolved(self.inner).tolist()

    def data_ptr(self) -> int:
        return self.inner.data_ptr()

    def numpy(self, *, force: bool = False):
        _refuse_numpy()

    def __array__(self, dtype=None, copy=None):
        _refuse_numpy()

    @property
    def __dlpack__(self):  # mpi4py then takes the array interface below
        raise AttributeError("__dlpack__")

    @property
    def __cuda_array_interface__(self) -> dict:
        """The buffer a GPU-aware MPI gets (mpi4py): the inner tensor's host memory."""
        t = self.inner
        if t.is_conj() or t.is_neg():
            raise RuntimeError("a message buffer with a lazy conj/neg bit")
        size = t.element_size()
        return {
            "shape": tuple(t.shape),
            "typestr": _TYPESTR[t.dtype],
            "data": (t.data_ptr(), False),
            "strides": None if t.is_contiguous() else tuple(s * size for s in t.stride()),
            "version": 3,
        }

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name not in _CROSS_DEVICE:
            cpu = [
                a
                for a in tree_leaves((args, kwargs))
                if isinstance(a, torch.Tensor)
                and not isinstance(a, FakeDeviceTensor)
                and a.device.type == "cpu"
                and a.dim() > 0
            ]
            if cpu:
                raise DeviceMismatch(
                    f"Expected all tensors to be on the same device, but found at least two "
                    f"devices, {NAME}:0 and cpu! ({name} with CPU tensors of shapes "
                    f"{[tuple(a.shape) for a in cpu]})"
                )
        if name == "aten::_to_copy":
            kw = dict(kwargs)
            dev = kw.pop("device", None)
            kw.pop("non_blocking", None)
            out = torch.ops.aten._to_copy(_unwrap(args[0]), **kw)
            return out if dev is not None and torch.device(dev).type == "cpu" else _wrap(out)
        if name in ("aten::_conj", "aten::_neg_view"):  # the lazy bit lives on the inner
            return FakeDeviceTensor(func(args[0].inner))
        return tree_map(_wrap, func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs)))


def _kernel(op):
    """A PrivateUse1 kernel: ``op`` on the CPU (factories with ``device=fakegpu``, copies
    into fake tensors), results wrapped."""

    def impl(*args, **kwargs):
        def unwrap(x):
            return x.inner if isinstance(x, FakeDeviceTensor) else _unwrap(x)

        return tree_map(_wrap, op(*tree_map(unwrap, args), **tree_map(unwrap, kwargs)))

    return impl


def setup() -> torch.device:
    """Register the fake device (once per process); returns ``torch.device("fakegpu", 0)``."""
    if not _LIBS:
        from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

        _setup_privateuseone_for_python_backend(NAME)
        lib = torch.library.Library("_", "IMPL")
        lib.fallback(lambda op, *a, **k: _kernel(op)(*a, **k), "PrivateUse1")
        aten = torch.library.Library("aten", "IMPL")
        for op in ("empty.memory_format", "empty_strided", "_copy_from", "copy_"):
            base, _, overload = op.partition(".")
            aten.impl(op, _kernel(getattr(getattr(torch.ops.aten, base), overload or "default")),
                      "PrivateUse1")  # fmt: skip
        _LIBS.extend((lib, aten))
        sync = torch.accelerator.synchronize

        def synchronize(device=None):  # nothing is ever queued on the fake device
            if device is not None and torch.device(device).type == NAME:
                return None
            return sync(device)

        torch.accelerator.synchronize = synchronize
    return torch.device(NAME, 0)


# ---------------------------------------------------------------------------- scenarios
def _close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    a, b = a.detach().cpu(), b.detach().cpu()
    err = float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
    assert err <= tol, f"{what}: relative difference {err:.3g} > {tol:g}"


def scenario_harness(dev: torch.device) -> None:
    """The fake device behaves like an accelerator where the code under test looks."""
    x = torch.arange(6.0).reshape(2, 3).to(dev)
    assert x.device.type == NAME and isinstance(x, FakeDeviceTensor)
    for bad in (lambda: x.numpy(), lambda: __import__("numpy").asarray(x)):
        try:
            bad()
        except TypeError:
            pass
        else:
            raise AssertionError("a device tensor converted to numpy")
    try:
        x + torch.ones(2, 3)
    except DeviceMismatch:
        pass
    else:
        raise AssertionError("a CPU and a device tensor mixed in one operation")
    assert (x * torch.tensor(2.0)).cpu().tolist() == [[0, 2, 4], [6, 8, 10]]  # 0-d CPU: fine
    z = torch.complex(x, -x)
    _close(z.conj() @ z.t(), z.cpu().conj() @ z.cpu().t(), 0, "conj product")
    y = x.clone().requires_grad_(True)
    (y * y).sum().backward()
    assert y.grad.device.type == NAME and y.grad.cpu().tolist() == (2 * x).cpu().tolist()


def scenario_su3_hmc(dev: torch.device) -> None:
    """Two SU(3) HMC trajectories on the device against the CPU (eager kernels, the device
    Philox stream, the device's broadcast 3x3 products, exact sums); the CPU-only backends
    hand device tensors to eager."""
    import kernels.backends as kb
    from kernels.integrators import make_integrator
    from kernels.samplers.hmc import HMC
    from kernels.theories.su3 import SU3Gauge
    from parallel import single_rank_grid
    from parallel.rng import SiteRNG

    grid = single_rank_grid((4, 4, 2, 2))
    out = {}
    for where in (torch.device("cpu"), dev):
        th = SU3Gauge(grid, 5.7, device=where)
        hmc = HMC(th, make_integrator(th, "omelyan", 3, 1.0), SiteRNG(3))
        field = th.hot_start(SiteRNG(3), 0, 2)
        for c in (1, 2):
            field, rec = hmc.trajectory(field, c)
        assert field.device.type == where.type
        out[where.type] = (field, rec)
    (fc, rc), (fd, rd) = out["cpu"], out[NAME]
    _close(fd, fc, 1e-10, "links")
    _close(rd.dH, rc.dH, 1e-8, "dH")
    u = fc.to(dev)
    kb.set_backend("eager")
    ref = SU3Gauge(grid, 5.7).force(fc)
    for name in ("numba", "vnode"):
        try:
            kb.set_backend(name)
        except kb.BackendError:
            continue  # numba not installed: nothing to route
        _close(SU3Gauge(grid, 5.7, device=dev).force(u), ref, 1e-12, f"{name} force")
    kb.set_backend("eager")


def scenario_device_check(dev: torch.device) -> None:
    """benchmarks/device_check.py's correctness checks of the stout trivialized force and of
    the Schwinger pseudofermion force and CG solve, on the fake device."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import device_check

    device_check.stout_force(dev)
    device_check.schwinger_force(dev)
    assert not device_check.FAILED, device_check.FAILED


def scenario_bcast_no_write(dev: torch.device) -> None:
    """``parallel.comm.bcast_array`` never writes into the caller's tensor, also when a
    GPU-aware MPI receives into device memory (a receiving rank, emulated)."""
    from parallel import comm

    class Receiving:  # a non-root rank: Bcast fills the buffer with the root's data
        def Bcast(self, buf, root=0):  # noqa: N802 (the mpi4py name)
            buf[...] = 7

    for aware in (False, True):
        comm.set_gpu_aware(aware)
        x = torch.zeros(3, dtype=torch.float64, device=dev)
        got = comm.bcast_array(Receiving(), x)
        assert got.device.type == NAME and got.cpu().tolist() == [7.0] * 3
        assert x.cpu().tolist() == [0.0] * 3, f"gpu_aware={aware}: the caller's tensor changed"
    comm.set_gpu_aware(False)


def scenario_app_run(dev: torch.device) -> None:
    """``trivhmc run`` of a tiny SU(3) deck on the device: HDF5, ILDG and NERSC files,
    records, measurements (Wilson flow, loops, Polyakov), checkpoints; then a resume from the
    last checkpoint, whose records equal the uninterrupted run's."""
    import json
    import tempfile

    from app.deck import loads_deck
    from app.run import run

    deck = """\
theory:   {name: su3, beta: 5.7, action: wilson}
lattice:  {shape: [4, 4, 2, 2]}
sampler:  {name: hmc, steps: 3}
run:      {seed: 3, thermalization: 1, trajectories: TRAJ, chains: 2, save_every: 1,
           checkpoint_every: 2, start: hot}
output:   {directory: out, formats: [hdf5, ildg, nersc], progress: false}
measure:  {every: 1, polyakov: true, wilson_loops: {r_max: 1, t_max: 1},
           flow: {t_max: 0.06, eps: 0.02, charge_times: [0.04]}}
"""
    with tempfile.TemporaryDirectory() as tmp:
        lines = {}
        for name, steps in (("full", [3]), ("resumed", [2, 3])):
            for n in steps:
                over = [f"output.directory={tmp}/{name}"]
                d = loads_deck(deck.replace("TRAJ", str(n)), overrides=over, base_dir=tmp)
                object.__setattr__(d.parallel, "device", NAME)  # the deck accepts real ones
                res = run(d, progress=False)
                assert res.finished and res.trajectory == n + 1
            rec = (Path(tmp) / name / "records.jsonl").read_text().splitlines()
            lines[name] = [
                {k: v for k, v in json.loads(x).items() if k != "wall_time"} for x in rec
            ]
            assert len(list((Path(tmp) / name / "configs").glob("*.lime"))) == 6
        assert lines["full"] == lines["resumed"]


def scenario_l2hmc_checkpoint(dev: torch.device) -> None:
    """An L2HMC training checkpoint of chains on the device, on a split lattice: written and
    read back (chains, model, optimiser) without sending device tensors through pickled MPI
    messages."""
    import tempfile

    from mpi4py import MPI

    from app.l2hmc import load_checkpoint, save_checkpoint
    from kernels.l2hmc.layers import build_l2hmc_model
    from kernels.l2hmc.train import L2HMCTrainConfig, L2HMCTrainer
    from kernels.theories.u1 import U1Gauge
    from parallel import ProcessGrid
    from parallel.rng import SiteRNG

    grid = ProcessGrid((8, 8))
    theory = U1Gauge(grid, 2.0, device=dev)
    torch.manual_seed(1)
    model = build_l2hmc_model(grid, "u1", n_layers=1, hidden=[2]).to(dev)
    cfg = L2HMCTrainConfig(steps=2, batch=2)
    trainer = L2HMCTrainer(model, theory, SiteRNG(5), cfg)
    trainer.step()
    path = Path(MPI.COMM_WORLD.bcast(tempfile.mkdtemp() if grid.is_world_root else None)) / "c.pt"
    save_checkpoint(trainer, path, theory.first)
    again = L2HMCTrainer(model, theory, SiteRNG(5), cfg, start=theory.cold_start(2))
    load_checkpoint(again, path, theory.first)
    assert again.chains.device.type == NAME and again.step_count == 1
    _close(again.chains, trainer.chains, 0, "chains")


def scenario_mpi(dev: torch.device) -> None:
    """On a split lattice (any number of ranks), GPU-aware MPI off and on: the distributed
    SU(3) force and action (benchmarks/device_check.py's halo check) and one HMC trajectory
    on the device equal one rank on the CPU."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import device_check

    from kernels.integrators import make_integrator
    from kernels.samplers.hmc import HMC
    from kernels.theories.su3 import SU3Gauge
    from parallel import ProcessGrid, gather_to_root, set_gpu_aware, single_rank_grid
    from parallel.rng import SiteRNG

    device_check.halo(dev, (False, True))
    assert not device_check.FAILED, device_check.FAILED
    shape = (4, 4, 2, 2)
    grid, one = ProcessGrid(shape), single_rank_grid(shape)
    ref = SU3Gauge(one, 5.7)
    hmc = HMC(ref, make_integrator(ref, "omelyan", 3, 1.0), SiteRNG(3))
    u_ref, rec_ref = hmc.trajectory(ref.hot_start(SiteRNG(3), 0, 2), 1)
    for aware in (False, True):
        set_gpu_aware(aware)
        th = SU3Gauge(grid, 5.7, device=dev)
        hmc = HMC(th, make_integrator(th, "omelyan", 3, 1.0), SiteRNG(3))
        u, rec = hmc.trajectory(th.hot_start(SiteRNG(3), 0, 2), 1)
        full = gather_to_root(u.cpu(), grid, first=2)
        if full is not None:
            _close(full, u_ref, 1e-10, f"links, gpu_aware={aware}")
        _close(rec.dH, rec_ref.dH, 1e-8, f"dH, gpu_aware={aware}")
        assert rec.accepted.tolist() == rec_ref.accepted.tolist()
    set_gpu_aware(False)


SCENARIOS = {
    name.removeprefix("scenario_"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("scenario_")
}


def main(argv: list[str]) -> int:
    """Run the named scenarios on the fake device."""
    os.environ.setdefault("TRIVHMC_KERNELS", "eager")
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dev = setup()
    from mpi4py import MPI

    for name in argv:
        SCENARIOS[name](dev)
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(f"OK {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
