"""Radial basis and smooth cutoff for the PaiNN student.

Both vanish smoothly at the cutoff so that the energy, and its first derivative
(the forces), are continuous as an atom crosses the cutoff sphere.
"""

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    """Sine (spherical Bessel, order 0) radial basis ``sin(n pi r / rc) / r``.

    Parameters
    ----------
    num_basis : int
        Number of basis functions.
    cutoff : float
        Cutoff radius in Å.
    """

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("frequencies", torch.arange(1, num_basis + 1) * math.pi / cutoff)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        d = distances.unsqueeze(-1)
        return torch.sin(self.frequencies.to(d.dtype) * d) / d


def cosine_cutoff(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``0.5 (cos(pi r / rc) + 1)`` inside the cutoff, exactly zero beyond it.

    Value and slope are zero at ``rc``: pairs found with a Verlet skin beyond the
    cutoff contribute nothing, so they need not be filtered out.
    """
    inside = distances < cutoff
    return torch.where(inside, 0.5 * (torch.cos(distances * (math.pi / cutoff)) + 1.0), 0.0)
