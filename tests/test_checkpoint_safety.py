"""A checkpoint is data, not code: a crafted file is refused in one line by every load, before anything in it runs,
and the checkpoints written by earlier versions of the project still load."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli

from fashion_lenet.analysis.evaluate import evaluate
from fashion_lenet.sweep.errors import UserError
from fashion_lenet.training import checkpoints
from fashion_lenet.training.checkpoints import AtomicCheckpointIO, check_resumable, load_checkpoint, refused_code
from fashion_lenet.training.module import LeNetModule
from train import train

LEGACY = Path(__file__).parent / "data" / "legacy"  # README.md there says how each was made
CODE = "io.open"  # what the crafted file's unpickling would call
HOLDS_CODE = f"it holds code, not only data: {CODE}"


class CreateFile:
    """Unpickled, it calls open(path, "w"): the file it creates shows that code in a checkpoint ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """A file shaped like a Lightning checkpoint whose unpickling would create `marker`: (its path, marker)."""
    path, marker = tmp_path / "crafted" / "last.ckpt", tmp_path / "pwned"
    path.parent.mkdir()
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}, "loops": {}, "epoch": 0, "payload": CreateFile(marker)},
               path)  # fmt: skip
    return path, marker


def test_the_crafted_checkpoint_runs_its_code_when_unpickled_plainly(crafted, tmp_path):
    """The payload is live: the tests below, which find no marker, would otherwise prove nothing."""
    path, _ = crafted
    plainly = tmp_path / "plainly"
    torch.save({"payload": CreateFile(plainly)}, tmp_path / "plain.ckpt")
    torch.load(tmp_path / "plain.ckpt", weights_only=False)
    assert plainly.exists()
    with pytest.raises(pickle.UnpicklingError) as error:
        torch.load(path, weights_only=True)
    assert refused_code(error.value) == CODE


def test_the_project_load_refuses_code_without_running_it(crafted):
    path, marker = crafted
    with pytest.raises(pickle.UnpicklingError) as error:
        load_checkpoint(path)
    assert refused_code(error.value) == CODE
    assert not marker.exists()


def test_check_resumable_refuses_code_in_one_line_without_running_it(crafted):
    path, marker = crafted
    with pytest.raises(UserError) as error:
        check_resumable(path, "give another ckpt_path")
    assert str(error.value) == f"{path} cannot be resumed from ({HOLDS_CODE}): give another ckpt_path"
    assert not marker.exists()


def test_lightnings_loads_refuse_code_in_one_line_without_running_it(crafted):
    """What Lightning calls to resume (a fused group's last.ckpt is not checked before) and to test a checkpoint."""
    path, marker = crafted
    with pytest.raises(UserError) as error:
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)  # weights-only whatever Lightning asks
    assert str(error.value) == f"{path} cannot be loaded ({HOLDS_CODE}): give a checkpoint this project wrote"
    assert not marker.exists()


def test_load_from_checkpoint_weights_only_refuses_code_without_running_it(crafted):
    path, marker = crafted
    with pytest.raises(pickle.UnpicklingError) as error:
        LeNetModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)  # as evaluate calls it
    assert refused_code(error.value) == CODE
    assert not marker.exists()


def test_a_solo_run_refuses_to_resume_from_code_in_one_line(crafted, tmp_path):
    path, marker = crafted
    result = run_cli("train.py", *TINY, f"hydra.run.dir={tmp_path / 'run'}", f"ckpt_path={path}")
    assert result.returncode != 0
    # one line, between Hydra's "Error executing job with overrides" and its HYDRA_FULL_ERROR hint; no traceback
    assert f"\n{path} cannot be resumed from ({HOLDS_CODE}): give another ckpt_path\n" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 4
    assert not marker.exists()


def test_the_trainer_refuses_to_resume_from_code_even_unchecked(crafted, make_cfg, monkeypatch):
    """Lightning's own resume, as conf/trainer plugs AtomicCheckpointIO in: what a fused group's resume relies on."""
    path, marker = crafted
    monkeypatch.setattr(checkpoints, "check_resumable", lambda path, what_to_do: None)
    with pytest.raises(UserError, match=f"cannot be loaded \\({HOLDS_CODE}\\)"):
        train(make_cfg(*TINY, f"ckpt_path={path}"))
    assert not marker.exists()


def test_evaluate_refuses_code_in_one_line(crafted):
    path, marker = crafted
    result = run_cli("-m", "fashion_lenet.analysis.evaluate", str(path), "--accelerator", "cpu")
    assert result.returncode != 0
    assert result.stderr.strip() == (f"error: {path} is not a checkpoint of this project ({HOLDS_CODE}): "
                                     "give a .ckpt file from a run's checkpoints/ folder")  # fmt: skip
    assert not marker.exists()


@pytest.mark.parametrize("name", ["solo_last", "group_last", "member_best"])
def test_checkpoints_of_earlier_versions_load_as_data(name):
    path = LEGACY / f"{name}.ckpt"
    checkpoint = load_checkpoint(path)
    assert torch.is_tensor(next(iter(checkpoint["state_dict"].values())))
    assert AtomicCheckpointIO().load_checkpoint(path).keys() == checkpoint.keys()  # Lightning's loads
    if name != "member_best":  # a best checkpoint holds weights and hyperparameters, not training state
        check_resumable(path, "unused")


def test_a_member_best_checkpoint_of_an_earlier_version_evaluates(data_root, tmp_path):
    result = evaluate(LEGACY / "member_best.ckpt", data_root, tmp_path, accelerator="cpu")
    # 0.478 on the first 3,000 test images when it was written (README.md there); this is all 10,000
    assert result["test_acc"] == pytest.approx(0.478, abs=0.01)
    assert Path(result["figure"]).is_file()
