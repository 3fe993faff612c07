"""The Optuna search's summary (fashion_lenet.search) on a study built in memory: no training needed."""

import optuna
from optuna.distributions import CategoricalDistribution, LogUniformDistribution

from fashion_lenet.search import importances


def test_a_range_widened_while_the_study_ran_still_gets_its_importance():
    # 12 trials drew lr from [2e-3, 1.5e-2], 6 more from [1e-3, 1.5e-2] (the study resumed with a wider range)
    study = optuna.create_study(direction="maximize")
    for number in range(18):
        lr = 1e-3 * (1 + number % 9)
        low = 2e-3 if number < 12 else 1e-3
        study.add_trial(optuna.trial.create_trial(
            params={"optim.lr": max(lr, low), "data.max_shift": number % 3}, value=0.9 - abs(lr - 4e-3),
            distributions={"optim.lr": LogUniformDistribution(low, 1.5e-2),
                           "data.max_shift": CategoricalDistribution((0, 1, 2))}))  # fmt: skip
    weights = importances(study)
    assert set(weights) == {"optim.lr", "data.max_shift"}  # Optuna alone would leave optim.lr out
    assert weights["optim.lr"] > weights["data.max_shift"]  # the value depends on lr only
