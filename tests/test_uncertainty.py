"""Latent-distance uncertainty: fit, calibration, calculator results and warnings, checkpoints."""

import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from conftest import make_student, rattled

from ase_distilled import DistilledCalculator, load_checkpoint, save_checkpoint
from ase_distilled.models.uncertainty import calibrate, fit, student_features


def _labelled(atoms_list):
    labelled = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.get_forces()
        labelled.append(atoms)
    return labelled


@pytest.fixture(scope="module")
def student_with_uncertainty():
    model = make_student("ultra-tiny", seed=3).double()
    training = [rattled(molecule("CH3CH2OH"), 0.05, seed) for seed in range(20)]
    model.uncertainty = fit(model, training)
    return model, training


def test_training_atoms_sit_near_one_and_far_ones_beyond(student_with_uncertainty):
    model, training = student_with_uncertainty
    data = student_features(model, training)
    inside = model.uncertainty.distance(torch.as_tensor(data["features"]),
                                        torch.as_tensor(data["species"]))
    # Mahalanobis distance / sqrt(F) of the fitted points: sqrt(trace(S^-1 S) / F) ~ 1 on
    # average (shrinkage makes it a little lower).
    assert 0.5 < float(torch.sqrt((inside ** 2).mean())) < 1.05
    far = [rattled(molecule("CH3CH2OH"), 0.4, seed=99)]  # badly distorted: new environments
    data_far = student_features(model, far)
    outside = model.uncertainty.distance(torch.as_tensor(data_far["features"]),
                                         torch.as_tensor(data_far["species"]))
    assert float(outside.mean()) > 2 * float(inside.mean())


def test_calibration_threshold_and_fit_match_an_independent_computation(
        student_with_uncertainty):
    model, _ = student_with_uncertainty
    structures = _labelled([rattled(molecule("CH3CH2OH"), amplitude, seed)
                            for amplitude in (0.02, 0.1, 0.2) for seed in range(6)])
    result = calibrate(model, model.uncertainty, structures)
    a, b = result["force_fit"]
    assert b >= 0 and a > 0
    calc = DistilledCalculator(model, dtype="float64", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = calc.predict_batch(structures)
    largest = [r["forces_uncertainty"].max() for r in results]
    assert result["threshold"] == pytest.approx(np.quantile(largest, 0.99), rel=1e-6)
    # Larger rattles give larger true and predicted errors: the ranking is positive.
    assert result["spearman_structures"] > 0.5


def test_calculator_results_shapes_and_energy_from_forces_uncertainty(student_with_uncertainty):
    model, _ = student_with_uncertainty
    calc = DistilledCalculator(model, dtype="float64", device="cpu")
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    atoms.get_forces()
    sigma = calc.results["forces_uncertainty"]
    assert sigma.shape == (len(atoms),) and (sigma > 0).all()
    expected = float(model.uncertainty.energy_factor) * np.sqrt((sigma ** 2).sum())
    assert calc.results["energy_uncertainty"] == pytest.approx(expected, rel=1e-10)
    assert calc.get_property("forces_uncertainty", atoms) is not None
    batch = calc.predict_batch([atoms, molecule("CH4")])
    np.testing.assert_allclose(batch[0]["forces_uncertainty"], sigma, rtol=1e-10)


def test_warns_once_per_system_past_the_threshold(student_with_uncertainty):
    model, _ = student_with_uncertainty
    calc = DistilledCalculator(model, dtype="float64", device="cpu")
    calc.uncertainty.threshold.fill_(0.0)  # everything is past it
    ethanol, methane = molecule("CH3CH2OH"), molecule("CH4")
    with pytest.warns(UserWarning, match="outside this student's training chemistry") as seen:
        calc.predict_batch([ethanol, methane])
        calc.predict_batch([rattled(ethanol, 0.01), methane])
    assert len([w for w in seen if "training chemistry" in str(w.message)]) == 2
    calc.uncertainty.threshold.fill_(float("inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calc.predict_batch([molecule("C6H6")])


def test_uncertainty_survives_a_checkpoint_and_a_fine_tune_starts_without_it(
        student_with_uncertainty, tmp_path):
    model, _ = student_with_uncertainty
    save_checkpoint(model, tmp_path / "s.pt")
    loaded = load_checkpoint(tmp_path / "s.pt")
    for name, value in model.uncertainty.state_dict().items():
        torch.testing.assert_close(getattr(loaded.uncertainty, name).double(), value.double())
    assert not any(k.startswith("uncertainty.") for k in loaded.weights_only_state())


def test_shipped_students_carry_a_calibrated_uncertainty():
    for name in ("small", "tiny", "ultra-tiny"):
        model = DistilledCalculator(name, device="cpu").model
        assert model.uncertainty is not None, name
        assert np.isfinite(float(model.uncertainty.threshold)), name
        assert float(model.uncertainty.force_fit[1]) > 0, name
