"""GFN2-xTB through tblite, with the charge and multiplicity taken from each structure."""

from importlib import metadata

from ase.calculators.calculator import all_changes

from ase_distilled.teachers.ase_calc import ChargeSpinFromInfo, charge_and_spin

try:
    from tblite.ase import TBLite
except ImportError as error:
    raise ImportError("The gfn2-xtb teacher needs tblite: pip install 'ase-distilled[xtb]'") \
        from error


class XTBTeacher(ChargeSpinFromInfo, TBLite):
    """tblite's ASE calculator reading ``atoms.info["charge"]`` and ``["spin"]`` (multiplicity).

    One instance is reused across structures: tblite caches its setup, and a
    new calculator costs about twice as much per structure.
    """

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        charge, multiplicity = charge_and_spin(atoms if atoms is not None else self.atoms)
        if (charge, multiplicity) != (self.parameters.charge, self.parameters.multiplicity):
            self.set(charge=charge, multiplicity=multiplicity)
            # set() dropped the cached system; rebuild it with the new electron count.
            system_changes = all_changes
        super().calculate(atoms, properties, system_changes)


def load_xtb(method="GFN2-xTB", **parameters) -> XTBTeacher:
    """A GFN2-xTB teacher; ``parameters`` go to ``tblite.ase.TBLite`` (accuracy, ...)."""
    calc = XTBTeacher(method=method, verbosity=0, charge=0, multiplicity=1, **parameters)
    calc.teacher_info = {"name": method.lower(), "package": "tblite",
                         "version": metadata.version("tblite"), "weights": ""}
    return calc
