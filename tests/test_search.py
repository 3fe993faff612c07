"""The Optuna search's summary (fashion_lenet.analysis.search) on a study built in memory: no training needed."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntUniformDistribution, LogUniformDistribution

from fashion_lenet.analysis.search import importances


def _resumed_study(late_shifts) -> optuna.Study:
    """18 trials: 12 drew lr from [2e-3, 1.5e-2] and shifts from (0, 1, 2), 6 more (after a resume) lr from
    [1e-3, 1.5e-2] and shifts from `late_shifts`. The value depends on lr only."""
    study = optuna.create_study(direction="maximize")
    for number in range(18):
        lr, early = 1e-3 * (1 + number % 9), number < 12
        shifts = CategoricalDistribution((0, 1, 2)) if early else late_shifts
        study.add_trial(optuna.trial.create_trial(
            params={"optim.lr": max(lr, 2e-3) if early else lr, "data.max_shift": number % 3},
            value=0.9 - abs(lr - 4e-3),
            distributions={"optim.lr": LogUniformDistribution(2e-3 if early else 1e-3, 1.5e-2),
                           "data.max_shift": shifts}))  # fmt: skip
    return study


def test_a_range_widened_while_the_study_ran_still_gets_its_importance():
    weights = importances(_resumed_study(late_shifts=CategoricalDistribution((0, 1, 2))))
    assert set(weights) == {"optim.lr", "data.max_shift"}  # Optuna alone would leave optim.lr out
    assert weights["optim.lr"] > weights["data.max_shift"]


@pytest.mark.parametrize("late_shifts", [CategoricalDistribution((0, 1, 2, 3)), IntUniformDistribution(0, 2)])
def test_a_parameter_whose_choices_or_kind_changed_is_left_out_of_the_importances(late_shifts):
    assert set(importances(_resumed_study(late_shifts))) == {"optim.lr"}
