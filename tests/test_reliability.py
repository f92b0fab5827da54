"""Issue 38: bad data, bad geometries and careless reruns give clear errors, not wrong results.

Non-finite teacher labels are dropped at labelling and refused at training; a
diverging run stops with an error; geometries that crashed the neighbour
library (SIGFPE) raise ValueError; ``train`` never replaces a student silently;
datasets whose ``split_key`` has one value (periodic cells of one crystal) split
by structure id.
"""

import configparser
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from ase_distilled.cli import main as cli_main
from ase_distilled.data import Sampling, label, load, save, split_by_group
from ase_distilled.training import LabelledDataset, TrainConfig, train, train_from_file

ROOT = Path(__file__).resolve().parents[1]



def cu_cells(count, seed=0, amplitude=0.1):
    """Rattled 4-atom fcc Cu cells with EMT labels and ids ``cu<k>``, all molecule ``"Cu"``."""
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += rng.normal(scale=amplitude, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces, stress = (atoms.get_potential_energy(), atoms.get_forces(),
                                  atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        atoms.info.update(id=f"cu{k}", molecule="Cu")
        structures.append(atoms)
    return structures


def quick_config(**overrides):
    settings = dict(size="ultra-tiny", cutoff=4.0, epochs=1, batch_size=4, progress=False)
    return TrainConfig(**{**settings, **overrides})


# 1. Non-finite labels


def test_labelling_drops_non_finite_teacher_results(tmp_path):
    # Two atoms at the same place: Lennard-Jones returns NaN energy and forces.
    good = [Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5 + 0.1 * k, 0]])
            for k in range(3)]
    for k, atoms in enumerate(good):
        atoms.info["id"] = f"good{k}"
    twin = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 0]])
    twin.info["id"] = "twin"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = label([*good, twin], "lj", tmp_path / "lj.h5",
                       sampling=Sampling(conformers=1, rattle=()), progress=False)
    assert any("twin/c00" in str(w.message) and "non-finite" in str(w.message) for w in caught)
    assert result["nonfinite"] == 1 and result["failed"] == 0 and result["structures"] == 3
    stored = load(tmp_path / "lj.h5")
    assert sorted(a.info["id"] for a in stored) == ["good0/c00", "good1/c00", "good2/c00"]
    assert all(np.isfinite(a.get_potential_energy()) and np.isfinite(a.get_forces()).all()
               for a in stored)


def test_training_refuses_non_finite_data_naming_the_structures():
    structures = cu_cells(6)
    nan_energy, inf_force = structures[2], structures[4]
    nan_energy.calc.results["energy"] = float("nan")
    inf_force.calc.results["forces"][1, 0] = np.inf
    del inf_force.info["id"]  # named by its index instead
    with pytest.raises(ValueError, match=r"2 structure\(s\) hold NaN or infinite values: "
                                         r"'cu2' \(energy\); #4 \(forces\)"):
        LabelledDataset(structures, cutoff=4.0)
    with pytest.raises(ValueError, match="'cu2'"):
        train(structures[:4], structures[4:], quick_config())


def test_training_refuses_overlapping_atoms_with_finite_labels():
    structures = cu_cells(3)
    twin = structures[1]
    twin.positions[1] = twin.positions[0]  # labels stay finite: a teacher need not fail
    with pytest.raises(ValueError, match=r"'cu1'.* has atoms 0 and 1 0.000 Å apart"):
        LabelledDataset(structures, cutoff=4.0)


def test_diverging_training_stops_with_an_error(tmp_path):
    # lr 1e6 makes the loss NaN in the first epoch (measured: also at 1e12 and 1e30).
    structures = cu_cells(8)
    config = quick_config(lr=1e6, grad_clip=0.0, epochs=3, batch_size=2)
    with pytest.raises(ValueError, match="Training diverged in epoch 1: the loss became "
                                         "non-finite"):
        train(structures[:6], structures[6:], config, out=tmp_path / "nan.pt")
    assert not (tmp_path / "nan.pt").exists()  # no NaN student left behind


# 2. Geometries that killed the process in the neighbour library (SIGFPE)

_GEOMETRY_SCRIPT = textwrap.dedent("""
    import numpy as np
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase_distilled import DistilledCalculator, build_student
    from ase_distilled.training import LabelledDataset

    calc = DistilledCalculator(build_student("tiny", elements=["Cu"]), device="cpu",
                               dtype="float64")
    slab_zero_cell = Atoms("Cu2", positions=[[0, 0, 0], [1.5, 1.5, 1.5]],
                           pbc=(True, True, False))
    far_apart = Atoms("Cu2", positions=[[0, 0, 0], [1e6, 0, 0]])
    parallel = Atoms("Cu2", positions=[[0, 0, 0], [1.5, 1.5, 1.5]],
                     cell=[[3, 0, 0], [6, 0, 0], [0, 0, 0]], pbc=(True, True, False))
    for name, atoms in [("zero", slab_zero_cell), ("far", far_apart),
                        ("parallel", parallel)]:
        try:
            atoms.calc = calc
            atoms.get_potential_energy()
            print(name, "no error")
        except ValueError as error:
            print(name, "ValueError:", error)
    try:
        calc.predict_batch([Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]]), far_apart])
    except ValueError as error:
        print("batch ValueError:", error)
    far_apart.calc = SinglePointCalculator(far_apart, energy=0.0, forces=np.zeros((2, 3)))
    far_apart.info["id"] = "runaway"
    try:
        LabelledDataset([far_apart], cutoff=5.0)
    except ValueError as error:
        print("training ValueError:", error)
    # Legitimate: a slab with c = 0 (ASE's convention).
    slab = Atoms("Cu2", positions=[[0, 0, 0], [1.3, 1.3, 1.8]],
                 cell=[[2.6, 0, 0], [0, 2.6, 0], [0, 0, 0]], pbc=(True, True, False))
    slab.calc = calc
    print("slab", np.isfinite(slab.get_potential_energy()))
""")


def test_degenerate_geometries_raise_value_errors_instead_of_sigfpe():
    # In a child process: a SIGFPE there is a negative return code, not a dead pytest.
    done = subprocess.run([sys.executable, "-c", _GEOMETRY_SCRIPT], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["zero"].startswith("ValueError: The cell is degenerate along periodic "
                                    "direction(s) [0, 1]")
    assert "Every periodic direction needs a cell vector of its own" in lines["zero"]
    assert lines["parallel"].startswith("ValueError: The cell is degenerate along periodic "
                                        "direction(s) [0, 1]")
    assert lines["far"].startswith("ValueError: Atom 1 is at [1000000.0, 0.0, 0.0] Å")
    assert "beyond 100000 Å" in lines["far"] and "blew up" in lines["far"]
    assert lines["batch"].startswith("ValueError: Structure 1: atom 1 is at [1000000.0")
    assert lines["training"].startswith("ValueError: Structure 0 (id 'runaway'): Atom 1 is at")
    assert lines["slab"] == "True"


# 3. `train` twice into one --out


def test_cli_train_never_replaces_a_student_silently(tmp_path, capsys):
    data = tmp_path / "cu.h5"
    structures = cu_cells(10)
    for k, atoms in enumerate(structures):
        atoms.info["molecule"] = f"group-{k}"
    save(structures, data, teacher="emt")
    out = tmp_path / "m.pt"
    argv = ["train", "--data", str(data), "--out", str(out), "--size", "ultra-tiny",
            "--epochs", "1"]
    assert cli_main(argv) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert f"{out} and {tmp_path / 'm.state.pt'} exist" in error
    assert "--resume" in error and "--overwrite" in error
    assert out.read_bytes() == first
    assert cli_main([*argv, "--resume"]) == 0
    assert cli_main([*argv, "--overwrite"]) == 0
    with pytest.raises(SystemExit):  # argparse: not allowed with each other
        cli_main([*argv, "--resume", "--overwrite"])


# 4. Split groups for data that is not drug-like molecules


def test_one_crystal_splits_by_structure_id(tmp_path):
    # Ten strained Cu cells and a rattled copy of each: every structure has molecule "Cu".
    data = tmp_path / "cu.h5"
    sampling = Sampling(conformers=10, rattle=(0.05,), rattles=1)
    label([], "emt", data, bulk=["Cu"], sampling=sampling, progress=False)
    structures = load(data)
    assert len(structures) == 20 and {a.info["molecule"] for a in structures} == {"Cu"}
    with pytest.warns(UserWarning, match=r"split_key 'molecule' gives 1 group\(s\) for 20 "
                                         r"structures.*base-structure id"):
        parts = split_by_group(structures, (0.8, 0.1, 0.1), key="molecule")
    bases = [{"/".join(a.info["id"].split("/")[:2]) for a in part} for part in parts]
    assert all(parts) and not (bases[0] & bases[1] or bases[0] & bases[2]
                               or bases[1] & bases[2])
    with pytest.warns(UserWarning, match="base-structure id"):
        model, _ = train_from_file(data, tmp_path / "cu.pt", quick_config())
    split = model.metadata["data"]["split"]
    assert split["key"] == "molecule" and split["grouped_by"] == ["id:base"]
    assert min(model.metadata["data"]["sizes"].values()) > 0


def test_every_part_gets_a_group_when_there_are_enough():
    # Five groups of four: by the middles alone, validation (2 of 20) got none.
    structures = []
    for group in range(5):
        for k in range(4):
            atoms = Atoms("H")
            atoms.info.update(molecule=f"m{group}", id=f"m{group}/c{k}")
            structures.append(atoms)
    parts = split_by_group(structures, (0.8, 0.1, 0.1), key="molecule", seed=0)
    assert [len(part) for part in parts] == [12, 4, 4]


def test_too_few_groups_is_an_error_naming_the_key(tmp_path):
    # One cell and its rattled copies: a single group however they are grouped.
    data = tmp_path / "one.h5"
    label([], "emt", data, bulk=["Cu"], sampling=Sampling(conformers=1, rattle=(0.02, 0.05)),
          progress=False)
    with (pytest.warns(UserWarning, match="stay empty"),
          pytest.raises(ValueError, match=r"validation set is empty.*split_key 'molecule'.*"
                                          r"'molecule' gives 1, 'id:unit' gives 1, 'id:base' "
                                          r"gives 1 group\(s\).*set split_key")):
        train_from_file(data, tmp_path / "one.pt", quick_config())


# 5. Packaging


def test_python_requires_matches_the_language_level_of_the_code():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"][
        "target-version"]
    assert setup["options"]["python_requires"].strip() == f">={target[2]}.{target[3:]}"


# Weak cases: a negative temperature and the --traceback flag


def test_negative_temperature_is_a_clear_error_and_traceback_shows_it(tmp_path, capsys):
    structure = tmp_path / "co.xyz"
    Atoms("CO", positions=[[0, 0, 0], [1.13, 0, 0]]).write(structure)
    argv = ["md", str(structure), "--temperature", "-300", "--steps", "2", "--out",
            str(tmp_path / "md")]
    assert cli_main(argv) == 2
    assert "temperature_K must be positive kelvin" in capsys.readouterr().err
    with pytest.raises(ValueError, match="temperature_K must be positive"):
        cli_main(["--traceback", *argv])
