import json

import pytest
from conftest import run_cli


def test_bench_smoke_run_reports_every_pipeline_and_the_ratio():
    """Timings are not asserted (benchmarks are not tests): only that `make bench` runs and reports."""
    result = run_cli("-m", "fashion_lenet.analysis.bench", "--epochs", "2", "--limit-batches", "5", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(report["seconds_per_epoch"]) == {"naive", "project", "plain_loop"}
    assert all(len(epochs) == 2 for epochs in report["all_epochs"].values())
    ratio = report["seconds_per_epoch"]["naive"] / report["seconds_per_epoch"]["project"]
    assert abs(report["speedup_project_vs_naive"] - ratio) < 1e-9


def test_fused_bench_reports_solo_and_fused_model_steps_per_second_per_variant():
    bench = ["-m", "fashion_lenet.analysis.bench", "--fused", "2", "--models", "bn_post", "--limit-batches", "3"]
    result = run_cli(*bench, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert list(report["models"]) == ["bn_post"] and report["device"].startswith("cpu")
    for rows in report["models"].values():
        assert list(rows["members"]) == ["2"]
        for row in rows["members"].values():
            ratio = row["fused_model_steps_per_s"] / row["solo_model_steps_per_s"]
            assert row["speedup"] == pytest.approx(ratio)


def test_fused_bench_refuses_an_unknown_model_variant_in_one_line():
    result = run_cli("-m", "fashion_lenet.analysis.bench", "--fused", "2", "--models", "baseline,lenet7")
    assert result.returncode == 2 and "lenet7: not a model variant (choose from baseline, bn_post" in result.stderr


def test_profile_lists_the_operators_of_a_training_step(data_root):
    import torch

    from fashion_lenet.analysis.bench import plain_loop_profile

    table = plain_loop_profile(5, torch.device("cpu"))
    assert table.startswith("5 steps of the plain loop on cpu")
    for operator in ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::max_pool2d_with_indices"):
        assert operator in table  # the costliest three on a CPU
    assert "Self CPU time total" in table


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--epochs", "0"], "argument --epochs: '0' is not an integer >= 1"),
        (["--batch-sizes", "64,abc"], "argument --batch-sizes: 'abc' is not an integer >= 1"),
        (["--variant", "optim.lr=-1"], "--variant 'optim.lr=-1': optim.lr=-1 is not allowed: use a number > 0"),
    ],
)
def test_bad_bench_argument_stops_before_any_timing_with_one_error_line(args, error):
    result = run_cli("-m", "fashion_lenet.analysis.bench", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"bench.py: error: {error}"
