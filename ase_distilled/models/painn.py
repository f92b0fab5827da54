"""The PaiNN student (Schütt, Unke, Gastegger 2021), conservative by construction.

The network maps a graph of atoms to one energy per structure; forces are
``-dE/dr`` and stress is ``(1/V) dE/d(strain)``, both by autograd, so the
student is energy-conserving in MD and its stress is consistent with its energy.

Energy of a structure::

    E = sum_i [ scale * y_i + shift + e_ref[Z_i] ]

where ``y_i`` is the per-atom network output and ``e_ref`` the per-element
reference energies (fitted by least squares in training; zero at random init).
"""

from dataclasses import asdict, dataclass, field

import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn

from ase_distilled.models.radial import BesselBasis, cosine_cutoff

# Widths chosen to meet the parameter budgets of DESIGN.md (427K / 77K / 21K
# for the 8 drug-like elements). Three interactions everywhere: depth buys more
# accuracy per parameter than width for small PaiNNs, and keeps a 15 Å
# receptive field at the default 5 Å cutoff.
STUDENT_SIZES = {
    "small": dict(hidden=110, num_interactions=3, num_rbf=20),
    "tiny": dict(hidden=46, num_interactions=3, num_rbf=16),
    "ultra-tiny": dict(hidden=23, num_interactions=3, num_rbf=12),
}
DRUGLIKE_ELEMENTS = ("H", "C", "N", "O", "F", "S", "Cl", "Br")


@dataclass
class PaiNNConfig:
    """Everything needed to rebuild a student (stored in its checkpoint).

    Parameters
    ----------
    elements : list of str
        Chemical symbols the model accepts, e.g. ``["H", "C", "N", "O"]``.
    hidden : int
        Feature width F of scalar and vector channels.
    num_interactions : int
        Number of message + update blocks.
    num_rbf : int
        Number of radial basis functions.
    cutoff : float
        Cutoff radius in Å.
    """

    elements: list = field(default_factory=lambda: list(DRUGLIKE_ELEMENTS))
    hidden: int = 46
    num_interactions: int = 3
    num_rbf: int = 16
    cutoff: float = 5.0

    def __post_init__(self):
        self.elements = list(self.elements)
        unknown = [s for s in self.elements if s not in atomic_numbers]
        if unknown:
            raise ValueError(f"Unknown chemical symbols {unknown}; use symbols such as 'H', 'C'.")
        if len(set(self.elements)) != len(self.elements):
            raise ValueError(f"Duplicate elements in {self.elements}.")

    def to_dict(self) -> dict:
        return asdict(self)


class _Dense(nn.Sequential):
    """Two-layer perceptron with SiLU: the building block of PaiNN."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int):
        super().__init__(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class _Message(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.phi = _Dense(hidden, hidden, 3 * hidden)

    def forward(self, s, v, radial, filter_weight, unit_vectors, src, dst, first: bool):
        # Each (E, F) filter is made from the (E, num_rbf + 1) radial input where it is
        # used, and atom features are split before being gathered onto edges: no (E, 3F)
        # tensor is split or concatenated (forward or backward), and edge-sized
        # intermediates stay small enough to remain in cache (benchmarks/README.md).
        phi_s, phi_vv, phi_vs = torch.split(self.phi(s), self.hidden, dim=-1)
        w_s, w_vv, w_vs = torch.split(filter_weight, self.hidden, dim=0)
        ds = phi_s.index_select(0, src) * nn.functional.linear(radial, w_s)
        dvs = phi_vs.index_select(0, src) * nn.functional.linear(radial, w_vs)
        dv = dvs.unsqueeze(1) * unit_vectors.unsqueeze(-1)
        if not first:  # before the first block v is zero: skipping its term is exact
            dvv = phi_vv.index_select(0, src) * nn.functional.linear(radial, w_vv)
            dv = dv + v.index_select(0, src) * dvv.unsqueeze(1)
        s = s.index_add(0, dst, ds)
        v = v.index_add(0, dst, dv)
        return s, v


class _Update(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.uv = nn.Linear(hidden, 2 * hidden, bias=False)
        self.mix = _Dense(2 * hidden, hidden, 3 * hidden)

    def forward(self, s, v):
        u, w = torch.split(self.uv(v), self.hidden, dim=-1)
        w_norm = torch.sqrt(torch.sum(w * w, dim=1) + 1e-8)
        a = self.mix(torch.cat([s, w_norm], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, self.hidden, dim=-1)
        s = s + a_sv * torch.sum(u * w, dim=1) + a_ss
        v = v + a_vv.unsqueeze(1) * u
        return s, v


class PaiNN(nn.Module):
    """PaiNN energy model with per-element references and a learned scale/shift.

    Parameters
    ----------
    config : PaiNNConfig
        Architecture and element set.
    """

    # TorchScript compiles properties; these read the Python-only config (see export.py).
    __jit_unused_properties__ = ["elements", "atomic_numbers"]

    def __init__(self, config: PaiNNConfig):
        super().__init__()
        self.config = config
        f, n_int = config.hidden, config.num_interactions
        self.cutoff = float(config.cutoff)
        self.hidden = f
        self.num_interactions = n_int
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        for i, symbol in enumerate(config.elements):
            z_to_index[atomic_numbers[symbol]] = i
        self.register_buffer("z_to_index", z_to_index)
        self.embedding = nn.Embedding(len(config.elements), f)
        self.rbf = BesselBasis(config.num_rbf, config.cutoff)
        self.filters = nn.Linear(config.num_rbf, n_int * 3 * f)
        self.messages = nn.ModuleList(_Message(f) for _ in range(n_int))
        self.updates = nn.ModuleList(_Update(f) for _ in range(n_int))
        self.readout = _Dense(f, max(f // 2, 1), 1)
        self.register_buffer("atom_ref", torch.zeros(len(config.elements)))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))
        # A LatentDistance (models/uncertainty.py) once fitted to the training data; its
        # buffers travel in the state dict under "uncertainty.".
        self.uncertainty = None

    @property
    def elements(self) -> list:
        return list(self.config.elements)

    @property
    def atomic_numbers(self) -> list:
        return [atomic_numbers[s] for s in self.config.elements]

    def weights_only_state(self) -> dict:
        """The state dict without the uncertainty: what a fine-tune starts from (the
        uncertainty describes the features of these weights, not of the tuned ones)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("uncertainty.")}

    def num_parameters(self) -> int:
        """Number of trainable parameters (buffers such as ``atom_ref`` excluded)."""
        return sum(p.numel() for p in self.parameters())

    def node_features(self, species, edge_index, edge_vectors):
        """(N, F) scalar features of each atom after the last interaction.

        Parameters
        ----------
        species : (N,) long tensor
            Index of each atom's element in ``config.elements``.
        edge_index : (2, E) long tensor
            Rows ``(i, j)``: atom ``i`` receives a message from neighbour ``j``.
        edge_vectors : (E, 3) tensor
            ``r_j - r_i`` including the periodic shift.
        """
        dst, src = edge_index[0], edge_index[1]
        distances = torch.linalg.vector_norm(edge_vectors, dim=-1)
        unit_vectors = edge_vectors / distances.unsqueeze(-1)
        envelope = cosine_cutoff(distances, self.cutoff).unsqueeze(-1)
        # The envelope multiplies the (E, num_rbf + 1) input of the filter layer,
        # (rbf * env) W^T + env b, not its (E, 3 F num_interactions) output.
        radial = torch.cat([self.rbf(distances) * envelope, envelope], dim=-1)
        weight = torch.cat([self.filters.weight, self.filters.bias.unsqueeze(-1)], dim=1)
        filter_weights = torch.split(weight, 3 * self.hidden, dim=0)

        s = self.embedding(species)
        v = s.new_zeros((s.shape[0], 3, self.hidden))
        for k, (message, update) in enumerate(zip(self.messages, self.updates)):
            s, v = message(s, v, radial, filter_weights[k], unit_vectors, src, dst, k == 0)
            s, v = update(s, v)
        return s

    def atomic_energies(self, species, features):
        """(N,) energy of each atom in eV from its :meth:`node_features`."""
        y = self.readout(features).squeeze(-1)
        return self.scale * y + self.shift + self.atom_ref[species]

    def energy_and_features(self, positions, species, system, cell, shifts, edge_index,
                            num_systems: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(energy (B,), node features (N, F))``; see :meth:`forward`."""
        i, j = edge_index[0], edge_index[1]
        shift_vectors = torch.einsum("ek,ekl->el", shifts, cell[system[i]])
        edge_vectors = positions[j] - positions[i] + shift_vectors
        features = self.node_features(species, edge_index, edge_vectors)
        e_atom = self.atomic_energies(species, features)
        return e_atom.new_zeros(num_systems).index_add(0, system, e_atom), features

    def forward(self, positions, species, system, cell, shifts, edge_index, num_systems: int):
        """Energy of each structure in a batch.

        Parameters
        ----------
        positions : (N, 3) tensor
        species : (N,) long tensor
            Element index of each atom (see :meth:`species_of`).
        system : (N,) long tensor
            Structure index of each atom.
        cell : (B, 3, 3) tensor
            Cell vectors as rows (zeros for non-periodic structures).
        shifts : (E, 3) tensor
            Integer periodic image shift of each edge (in units of cell vectors).
        edge_index : (2, E) long tensor
        num_systems : int

        Returns
        -------
        (B,) tensor of energies in eV.
        """
        return self.energy_and_features(positions, species, system, cell, shifts, edge_index,
                                        num_systems)[0]

    def species_of(self, numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers to element indices; raise for elements the model lacks."""
        if numbers.numel() and (numbers.max() > 118 or numbers.min() < 0):
            raise ValueError("Atomic numbers must lie in 0..118.")
        species = self.z_to_index[numbers]
        if numbers.numel() and bool((species < 0).any()):
            missing = sorted({int(z) for z in numbers[species < 0].tolist()})
            raise ValueError(
                f"Element(s) {[chemical_symbols[z] for z in missing]} not supported by this "
                f"model, which covers {self.elements}. Use a model trained on these elements."
            )
        return species

    def predict(self, batch, edge_index, shifts, compute_stress: bool = False) -> dict:
        """Energies, forces (and stress) for a batch, by autograd.

        Parameters
        ----------
        batch : AtomsBatch
        edge_index, shifts : tensors from :func:`ase_distilled.neighbors.neighbor_list`
        compute_stress : bool
            Also return the stress (B, 3, 3) in eV/Å^3, ``(1/V) dE/d(strain)``.
            Only meaningful for 3-D periodic structures.

        Returns
        -------
        dict with ``energy`` (B,), ``forces`` (N, 3), ``features`` (N, F) (the
        :meth:`node_features`, detached) and optionally ``stress`` (B, 3, 3).
        """
        species = self.species_of(batch.numbers)
        positions, cell = batch.positions, batch.cell
        with torch.enable_grad():
            positions = positions.detach().requires_grad_(True)
            inputs = [positions]
            if compute_stress:
                strain = torch.zeros_like(cell, requires_grad=True)
                symmetric = 0.5 * (strain + strain.transpose(1, 2))
                positions = positions + torch.einsum(
                    "ni,nij->nj", positions, symmetric[batch.system]
                )
                cell = cell + torch.bmm(cell, symmetric)
                inputs.append(strain)
            energy, features = self.energy_and_features(
                positions, species, batch.system, cell, shifts, edge_index, batch.num_systems)
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=self.training)
        out = {"energy": energy, "forces": -grads[0], "features": features.detach()}
        if compute_stress:
            volume = torch.abs(torch.linalg.det(batch.cell))
            out["stress"] = grads[1] / volume.clamp_min(1e-12).view(-1, 1, 1)
        return out


def build_student(size: str, elements=DRUGLIKE_ELEMENTS, cutoff: float = 5.0,
                  **overrides) -> PaiNN:
    """A randomly initialised student of a named size.

    Parameters
    ----------
    size : {"small", "tiny", "ultra-tiny"}
        ~427K, ~77K and ~21K parameters for the 8 drug-like elements.
    elements : sequence of str
        Chemical symbols the student will accept.
    cutoff : float
        Cutoff radius in Å.
    **overrides
        Any :class:`PaiNNConfig` field (``hidden``, ``num_interactions``, ``num_rbf``).

    Examples
    --------
    >>> model = build_student("tiny", elements=["H", "C", "N", "O"])
    """
    if size not in STUDENT_SIZES:
        raise ValueError(f"Unknown student size {size!r}; choose one of {list(STUDENT_SIZES)}.")
    settings = {**STUDENT_SIZES[size], "cutoff": cutoff, **overrides}
    return PaiNN(PaiNNConfig(elements=list(elements), **settings))
