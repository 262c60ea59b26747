"""L2HMC: a learned generalized-leapfrog sampler (Levy, Hoffman, Sohl-Dickstein,
arXiv:1711.09268; Foreman, Jin, Osborn, arXiv:2105.03418, 2112.01582).

* :mod:`.networks`: the small periodic CNNs (through :class:`parallel.LatticeConv`) and the
  per-theory features they read (U(1) link angles, phi^4 real fields);
* :mod:`.layers`: the generalized leapfrog layers, forward and exact inverse, with their
  exact per-layer log-Jacobians (:class:`L2HMCModel`);
* :mod:`.sampler`: :class:`L2HMC`, the exact MCMC sampler of the sampler protocol;
* :mod:`.train`: :class:`L2HMCTrainer`, training on acceptance-weighted topological jumps.
"""

from .layers import L2HMCModel, build_l2hmc_model
from .sampler import L2HMC
from .train import L2HMCTrainConfig, L2HMCTrainer

__all__ = ["L2HMC", "L2HMCModel", "L2HMCTrainConfig", "L2HMCTrainer", "build_l2hmc_model"]
