"""Learned invertible field transformations (normalizing flows) and their training.

* :mod:`.base`: the :class:`Flow` interface (global log-det), :class:`Composition`, masks;
* :mod:`.phi4`: checkerboard affine couplings, global rescaling, the 37-parameter preset;
* :mod:`.u1`: gauge-equivariant NCP/spline plaquette couplings and stout-like residual layers;
* :mod:`.u1_sweep`: the same couplings in a 2D U(1) sweep order, with single-plaquette init;
* :mod:`.priors`: base distributions drawn with the site-keyed RNG;
* :mod:`.train`: reverse-KL self-training (annealing, Adam + LR schedule, checkpoints).

See docs/flows.md.
"""

from .base import Composition, Flow, FlowError, IdentityFlow, build_flow
from .phi4 import AffineCoupling, GlobalRescale, phi4_affine_flow, phi4_minimal_flow
from .u1 import U1PlaquetteCoupling, U1StoutLayer, u1_ncp_flow, u1_stout_flow

__all__ = [
    "AffineCoupling",
    "Composition",
    "Flow",
    "FlowError",
    "GlobalRescale",
    "IdentityFlow",
    "U1PlaquetteCoupling",
    "U1StoutLayer",
    "build_flow",
    "phi4_affine_flow",
    "phi4_minimal_flow",
    "u1_ncp_flow",
    "u1_stout_flow",
]
