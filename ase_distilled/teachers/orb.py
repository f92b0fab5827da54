"""Orb teachers (orb-models 0.5.x): every pretrained name, local weights or random weights.

orb-models 0.6 changed its loaders to return ``(model, adapter)`` and needs
Python >= 3.12; it could not be installed or tested here, so this adapter
supports 0.5.x only and says so when it meets a newer version.

Orb's loaders set torch's global default dtype and float32 matmul precision.
Here they run inside :func:`_torch_precision`, which restores both afterwards,
and each Orb call runs under the precision Orb chose, restored on return, so
labelling never changes the caller's torch state.
"""

import contextlib
import inspect
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from unittest import mock

import torch
from ase.calculators.calculator import all_changes

from ase_distilled.registry import file_sha256
from ase_distilled.teachers.ase_calc import ChargeSpinFromInfo, charge_and_spin

try:
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs
    from orb_models.forcefield.base import batch_graphs
    from orb_models.forcefield.calculator import ORBCalculator
except ImportError as error:
    raise ImportError("Orb teachers need orb-models: pip install 'ase-distilled[orb]'") from error

ORB_VERSION = metadata.version("orb-models")
if tuple(int(part) for part in ORB_VERSION.split(".")[:2]) >= (0, 6):
    raise ImportError(f"ase-distilled supports orb-models 0.5.x, found {ORB_VERSION} (0.6 "
                      "changed the loader API): pip install 'orb-models>=0.5,<0.6'")

ORB_NAMES = tuple(pretrained.ORB_PRETRAINED_MODELS)


@contextlib.contextmanager
def _torch_precision(dtype=None, matmul_precision=None):
    """Run a block under a default dtype / matmul precision, restoring the caller's after."""
    saved = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(matmul_precision)
        yield
    finally:
        torch.set_default_dtype(saved[0])
        torch.set_float32_matmul_precision(saved[1])


def _with_charge_spin(atoms):
    """A copy carrying integer charge and spin, the form Orb's featurizer accepts."""
    atoms = atoms.copy()
    atoms.info["charge"], atoms.info["spin"] = charge_and_spin(atoms)
    return atoms


class OrbTeacher(ChargeSpinFromInfo, ORBCalculator):
    """Orb's ASE calculator with charge/spin defaults and batched labelling.

    Charge and spin come from ``atoms.info["charge"]`` and ``["spin"]`` (spin
    multiplicity), defaulting to 0 and 1; only the omol variants use them.
    """

    def __init__(self, model, *, device, dtype, matmul_precision, teacher_info):
        super().__init__(model, device=device)
        self.dtype, self.matmul_precision = dtype, matmul_precision
        self.teacher_info = teacher_info

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        atoms = _with_charge_spin(atoms if atoms is not None else self.atoms)
        with _torch_precision(self.dtype, self.matmul_precision):
            super().calculate(atoms, properties, system_changes)

    def predict_batch(self, atoms_list) -> list:
        """Label several structures in one forward pass.

        Returns
        -------
        list of dict
            ``energy``, ``forces`` and, for 3-D periodic cells when the model
            predicts it, ``stress`` (Voigt, eV/Å^3), as per-structure calls give.
        """
        if not atoms_list:
            return []
        with _torch_precision(self.dtype, self.matmul_precision):
            graphs = [ase_atoms_to_atom_graphs(
                _with_charge_spin(atoms), self.system_config,
                max_num_neighbors=self.max_num_neighbors, edge_method=self.edge_method,
                half_supercell=self.half_supercell, device=self.device)
                for atoms in atoms_list]
            batch = batch_graphs(graphs).to(self.device)
            out = self.model.predict(batch, split=True)
        labels = []
        for k, atoms in enumerate(atoms_list):
            # Orb's own mapping from model outputs to ASE results (conservative or direct).
            self._update_results({name: parts[k] for name, parts in out.items()})
            label = {"energy": float(self.results["energy"]), "forces": self.results["forces"]}
            if atoms.pbc.all() and "stress" in self.results:
                label["stress"] = self.results["stress"]
            labels.append(label)
        self.reset()  # the results above belong to no single attached Atoms
        return labels


@contextlib.contextmanager
def _random_weights(seed):
    """Patch Orb's weight loading to use the architecture's own seeded initial weights.

    Every registry loader builds its architecture and then calls
    ``pretrained.load_model(model, weights_path, ...)``; handing that call a file
    with the freshly initialised state dict keeps all of Orb's own set-up
    (precision, device, compile, freezing) while needing no network.
    """
    original = pretrained.load_model
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        def load_own_weights(model, weights_path, *args, **kwargs):
            path = Path(scratch) / "random.ckpt"
            torch.save(model.state_dict(), path)
            return original(model, str(path), *args, **kwargs)

        with mock.patch.object(pretrained, "load_model", load_own_weights):
            yield


def load_orb(name, weights=None, device=None, *, precision="float32-high", compile=None,
             seed=0) -> OrbTeacher:
    """Build an Orb teacher.

    Parameters
    ----------
    name : str
        A name in orb-models' pretrained registry (:data:`ORB_NAMES`).
    weights : None, "random" or path
        ``None`` downloads Orb's published weights (needs network); a path loads a
        local checkpoint; ``"random"`` uses the same architecture with weights
        initialised from ``seed`` (tests and speed benchmarks).
    device : str, optional
        Defaults to CUDA when available.
    precision : {"float32-high", "float32-highest", "float64"}
        Orb's precision setting, applied only while Orb runs.
    compile : bool, optional
        ``torch.compile`` the model; defaults to True on GPU only (on CPU it costs
        ~86 s on the first call and gains nothing).
    """
    loader = pretrained.ORB_PRETRAINED_MODELS[name]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if compile is None:
        compile = device.type == "cuda"
    options = {"device": device, "precision": precision, "compile": compile}
    if weights == "random":
        described, context = f"random(seed={seed})", _random_weights(seed)
    elif weights is None:
        described = inspect.signature(loader).parameters["weights_path"].default
        context = contextlib.nullcontext()
    else:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"Orb weights file {str(weights)!r} does not exist; pass "
                                    "weights=PATH to a checkpoint, or weights='random'.")
        described = f"{Path(weights).name} sha256:{file_sha256(weights)[:16]}"
        options["weights_path"] = str(weights)
        context = contextlib.nullcontext()
    with _torch_precision(), context, warnings.catch_warnings():
        # Orb announces that it sets torch's global dtype; _torch_precision undoes it.
        warnings.filterwarnings("ignore", message="Setting global torch default dtype")
        try:
            model = loader(**options)
        except OSError as error:
            if weights is not None:
                raise
            raise FileNotFoundError(
                f"Could not download the weights of {name} ({error.__class__.__name__}: the "
                "machine has no network access, or the server is unreachable). Download the "
                "checkpoint elsewhere and pass weights=PATH (CLI: --weights PATH); "
                "weights='random' builds the architecture without weights.") from error
        dtype, matmul = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    info = {"name": name, "package": "orb-models", "version": ORB_VERSION, "weights": described}
    return OrbTeacher(model, device=device, dtype=dtype, matmul_precision=matmul,
                      teacher_info=info)
