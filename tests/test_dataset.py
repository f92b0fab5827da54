"""The HDF5 dataset: round trips, metadata, splits, resume, shards and merge (EMT teacher)."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from ase_distilled.data import (
    Sampling,
    content_sha256,
    dataset,
    label,
    load,
    merge,
    read_metadata,
    save,
    split_by_group,
    summary,
)

pytest.importorskip("h5py", reason="datasets need h5py (extra 'data')")

SAMPLING = Sampling(conformers=2, rattle=(0.05,), md_temperatures=(500,), md_frames=2,
                    md_interval=2)


def _labelled():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=0)
    water = molecule("H2O")
    water.info.update(id="w", molecule="water", charge=-1, spin=2, source="test")
    structures = []
    for atoms in (water, cu, molecule("CH4")):
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.get_forces()
        if atoms.pbc.all():
            atoms.get_stress()
        structures.append(atoms)
    return structures


def assert_same_structures(first, second):
    assert [a.info for a in first] == [b.info for b in second]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())


def test_save_load_round_trip(tmp_path):
    structures = _labelled()
    path = tmp_path / "d.h5"
    save(structures, path, teacher="emt")
    loaded = load(path)
    assert len(loaded) == 3
    for original, atoms in zip(structures, loaded):
        np.testing.assert_array_equal(atoms.positions, original.positions)
        np.testing.assert_array_equal(atoms.pbc, original.pbc)
        assert atoms.get_potential_energy() == original.get_potential_energy()
        np.testing.assert_array_equal(atoms.get_forces(), original.get_forces())
    np.testing.assert_array_equal(loaded[1].get_stress(), structures[1].get_stress())
    assert "stress" not in loaded[0].calc.results
    water = loaded[0].info
    assert water == {"id": "w", "source": "test", "molecule": "water", "scaffold": "water",
                     "charge": -1, "spin": 2}
    assert type(water["charge"]) is int
    assert loaded[2].info["id"] == "00000002" and loaded[2].info["molecule"] == "CH4"
    meta = read_metadata(path)
    assert meta["schema_version"] == 1 and meta["num_structures"] == 3
    assert meta["teacher"]["name"] == "emt" and meta["teacher"]["package"] == "ase"
    assert meta["created"].startswith("20")


def test_content_digest_ignores_file_attributes_and_sees_every_label(tmp_path):
    import h5py

    from ase_distilled.registry import file_sha256

    first, second = tmp_path / "first.h5", tmp_path / "second.h5"
    save(_labelled(), first, teacher="emt")
    save(_labelled(), second, teacher="emt")
    with h5py.File(second, "r+") as f:
        f.attrs["created"] = "2000-01-01T00:00:00+00:00"
    assert file_sha256(first) != file_sha256(second)
    assert content_sha256(first) == content_sha256(second)
    for name, edit in (("forces", lambda d: d.__setitem__((0, 0), d[0, 0] + 1e-12)),
                       ("id", lambda d: d.__setitem__(0, "x"))):
        changed = tmp_path / f"{name}.h5"
        changed.write_bytes(first.read_bytes())
        with h5py.File(changed, "r+") as f:
            edit(f[name])
        assert content_sha256(changed) != content_sha256(first), name


def test_unlabelled_and_unreadable_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="has no energy and forces"):
        save([molecule("H2O")], tmp_path / "x.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 dataset"):
        load(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.h5")


def test_split_by_group_never_shares_a_group():
    structures = []
    for k in range(40):
        for conformer in range(1 + k % 5):
            atoms = molecule("H2O")
            atoms.info.update(molecule=f"m{k}", id=f"m{k}/c{conformer}")
            structures.append(atoms)
    parts = split_by_group(structures, (0.8, 0.1, 0.1), seed=3)
    groups = [{a.info["molecule"] for a in part} for part in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(map(len, parts)) == len(structures)
    assert all(part for part in parts)
    assert len(parts[0]) / len(structures) == pytest.approx(0.8, abs=0.1)
    again = split_by_group(structures, (0.8, 0.1, 0.1), seed=3)
    assert [a.info["id"] for a in again[2]] == [a.info["id"] for a in parts[2]]
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_group(structures, (0.5, 0.1))


def test_label_resumes_without_loss_or_duplicates(tmp_path, monkeypatch):
    crystals = ["Cu", "Al", "Ni", "Ag"]
    reference = tmp_path / "ref.h5"
    label([], "emt", reference, bulk=crystals, sampling=SAMPLING, progress=False)
    expected = load(reference)
    assert len(expected) == 4 * 2 * (1 + 1 + 2)
    assert read_metadata(reference)["complete"]

    # A run that dies at its first consolidation, with one chunk in the journal.
    out = tmp_path / "out.h5"

    def die(self, complete=False):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(dataset._Journal, "consolidate", die)
        with pytest.raises(KeyboardInterrupt):
            label([], "emt", out, bulk=crystals, sampling=SAMPLING, chunk_size=1,
                  progress=False)
    assert not out.exists()
    assert len(list((tmp_path / "out.h5.journal").glob("chunk-*.h5"))) == 1
    (tmp_path / "out.h5.tmp-999").write_bytes(b"half-written")  # as if killed mid-rename
    result = label([], "emt", out, bulk=crystals, sampling=SAMPLING, chunk_size=1,
                   progress=False)
    assert result["skipped"] == 1 and result["units"] == 4
    assert_same_structures(load(out), expected)
    assert not (tmp_path / "out.h5.tmp-999").exists()
    assert not (tmp_path / "out.h5.journal").exists()
    with pytest.raises(ValueError, match="teacher_name"):
        label([], "lj", out, bulk=crystals, sampling=SAMPLING, progress=False)
    with pytest.raises(ValueError, match="sampling"):
        label([], "emt", out, bulk=crystals, sampling=Sampling(), progress=False)


def test_shards_merged_equal_a_single_run(tmp_path):
    crystals = ["Cu", "Al", "Ni"]
    single = tmp_path / "single.h5"
    label([], "emt", single, bulk=crystals, sampling=SAMPLING, progress=False)
    shards = [tmp_path / f"shard{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        label([], "emt", path, bulk=crystals, sampling=SAMPLING, shard=f"{i}/2",
              progress=False)
    assert read_metadata(shards[1])["shard"] == "1/2"
    merged = tmp_path / "merged.h5"
    assert merge(shards, merged)["complete"]
    assert_same_structures(load(merged), load(single))
    assert content_sha256(merged) == content_sha256(single)
    meta, reference = read_metadata(merged), read_metadata(single)
    for key in ("teacher", "sampling", "shard", "complete", "schema_version"):
        assert meta[key] == reference[key]
    assert not merge(shards[:1], tmp_path / "part.h5")["complete"]
    # A shard written before `stretch` existed (no such key) merges with a current one.
    import h5py

    with h5py.File(shards[0], "r+") as f:
        f.attrs["sampling"] = f.attrs["sampling"].replace(', "stretch": []', "")
        assert "stretch" not in f.attrs["sampling"]
    assert merge(shards, tmp_path / "mixed.h5")["complete"]
    assert read_metadata(tmp_path / "mixed.h5")["sampling"] == reference["sampling"]
    other = tmp_path / "other.h5"
    save(_labelled(), other, teacher="lj")
    with pytest.raises(ValueError, match="Cannot merge"):
        merge([merged, other], tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="shard must be"):
        label([], "emt", tmp_path / "x.h5", bulk=crystals, shard="2/2")


def test_summary_counts_and_statistics(tmp_path):
    path = tmp_path / "d.h5"
    structures = _labelled()
    save(structures, path, teacher="emt")
    info = summary(path)
    assert info["structures"] == 3 and info["atoms"] == sum(map(len, structures))
    assert info["elements"] == {"H": 6, "C": 1, "O": 1, "Cu": 4}
    energies = [a.get_potential_energy() for a in structures]
    assert info["energy"]["mean"] == pytest.approx(np.mean(energies))
    forces = np.concatenate([a.get_forces() for a in structures])
    assert info["force_norm"]["max"] == pytest.approx(np.linalg.norm(forces, axis=1).max())
    assert info["teacher"]["name"] == "emt" and info["complete"]
