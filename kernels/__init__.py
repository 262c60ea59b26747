"""Physics and learning: theories, action terms, integrators, samplers, flows, training."""
