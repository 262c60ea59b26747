"""Lattice theories: 2D phi^4, 2D U(1) gauge, 4D SU(3) gauge (and later Schwinger).

Each theory is one module with its :class:`kernels.theory.Theory` class, registered here with
its :class:`kernels.theories.descriptor.TheoryDescriptor` (dimensions, field kind, file
formats, prior, flow architectures, couplings). ``make_theory(name, grid, **couplings)``
builds one by name (the names used in input decks); ``descriptor(name)`` gives its facts.
Adding a theory: write the module, then one :func:`register_theory` call below.
"""

from __future__ import annotations

from importlib import import_module

from parallel import ProcessGrid

from ..theory import Theory
from .descriptor import Coupling, TheoryDescriptor

#: deck name -> descriptor, in registration order
REGISTRY: dict[str, TheoryDescriptor] = {}


def register_theory(desc: TheoryDescriptor) -> TheoryDescriptor:
    """Make a theory known to decks, the run set-up, priors and the model registry."""
    if desc.name in REGISTRY:
        raise ValueError(f"theory {desc.name!r} is registered twice")
    REGISTRY[desc.name] = desc
    return desc


def descriptor(name: str) -> TheoryDescriptor:
    """The descriptor of the theory ``name`` (a clear error for an unknown name)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown theory {name!r}; known: {sorted(REGISTRY)}") from None


def theory_class(name: str) -> type[Theory]:
    """The :class:`Theory` subclass of ``name``."""
    module, cls = descriptor(name).factory.split(":")
    return getattr(import_module(module), cls)


def make_theory(name: str, grid: ProcessGrid, **kwargs) -> Theory:
    """Instantiate the theory ``name`` on ``grid`` with its couplings as keyword arguments."""
    return theory_class(name)(grid, **kwargs)


def architectures() -> dict[str, tuple[str, str]]:
    """Every flow architecture: deck name -> (theory name, ``"module:builder"``)."""
    return {a: (t.name, b) for t in REGISTRY.values() for a, b in t.architectures.items()}


register_theory(
    TheoryDescriptor(
        name="phi4",
        factory="kernels.theories.phi4:Phi4",
        dims=2,
        summary="Real scalar phi^4 theory in 2D, hopping-parameter form "
        "(docs/conventions.md): ``S = sum_x [ -beta sum_mu phi_{x+mu} phi_x + phi_x^2 + "
        "lambda (phi_x^2 - 1)^2 ]``.",
        architectures={
            "phi4_minimal": "kernels.flows.phi4:phi4_minimal_flow",
            "phi4_affine": "kernels.flows.phi4:phi4_affine_flow",
        },
        couplings=(
            Coupling("beta", float, "Hopping coupling beta (required).", ge=0),
            Coupling(
                "lambda",
                float,
                "Quartic coupling lambda (required; key `lambda`).",
                ge=0,
                arg="lam",
            ),
        ),
    )
)
register_theory(
    TheoryDescriptor(
        name="u1",
        factory="kernels.theories.u1:U1Gauge",
        dims=2,
        summary="Compact U(1) gauge theory in 2D, Wilson action "
        "``S = beta sum_P (1 - cos theta_P)``.",
        prior="uniform_angle",
        architectures={
            "u1_ncp": "kernels.flows.u1:u1_ncp_flow",
            "u1_stout": "kernels.flows.u1:u1_stout_flow",
            "u1_sweep": "kernels.flows.u1_sweep:u1_sweep_flow",
            "u1_nthmc": "kernels.flows.nthmc_u1:u1_nthmc_flow",
        },
        couplings=(Coupling("beta", float, "Gauge coupling beta (required).", gt=0),),
    )
)
register_theory(
    TheoryDescriptor(
        name="su3",
        factory="kernels.theories.su3:SU3Gauge",
        dims=4,
        summary="SU(3) gauge theory in 4D with the Wilson or a rectangle-improved gauge action "
        "``S = beta sum [c0 sum_P (1 - ReTr U_P/3) + c1 sum_R (1 - ReTr U_R/3)]``, "
        "c0 = 1 - 8 c1; c1 = 0 (wilson), -1/12 (symanzik, tree level), -0.331 (iwasaki).",
        field_kind="complex",
        file_formats=("hdf5", "ildg", "nersc"),
        prior="none",
        architectures={
            "su3_stout": "kernels.flows.su3:su3_stout_flow",
            "su3_nthmc": "kernels.flows.nthmc_su3:su3_nthmc_flow",
        },
        couplings=(
            Coupling("beta", float, "Gauge coupling beta = 6/g0^2 (required).", gt=0),
            Coupling(
                "action",
                str,
                "Gauge action (required): wilson, symanzik (tree level) or iwasaki.",
                choices=("wilson", "symanzik", "iwasaki"),
            ),
        ),
    )
)
register_theory(
    TheoryDescriptor(
        name="schwinger",
        factory="kernels.theories.schwinger:Schwinger",
        dims=2,
        summary="2D Schwinger model: U(1) Wilson gauge action ``beta sum_P (1 - cos theta_P)`` "
        "+ Nf = 2 Wilson fermions (hopping parameter kappa, antiperiodic in t) with "
        "pseudofermions ``phi^+ (D^+ D)^{-1} phi`` (docs/conventions.md); action terms "
        "``gauge``, ``fermion`` and ``hasenbusch_<i>`` for sampler.levels.",
        prior="uniform_angle",
        # gauge flows (U(1) builders: exact marginal / trivialized HMC) and the joint (U, phi)
        # flow of Abbott et al.; which trainer and sampler each gets: app/schwinger_flows.py
        architectures={
            "schwinger_ncp": "kernels.flows.u1:u1_ncp_flow",
            "schwinger_stout": "kernels.flows.u1:u1_stout_flow",
            "schwinger_joint": "kernels.flows.schwinger_joint:schwinger_joint_flow",
            # NTHMC (issue 15): trained by force_norm on the full force (docs/nthmc.md)
            "schwinger_nthmc": "kernels.flows.nthmc_u1:u1_nthmc_flow",
        },
        couplings=(
            Coupling("beta", float, "Gauge coupling beta (required).", gt=0),
            Coupling(
                "kappa", float, "Hopping parameter kappa (required; free kappa_c = 1/4).", ge=0
            ),
            Coupling(
                "hasenbusch",
                list,
                "Hasenbusch mass-preconditioning kappas, increasing and below kappa "
                "(terms hasenbusch_0, hasenbusch_1, ...; default none).",
                default=[],
                gt=0,
            ),
            Coupling(
                "cg_tol",
                float,
                "CG relative residual |b - A x| / |b| (default 1e-10).",
                default=1e-10,
                gt=0,
            ),
            Coupling(
                "cg_max_iter",
                int,
                "CG iteration cap per solve (default 2000).",
                default=2000,
                ge=1,
            ),
            Coupling(
                "n_noise",
                int,
                "Noise vectors of the chiral condensate estimator (default 4).",
                default=4,
                ge=1,
            ),
        ),
    )
)
