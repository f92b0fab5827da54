"""Small, fast PaiNN students distilled from large force fields, as ASE calculators.

>>> from ase_distilled import DistilledCalculator
>>> atoms.calc = DistilledCalculator("tiny")            # doctest: +SKIP

Only numpy, torch and ase are imported here; optional packages (orb-models,
tblite, h5py, rdkit, matplotlib) are imported inside the functions that need them.
"""

from ase_distilled.calculator import DistilledCalculator
from ase_distilled.checkpoint import load_checkpoint, save_checkpoint
from ase_distilled.models.painn import PaiNN, PaiNNConfig, build_student
from ase_distilled.registry import available_models, load_model

__version__ = "0.1.0"

__all__ = [
    "DistilledCalculator",
    "PaiNN",
    "PaiNNConfig",
    "available_models",
    "build_student",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "__version__",
]
