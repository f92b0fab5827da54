"""Molecules from RDKit's bundled NCI set (``NCI/first_5K.smi``): chemistry beyond MOSES.

MOSES "clean leads" exclude many functional groups (nitro among them); the NCI
set, shipped with RDKit and public, holds them. It serves three disjoint lists,
all in file order, so that they come out the same on any machine:

- ``nitro_series``: the first 20 usable nitro-aromatics of 18-40 atoms, a
  medicinal-chemistry chemotype outside MOSES. ``distill_series.py``
  specialises a student on its even positions and judges it on its odd ones.
- ``calibration``: usable molecules on even lines, outside the series: the
  other chemistry the uncertainty is calibrated on.
- ``measure``: usable molecules on odd lines, outside the series: where the
  uncertainty's ranking of errors is measured.

Usable: one fragment, neutral, no radical, elements H C N O F S Cl Br, 10-60
atoms with hydrogens.
"""

from pathlib import Path

ELEMENTS = frozenset("H C N O F S Cl Br".split())
NITRO_AROMATIC = "c[N+](=O)[O-]"
SERIES_SIZE = 20


def source() -> Path:
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"


def _usable(mol) -> bool:
    from rdkit import Chem

    if mol is None or len(Chem.GetMolFrags(mol)) != 1 or Chem.GetFormalCharge(mol) != 0:
        return False
    with_h = Chem.AddHs(mol)
    return (all(a.GetSymbol() in ELEMENTS and not a.GetNumRadicalElectrons()
                for a in with_h.GetAtoms()) and 10 <= with_h.GetNumAtoms() <= 60)


def molecules(num_calibration: int = 150, num_measure: int = 150) -> dict:
    """``{"nitro_series", "calibration", "measure"}``: lists of canonical SMILES."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    nitro = Chem.MolFromSmarts(NITRO_AROMATIC)
    lists = {"nitro_series": [], "calibration": [], "measure": []}
    for line_number, line in enumerate(source().read_text().splitlines()):
        mol = Chem.MolFromSmiles(line.split()[0]) if line.strip() else None
        if not _usable(mol):
            continue
        smiles = Chem.MolToSmiles(mol)
        size = Chem.AddHs(mol).GetNumAtoms()
        if (len(lists["nitro_series"]) < SERIES_SIZE and mol.HasSubstructMatch(nitro)
                and 18 <= size <= 40):
            lists["nitro_series"].append(smiles)
        elif line_number % 2 == 0 and len(lists["calibration"]) < num_calibration:
            lists["calibration"].append(smiles)
        elif line_number % 2 == 1 and len(lists["measure"]) < num_measure:
            lists["measure"].append(smiles)
    return lists


def write(work: Path) -> dict:
    """Write ``nci_<list>.smi`` for every list into ``work``; return their sizes."""
    work.mkdir(parents=True, exist_ok=True)
    lists = molecules()
    for name, smiles in lists.items():
        (work / f"nci_{name}.smi").write_text("".join(f"{s}\n" for s in smiles))
    return {name: len(smiles) for name, smiles in lists.items()}
