"""Labelled data: structure sources, teacher labelling, the HDF5 dataset, splits.

h5py, RDKit and tqdm are imported only inside the functions that need them.
The torch ``Dataset`` and collate used for training live in ``ase_distilled.training``.
"""

from ase_distilled.data.dataset import (
    SCHEMA_VERSION,
    content_sha256,
    label,
    load,
    merge,
    read_metadata,
    save,
    split_by_group,
    split_grouping,
    summary,
)
from ase_distilled.data.structures import (
    Sampling,
    Unit,
    conformers_from_smiles,
    units_from_inputs,
)

__all__ = [
    "SCHEMA_VERSION",
    "Sampling",
    "Unit",
    "conformers_from_smiles",
    "content_sha256",
    "label",
    "load",
    "merge",
    "read_metadata",
    "save",
    "split_by_group",
    "split_grouping",
    "summary",
    "units_from_inputs",
]
