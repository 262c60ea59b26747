"""Configuration for tests that run under mpiexec: float64 default, quiet non-root ranks."""

import torch

torch.set_default_dtype(torch.float64)
