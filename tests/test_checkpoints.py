"""Checkpoint files: a failed write keeps the previous one whole; a damaged or foreign file is refused in one line."""

import os
import stat

import pytest
import torch

from fashion_lenet.sweep.errors import UserError
from fashion_lenet.training.checkpoints import AtomicCheckpointIO, check_resumable, load_checkpoint

WHAT_TO_DO = "delete it and run again with resume=false"


class Unpicklable:
    """Fails partway through torch.save, after the tensors before it were written."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def _checkpoint() -> dict:
    """A small dict shaped like the checkpoints Lightning's Trainer writes."""
    return {"state_dict": {"weight": torch.arange(12.0).reshape(3, 4)}, "loops": {}, "epoch": 0}


def _temporary_files(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_a_checkpoint_written_atomically_loads_back(tmp_path):
    path = tmp_path / "new" / "folder" / "last.ckpt"  # a folder that does not exist yet
    AtomicCheckpointIO().save_checkpoint(_checkpoint(), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["weight"], _checkpoint()["state_dict"]["weight"])
    assert loaded["epoch"] == 0
    assert _temporary_files(path.parent) == []


def test_a_checkpoint_is_readable_as_a_plainly_created_file_is(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(), path)
    (tmp_path / "plain").touch()  # its mode is 0666 less the umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint(_checkpoint(), path)
    before = path.read_bytes()

    # A megabyte tensor first, so that bytes reach the file before pickling fails.
    failing = {"state_dict": {"big": torch.zeros(256, 1024)}, "loops": {}, "broken": Unpicklable()}
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        checkpoint_io.save_checkpoint(failing, path)

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 0
    assert _temporary_files(tmp_path) == []


def test_a_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"

    def no_rename(source, target):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk gone"):
        AtomicCheckpointIO().save_checkpoint(_checkpoint(), path)
    assert not path.exists()
    assert _temporary_files(tmp_path) == []


def test_storage_options_are_still_refused_as_lightning_does(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(_checkpoint(), tmp_path / "last.ckpt", storage_options={"a": 1})


def _refusal(path) -> str:
    with pytest.raises(UserError) as error:
        check_resumable(path, WHAT_TO_DO)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and WHAT_TO_DO in message
    return message


def test_a_checkpoint_cut_short_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "cut short or damaged" in _refusal(path)


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    path.touch()
    assert "cut short or damaged: EOFError" in _refusal(path)


def test_a_text_file_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_text("not a checkpoint\n")
    assert "cut short or damaged" in _refusal(path)


def test_a_missing_file_is_refused(tmp_path):
    assert "no such file" in _refusal(tmp_path / "last.ckpt")


@pytest.mark.parametrize("foreign", [torch.zeros(3), {"state_dict": {}}, {"loops": {}}], ids=repr)
def test_a_foreign_torch_file_is_refused(tmp_path, foreign):
    path = tmp_path / "last.ckpt"
    torch.save(foreign, path)
    assert "not a training checkpoint of this project" in _refusal(path)


def test_a_whole_checkpoint_is_accepted(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(), path)
    assert check_resumable(path, WHAT_TO_DO) is None
