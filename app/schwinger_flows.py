"""Flows of the Schwinger model from a deck: which trainer and which sampler a flow gets.

The deck architectures of ``schwinger`` (kernels/theories/__init__.py) are of two kinds:

* gauge flows (``schwinger_ncp``, ``schwinger_stout``: the U(1) builders of kernels/flows/u1.py
  acting on the links). ``trivhmc train`` (``loss: reverse_kl``) fits them to the exact
  marginal ``exp(-S_G) det(D^+ D)`` with the dense determinant
  (:class:`kernels.flows.schwinger_marginal.SchwingerMarginal`: small lattices, one rank per
  lattice; a clear error otherwise). ``sampler: trivialized_hmc`` runs pseudofermion HMC on
  ``S_G(F(V)) + S_F(F(V)) - log det`` (any lattice, any grid); ``sampler: flow_metropolis``
  runs independence Metropolis on the exact marginal (small lattices).
* the joint flow ``schwinger_joint`` on ``(U, phi)``
  (:mod:`kernels.flows.schwinger_joint`): reverse KL on the joint density with one CG per
  sample (any lattice and grid), sampled by ``flow_metropolis`` (joint independence
  Metropolis); it is not a gauge flow, so ``trivialized_hmc`` refuses it.

* the NTHMC flow ``schwinger_nthmc`` (:func:`kernels.flows.nthmc_u1.u1_nthmc_flow` on the
  links): trained by ``force_norm`` on the full trivialized force, gauge + pseudofermion +
  log-det (:mod:`kernels.flows.force_norm_fermions`; ``force_norm.fermion_force: false`` for
  the gauge force only), sampled by ``trivialized_hmc``.

The other Schwinger flows train by ``reverse_kl`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.errors import InputError
from kernels.flows.schwinger_joint import JointFlow, JointFlowMetropolis, JointTrainer
from kernels.flows.schwinger_marginal import MarginalSizeError, SchwingerMarginal
from kernels.samplers.flow_metropolis import FlowMetropolis, FlowMetropolisSampler


def _marginal(theory, what: str) -> SchwingerMarginal:
    try:
        return SchwingerMarginal(theory)
    except MarginalSizeError as exc:
        raise InputError(
            f"{what}: a Schwinger gauge flow uses the exact-determinant marginal here: {exc}; "
            f"or use the joint flow (architecture schwinger_joint)"
        ) from None


def reverse_kl_trainer(flow, theory, config, rng):
    """The reverse-KL trainer of a Schwinger flow: :class:`JointTrainer` for the joint flow,
    :class:`kernels.flows.train.Trainer` on the exact marginal for a gauge flow."""
    if isinstance(flow, JointFlow):
        return JointTrainer(flow, theory, config, rng=rng)
    from kernels.flows.priors import prior_for
    from kernels.flows.train import Trainer

    return Trainer(flow, _marginal(theory, "train"), config, prior=prior_for(theory), rng=rng)


def check_loss(loss: str, architecture: str | None = None, target_beta=None) -> None:
    """Schwinger flows train by reverse KL; the NTHMC flow (``schwinger_nthmc``) by
    ``force_norm`` on the full force (clear error otherwise)."""
    if architecture == "schwinger_nthmc":
        if loss != "force_norm" or target_beta is not None:
            raise InputError(
                f"train.loss: schwinger_nthmc trains with force_norm (full gauge + "
                f"pseudofermion force, docs/nthmc.md), without target_beta; got {loss}"
                + ("" if target_beta is None else f" with target_beta {target_beta}")
            )
        return
    if loss != "reverse_kl":
        raise InputError(
            f"train.loss: Schwinger flows train with reverse_kl (exact marginal or joint "
            f"pseudofermion density), not {loss}; force_norm needs architecture schwinger_nthmc"
        )


def build_flow_sampler(deck, theory, flow, rng, trivialized_hmc: Callable[[], Any]) -> Any:
    """The deck's flow sampler for a Schwinger flow (module docstring); ``trivialized_hmc()``
    builds the deck's HMC on the transformed theory (app.setup), used for a gauge flow with
    ``sampler.name: trivialized_hmc``."""
    name = deck.sampler.name
    joint = isinstance(flow, JointFlow)
    if name == "trivialized_hmc":
        if joint:
            raise InputError(
                "sampler.flow: trivialized_hmc needs a gauge flow (schwinger_ncp, "
                "schwinger_stout); the joint (U, phi) flow runs with flow_metropolis"
            )
        return trivialized_hmc()
    if joint:
        return FlowMetropolisSampler(JointFlowMetropolis(theory, flow, rng))
    from kernels.flows.priors import prior_for

    marg = _marginal(theory, "sampler")
    return FlowMetropolisSampler(FlowMetropolis(marg, flow, prior_for(theory), rng))
