"""Any ASE calculator as a teacher: the per-structure labelling loop, EMT and LJ.

Also holds the package's convention for the electronic state of a structure:
``atoms.info["charge"]`` (total charge, default 0) and ``atoms.info["spin"]``
(spin multiplicity 2S + 1, default 1), read by the teachers that need them.
"""

from importlib import metadata

from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

# Fast analytic test teachers; EMT has (fake) parameters for H, C, N, O too.
ASE_TEACHERS = {"emt": EMT, "lj": LennardJones}


def charge_and_spin(atoms) -> tuple[int, int]:
    """Total charge and spin multiplicity of ``atoms`` from ``atoms.info`` (default 0, 1)."""
    return int(atoms.info.get("charge", 0)), int(atoms.info.get("spin", 1))


class ChargeSpinFromInfo:
    """Calculator mixin: a change of ``atoms.info`` charge or spin invalidates cached results.

    ASE compares positions, numbers, cell and pbc but not ``info`` when deciding
    whether cached results still apply.
    """

    def check_state(self, atoms, tol=1e-15):
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and charge_and_spin(atoms) != charge_and_spin(self.atoms):
            changes.append("initial_charges")
        return changes


def ase_teacher(name):
    """A fresh ASE calculator for one of :data:`ASE_TEACHERS`."""
    return ASE_TEACHERS[name]()


def describe(calc) -> dict:
    """``name``, ``package``, ``version``, ``weights`` of a calculator not built by us."""
    cls = type(calc)
    name = next((key for key, known in ASE_TEACHERS.items() if cls is known), cls.__name__)
    package = cls.__module__.split(".")[0]
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": name, "package": package, "version": version, "weights": ""}


def label_each(calc, atoms_list) -> list:
    """Energy, forces (and stress for 3-D periodic cells) of each structure, one call each."""
    results = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = calc
        result = {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces()}
        if atoms.pbc.all() and "stress" in calc.implemented_properties:
            result["stress"] = atoms.get_stress()
        results.append(result)
    return results
