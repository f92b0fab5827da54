"""AtomsBatch: many ``ase.Atoms`` as flat tensors with a structure index."""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AtomsBatch:
    """Structures concatenated atom-wise, ready for the model and neighbour lists.

    Attributes
    ----------
    positions : (N, 3) float tensor, Å
    numbers : (N,) long tensor of atomic numbers
    cell : (B, 3, 3) float tensor, cell vectors as rows
    pbc : (B, 3) bool tensor
    system : (N,) long tensor, index of the structure each atom belongs to
    num_atoms : (B,) long tensor
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    system: torch.Tensor
    num_atoms: torch.Tensor

    @property
    def num_systems(self) -> int:
        return int(self.cell.shape[0])

    @classmethod
    def from_atoms(cls, atoms_list, device=None, dtype=torch.float32) -> "AtomsBatch":
        """Build a batch from a list of ``ase.Atoms`` (or a single Atoms)."""
        if not isinstance(atoms_list, list | tuple):
            atoms_list = [atoms_list]
        counts = np.array([len(a) for a in atoms_list], dtype=np.int64)

        def tensor(array, tensor_dtype):
            return torch.as_tensor(np.asarray(array), dtype=tensor_dtype, device=device)

        return cls(
            positions=tensor(np.concatenate([a.positions for a in atoms_list]), dtype),
            numbers=tensor(np.concatenate([a.numbers for a in atoms_list]), torch.long),
            cell=tensor(np.stack([a.cell.array for a in atoms_list]), dtype),
            pbc=tensor(np.stack([a.pbc for a in atoms_list]), torch.bool),
            system=tensor(np.repeat(np.arange(len(atoms_list)), counts), torch.long),
            num_atoms=tensor(counts, torch.long),
        )

    def to(self, device=None, dtype=None) -> "AtomsBatch":
        """Copy to another device and/or floating dtype."""
        def move(t):
            floating = dtype if t.is_floating_point() and dtype is not None else t.dtype
            return t.to(device=device, dtype=floating)

        return AtomsBatch(*(move(getattr(self, name)) for name in self.__dataclass_fields__))
