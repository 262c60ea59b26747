"""Samplers: HMC (also on a flow-transformed theory), flow independence Metropolis, and the
sampler protocol they implement (:mod:`kernels.samplers.protocol`)."""
