"""Deployable exports of a student: TorchScript, ONNX and INT8 ONNX.

Every export carries energy *and* forces (``-dE/dr``), so it can drive MD on its own:

TorchScript (``.pt``)
    One scripted module; forward takes ``positions (N,3), numbers (N,), cell
    (B,3,3) or (3,3), pbc (B,3) or (3,), edge_index (2,E), shifts (E,3)`` and
    optionally ``system (N,)``, and returns ``{"energy" (B,), "forces" (N,3)}``
    plus ``"stress" (B,3,3)`` (eV/Å^3, NaN for structures not periodic in 3-D)
    when any structure is periodic in all three directions. It loads with plain
    ``torch.jit.load``, without ase-distilled installed, and
    ``DistilledCalculator(path)`` accepts it.
ONNX (``.onnx``)
    One structure: inputs ``positions, numbers, cell (3,3), edge_index, shifts``;
    outputs ``energy (1,)`` and ``forces (N,3)``. ``torch.onnx`` cannot export
    ``torch.autograd.grad`` itself, so the force backward pass is first traced
    into plain tensor ops (``make_fx`` with symbolic shapes), which then export
    like any forward graph. Elements the model lacks give a NaN energy.
INT8 (``quantize="int8"``, ONNX only)
    onnxruntime's dynamic quantization of every matrix product, forward and
    backward. ``benchmarks/export_int8.py`` measures it: 1.04-1.3x faster than
    float32 ONNX on CPU for the small and tiny students, not for ultra-tiny (so
    it is refused there), at an accuracy cost to check with :func:`parity`.
    PyTorch's ``quantize_dynamic`` Linear layers have no gradient, so a
    TorchScript INT8 file could not give forces, and is refused.

The neighbour list is the caller's: a *full* list (both ``(i, j)`` and ``(j, i)``)
within the cutoff stored in the file, with edge vector ``r_j - r_i + shifts @ cell``,
as ``ase.neighborlist.primitive_neighbor_list("ijS", ...)`` or vesin return it.
"""

import copy
import json
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

FORMATS = ("torchscript", "onnx")
QUANTIZATIONS = (None, "int8")
# benchmarks/export_int8.py: INT8 ONNX ran 1.04-1.30x faster than float32 ONNX for the
# small (110 features) and tiny (46) students, but only 1.01-1.10x for ultra-tiny (23).
INT8_MIN_HIDDEN = 32
_EXTRA_FILE = "ase_distilled.json"
_ONNX_INPUTS = ("positions", "numbers", "cell", "edge_index", "shifts")


class _Frozen(nn.Module):
    """A float32, eval-mode, gradient-free copy of a student, and its force/stress pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).float().eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def energy_forces_stress(self, positions: Tensor, species: Tensor, system: Tensor,
                             cell: Tensor, edge_index: Tensor, shifts: Tensor, num_systems: int,
                             compute_stress: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        # TorchScript-compatible twin of PaiNN.predict (which takes an AtomsBatch).
        positions = positions.detach().requires_grad_(True)
        inputs = [positions]
        strained_positions, strained_cell = positions, cell
        if compute_stress:
            strain = torch.zeros_like(cell).requires_grad_(True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            strained_positions = positions + torch.einsum("ni,nij->nj", positions,
                                                          symmetric[system])
            strained_cell = cell + torch.bmm(cell, symmetric)
            inputs.append(strain)
        energy = self.model(strained_positions, species, system, strained_cell, shifts,
                            edge_index, num_systems)
        grads = torch.autograd.grad([energy.sum()], inputs)
        forces = grads[0]
        assert forces is not None
        stress: Tensor | None = None
        if compute_stress:
            virial = grads[1]
            assert virial is not None
            volume = torch.abs(torch.linalg.det(cell)).clamp_min(1e-12)
            stress = virial / volume.view(-1, 1, 1)
        return energy.detach(), -forces.detach(), stress


class TorchScriptPotential(_Frozen):
    """Energy, forces and stress of a student in one scriptable module.

    Parameters
    ----------
    model : PaiNN
        The student (copied, float32, eval mode).
    """

    cutoff: float
    elements: list[str]
    atomic_numbers: list[int]

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.cutoff = float(model.cutoff)
        self.elements = list(model.elements)
        self.atomic_numbers = list(model.atomic_numbers)

    def forward(self, positions: Tensor, numbers: Tensor, cell: Tensor, pbc: Tensor,
                edge_index: Tensor, shifts: Tensor,
                system: Tensor | None = None) -> dict[str, Tensor]:
        """See the module docstring for shapes and units."""
        if cell.dim() == 2:
            cell, pbc = cell.unsqueeze(0), pbc.unsqueeze(0)
        if system is None:
            system = torch.zeros_like(numbers)
        outside = (numbers < 0) | (numbers >= self.model.z_to_index.shape[0])
        species = self.model.z_to_index[numbers.clamp(0, self.model.z_to_index.shape[0] - 1)]
        unknown = outside | (species < 0)
        if bool(unknown.any()):
            missing: list[int] = torch.unique(numbers[unknown]).tolist()
            raise ValueError("Atomic number(s) " + str(missing)
                             + " not supported by this model, which covers elements "
                             + str(self.elements) + ". Use a model trained on them.")
        periodic = pbc.to(torch.bool).all(dim=1)
        energy, forces, stress = self.energy_forces_stress(
            positions, species, system, cell, edge_index, shifts, cell.shape[0],
            bool(periodic.any()))
        out = {"energy": energy, "forces": forces}
        if stress is not None:
            out["stress"] = torch.where(periodic.view(-1, 1, 1), stress, torch.nan)
        return out


class _OnnxPotential(_Frozen):
    """Energy and forces of one structure, written so ``make_fx`` can trace the backward."""

    def forward(self, positions, numbers, cell, edge_index, shifts):
        species = self.model.z_to_index[numbers]
        # No exceptions in an ONNX graph: an element the model lacks poisons the energy.
        poison = torch.where((species < 0).any(), torch.nan, 0.0)
        system = torch.zeros_like(numbers)
        with torch.enable_grad():
            energy, forces, _ = self.energy_forces_stress(
                positions, species.clamp_min(0), system, cell.unsqueeze(0),
                edge_index, shifts, 1, False)
        return energy + poison, forces


def _description(model: nn.Module, file_format: str, quantize: str | None) -> dict:
    return {"format": file_format, "quantize": quantize, "cutoff": float(model.cutoff),
            "elements": list(model.elements), "model_config": model.config.to_dict(),
            "metadata": getattr(model, "metadata", {}),
            "neighbor_list": "full list within cutoff; edge vector r_j - r_i + shifts @ cell"}


def export_torchscript(model: nn.Module, path) -> Path:
    """Write ``model`` as a TorchScript file (see the module docstring for its interface).

    Parameters
    ----------
    model : PaiNN
    path : str or Path

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(TorchScriptPotential(model))
    description = json.dumps(_description(model, "torchscript", None), default=str)
    torch.jit.save(scripted, str(path), _extra_files={_EXTRA_FILE: description})
    return path


def export_onnx(model: nn.Module, path, quantize: str | None = None) -> Path:
    """Write ``model``'s energy and forces as an ONNX graph (one structure a call).

    Parameters
    ----------
    model : PaiNN
    path : str or Path
    quantize : {None, "int8"}
        ``"int8"``: onnxruntime dynamic quantization (see :func:`quantize_onnx`).

    Returns
    -------
    Path of the written file.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        import onnxruntime  # noqa: F401  (checked here so the error names the extra)
        import onnxscript  # noqa: F401  (torch.onnx's exporter imports it)
    except ImportError as error:
        raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: "
                          "pip install 'ase-distilled[export]'") from error
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantize!r}; choose from {QUANTIZATIONS[1:]}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _OnnxPotential(model)
    example = _onnx_example(model)
    # Trace forward + autograd backward into plain aten ops, decomposed to ones ONNX knows.
    # The exporter's graph optimizer is off: it cost up to 3e-5 relative force accuracy.
    graph = make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True,
                    decomposition_table=torch.export.default_decompositions())(*example)
    atoms, edges = torch.export.Dim("atoms"), torch.export.Dim("edges")
    dynamic = ({0: atoms}, {0: atoms}, None, {1: edges}, {0: edges})
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        fp32_path = Path(tmp) / "fp32.onnx" if quantize else path
        torch.onnx.export(graph, example, str(fp32_path), dynamo=True, dynamic_shapes=dynamic,
                          input_names=list(_ONNX_INPUTS), output_names=["energy", "forces"],
                          verbose=False, optimize=False, external_data=False)
        _set_description(fp32_path, _description(model, "onnx", None))
        if quantize == "int8":
            quantize_onnx(fp32_path, path)
    return path


def _set_description(path: Path, description: dict):
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {_EXTRA_FILE: json.dumps(description, default=str)})
    onnx.save(proto, str(path))


def quantize_onnx(source, target) -> Path:
    """INT8 copy of a float32 ONNX export (onnxruntime dynamic quantization).

    Weights are stored as int8 and activations quantized on the fly, for every
    matrix product of the energy and the force (backward) pass alike.

    Parameters
    ----------
    source : str or Path
        A file written by :func:`export_onnx`.
    target : str or Path

    Returns
    -------
    Path of the written file.
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    properties = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    description = {**json.loads(properties[_EXTRA_FILE]), "quantize": "int8"}
    target = Path(target)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Without this pre-pass (folding the transposed weights of the backward pass into
        # constants) only 2 of ~50 matrix products qualify; its symbolic shape inference
        # trips on the graph's NaN constant and is not needed.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # one warning per unquantizable tensor
        try:
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(level)
    _set_description(target, description)
    return target


def _onnx_example(model):
    # 5 atoms and 20 edges: sizes equal to no fixed dimension (3), or make_fx's symbolic
    # tracing would merge them with it and freeze the graph to that size.
    numbers = torch.tensor(model.atomic_numbers[:1] * 5)
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.3],
                              [-0.9, 0.1, 0.8], [0.4, -1.0, -0.6]])
    edge_index = torch.tensor([[i, j] for i in range(5) for j in range(5) if i != j]).T
    return positions, numbers, torch.zeros(3, 3), edge_index, torch.zeros(20, 3)


def export(model, path, file_format: str = "torchscript", quantize: str | None = None) -> Path:
    """Export a student (name, checkpoint path or module) to ``path``.

    Parameters
    ----------
    model : str, Path or PaiNN
        A shipped name, a checkpoint file or a student module.
    path : str or Path
    file_format : {"torchscript", "onnx"}
    quantize : {None, "int8"}
        INT8 is offered for ONNX only, and only for students of at least
        :data:`INT8_MIN_HIDDEN` features (see the module docstring).

    Returns
    -------
    Path of the written file.
    """
    if file_format not in FORMATS:
        raise ValueError(f"Unknown export format {file_format!r}; choose from {FORMATS}.")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantize!r}; leave it out (float32).")
    if quantize == "int8" and file_format == "torchscript":
        raise ValueError(
            "INT8 is not offered for TorchScript: PyTorch's dynamically quantized Linear "
            "layers have no gradient, so the file could not compute forces. Use "
            "--format onnx --quantize int8.")
    from ase_distilled.registry import load_model

    model = load_model(model)
    if isinstance(model, TorchScriptStudent):
        raise ValueError("This is already an exported TorchScript file; export from the "
                         "checkpoint (or shipped name) it was made from.")
    if quantize == "int8" and model.config.hidden < INT8_MIN_HIDDEN:
        raise ValueError(
            f"INT8 is not offered for students narrower than {INT8_MIN_HIDDEN} features "
            f"(this one has {model.config.hidden}): it was no faster than float32 ONNX for "
            f"them (benchmarks/export_int8.py). Export float32 ONNX instead.")
    if file_format == "torchscript":
        return export_torchscript(model, path)
    return export_onnx(model, path, quantize)


def is_torchscript(path) -> bool:
    """Whether ``path`` is a TorchScript archive (rather than a checkpoint)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class TorchScriptStudent(nn.Module):
    """A loaded TorchScript export with the student interface DistilledCalculator uses.

    Parameters
    ----------
    path : str or Path
        A file written by :func:`export_torchscript`.
    """

    def __init__(self, path):
        super().__init__()
        extra = {_EXTRA_FILE: ""}
        self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        if not extra[_EXTRA_FILE]:
            raise ValueError(f"{str(path)!r} is a TorchScript file but not an ase-distilled "
                             f"export; write one with `ase-distilled export`.")
        description = json.loads(extra[_EXTRA_FILE])
        self.cutoff = float(description["cutoff"])
        self.elements = list(description["elements"])
        self.metadata = description.get("metadata", {})

    @property
    def atomic_numbers(self) -> list:
        return list(self.module.atomic_numbers)

    def predict(self, batch, edge_index, shifts, compute_stress: bool = False) -> dict:
        """Same contract as :meth:`PaiNN.predict` (no graph is kept for training)."""
        out = self.module(batch.positions, batch.numbers, batch.cell, batch.pbc, edge_index,
                          shifts, batch.system)
        if not compute_stress:
            out.pop("stress", None)
        return out


def onnx_predict(session, positions, numbers, cell, edge_index, shifts) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) of one structure from an onnxruntime session."""
    feed = dict(zip(_ONNX_INPUTS, (
        np.asarray(positions, dtype=np.float32), np.asarray(numbers, dtype=np.int64),
        np.asarray(cell, dtype=np.float32), np.asarray(edge_index, dtype=np.int64),
        np.asarray(shifts, dtype=np.float32))))
    energy, forces = session.run(["energy", "forces"], feed)
    return float(energy[0]), forces


def parity(model: nn.Module, path, atoms_list) -> dict:
    """Largest relative energy and force differences of an export against ``model``.

    Relative errors are ``max |x_export - x_eager| / max |x_eager|`` over each
    structure, maximised over ``atoms_list`` (float32, CPU).

    Returns
    -------
    dict with ``energy_rel``, ``forces_rel`` and, for TorchScript, ``stress_rel``.
    """
    from ase_distilled.batch import AtomsBatch
    from ase_distilled.neighbors import neighbor_list

    model = copy.deepcopy(model).float().eval()
    path = Path(path)
    if is_torchscript(path):
        exported = TorchScriptStudent(path)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {"energy_rel": 0.0, "forces_rel": 0.0}
    for atoms in atoms_list:
        batch = AtomsBatch.from_atoms(atoms)
        edge_index, shifts = neighbor_list(batch, model.cutoff)
        periodic = bool(batch.pbc.all())
        ref = model.predict(batch, edge_index, shifts, compute_stress=periodic)
        if is_torchscript(path):
            out = exported.predict(batch, edge_index, shifts, compute_stress=periodic)
        else:
            energy, forces = onnx_predict(session, batch.positions, batch.numbers, batch.cell[0],
                                          edge_index, shifts)
            out = {"energy": torch.tensor([energy]), "forces": torch.from_numpy(forces)}
        for key in [k for k in ("energy", "forces", "stress") if k in out and k in ref]:
            reference = ref[key].detach()
            scale = float(reference.abs().max().clamp_min(1e-12))
            error = float((out[key].detach() - reference).abs().max()) / scale
            worst[f"{key}_rel"] = max(worst.get(f"{key}_rel", 0.0), error)
    return worst


def reference_structures(elements) -> list:
    """Molecules and a periodic cell made of ``elements``, for parity checks."""
    from ase.build import bulk, molecule

    rng = np.random.default_rng(0)
    candidates = [molecule("CH3CH2OH"), molecule("C6H6"), molecule("CH3Cl"),
                  bulk("C", "diamond", a=3.57) * (2, 1, 1), bulk("Si", "diamond", a=5.43),
                  bulk("Cu", "fcc", a=3.6, cubic=True)]
    structures = []
    for atoms in candidates:
        if set(atoms.get_chemical_symbols()) <= set(elements):
            atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
            structures.append(atoms)
    return structures


def export_all(out_dir, names=None) -> dict:
    """Export every shipped student in every format, with parity numbers.

    Writes ``NAME.pt``, ``NAME.onnx`` and, where INT8 is faster (see
    :data:`INT8_MIN_HIDDEN`), ``NAME.int8.onnx`` per student, and
    ``parity.json`` (see :func:`parity`) into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
    names : list of str, optional
        Defaults to :func:`ase_distilled.available_models`.

    Returns
    -------
    dict ``{name: {file name: parity dict}}``, as written to ``parity.json``.
    """
    from ase_distilled.registry import available_models, load_model

    out_dir = Path(out_dir)
    names = available_models() if names is None else list(names)
    if not names:
        raise ValueError("No students are shipped in this installation, so there is nothing "
                         "to export; pass a checkpoint path to `ase-distilled export` instead.")
    report = {}
    for name in names:
        model = load_model(name)
        structures = reference_structures(model.elements)
        files = [export_torchscript(model, out_dir / f"{name}.pt"),
                 export_onnx(model, out_dir / f"{name}.onnx")]
        if model.config.hidden >= INT8_MIN_HIDDEN:
            files.append(quantize_onnx(files[1], out_dir / f"{name}.int8.onnx"))
        report[name] = {file.name: parity(model, file, structures) for file in files}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "parity.json").write_text(json.dumps(report, indent=2))
    return report
