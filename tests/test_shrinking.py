"""A fused group drops the members that stop (diverged, pruned) at that epoch's end: its network, optimizer,
scheduler, loss and training batches keep only the live members, each with its state as it was, and a group that
shrank resumes from its checkpoint bit for bit."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fashion_lenet.training.callbacks import EpochHistory
from fashion_lenet.training.cluster import environment
from fashion_lenet.training.data import FashionMNISTDataModule
from fashion_lenet.training.module import LeNetModule

STOPS = 1  # the member that stops after epoch 0
BATCHES = 6
# Three members that differ in everything a member owns: seed, dropout p, lr, label smoothing, augmentation.
NETS = [{"_target_": "fashion_lenet.training.models.LeNet5", "norm": "pre", "dropout_layers": 1, "dropout_p": p}
        for p in (0.2, 0.3, 0.4)]  # fmt: skip
OPTIMIZERS = [{"_target_": "torch.optim.Adam", "_partial_": True, "lr": lr} for lr in (1e-3, 2e-3, 3e-3)]
COSINE = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True, "T_max": 4}


class StopMember(pl.Callback):
    """Stops STOPS after epoch 0, as a pruner would (after EpochHistory: listed after it)."""

    def __init__(self, history: EpochHistory):
        self.history = history

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self.history.stop(STOPS, pl_module, pruned=True)


class Snapshots(pl.Callback):
    """Per epoch and live member: its weights and buffers, optimizer state and lr, dropout and shuffle streams, at
    the epoch's end (before the module's hook, which shrinks) and at the next epoch's first batch (after it)."""

    def __init__(self):
        self.end: dict[int, dict] = {}
        self.start: dict[int, dict] = {}

    @staticmethod
    def _members(trainer, module: LeNetModule) -> dict:
        optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())  # Adam updates its tensors in place
        shuffles = trainer.datamodule.shuffle_generators
        taken = {}
        for slot, member in enumerate(module.live):
            group = optimizer["param_groups"][slot]
            taken[member] = {
                "net": module.net.member_state_dict(slot),
                "optimizer": [optimizer["state"].get(i) for i in group["params"]],
                "lr": group["lr"],
                "dropout": module.dropout_generators[member].get_state(),
                "shuffle": shuffles[member].get_state(),
            }
        return taken

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end[trainer.current_epoch] = self._members(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.start[trainer.current_epoch] = self._members(trainer, pl_module) | {
                "slots": pl_module.net.members,
                "labels": dict(zip(pl_module.live, batch[1], strict=True)),
            }


def _fit(data_root, tmp_path, epochs: int, stop: bool, ckpt_path=None) -> tuple[LeNetModule, list, Snapshots]:
    history, snapshots = EpochHistory(), Snapshots()
    trainer = pl.Trainer(
        max_epochs=epochs, limit_train_batches=BATCHES, limit_val_batches=1, num_sanity_val_steps=0,
        accelerator="cpu", plugins=[environment()], deterministic=True, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history, *([StopMember(history)] if stop else []), snapshots,
                   ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)],
    )  # fmt: skip
    module = LeNetModule(NETS, OPTIMIZERS, COSINE, cuda_graph=False, label_smoothing=[0.0, 0.1, 0.05], seeds=[0, 1, 2])
    data = FashionMNISTDataModule(str(data_root), batch_size=32, eval_batch_size=500, shuffle_seed=[0, 1, 2],
                                  augment=[True, False, True], max_shift=[1, 2, 2])  # fmt: skip
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, history.histories, snapshots


def _numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("_time_s")} for row in rows]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.fixture(scope="module")
def shrinking(data_root, tmp_path_factory):
    """Three epochs in which STOPS stops after epoch 0, and the same group when nobody stops."""
    torch.set_num_threads(1)  # the resumed run below adds in this order too
    return (_fit(data_root, tmp_path_factory.mktemp("shrinks"), 3, stop=True),
            _fit(data_root, tmp_path_factory.mktemp("whole"), 3, stop=False))  # fmt: skip


def test_a_stopped_member_leaves_the_group_and_the_others_keep_their_state_exactly(shrinking):
    (module, histories, snapshots), (_, whole_histories, whole) = shrinking
    survivors = [0, 2]
    assert module.stopped == {STOPS} and len(histories[STOPS]) == 1
    assert [snapshots.start[epoch]["slots"] for epoch in (0, 1, 2)] == [3, 2, 2]  # steps cost two members
    for member in survivors:
        # moved, not recomputed: weights, BatchNorm statistics, Adam's moments and step, dropout stream
        moved, before = snapshots.start[1][member], snapshots.end[0][member]
        for key in ("net", "optimizer", "dropout"):
            assert _same(moved[key], before[key]), (member, key)
        # the scheduler's epoch-1 lr, and the shuffle stream after epoch 1's order was drawn, as without shrinking
        for key in ("lr", "shuffle"):
            assert _same(moved[key], whole.start[1][member][key]), (member, key)
        # its streams draw on as without shrinking: the same batches and dropout masks in epoch 1
        assert torch.equal(snapshots.start[1]["labels"][member], whole.start[1]["labels"][member])
        for key in ("dropout", "shuffle"):
            assert torch.equal(snapshots.end[2][member][key], whole.end[2][member][key]), key
        assert snapshots.end[2][member]["lr"] == whole.end[2][member]["lr"]  # the scheduler steps on
        assert _numbers(histories[member][:1]) == _numbers(whole_histories[member][:1])  # before it: bit for bit
        # After it the kernels add over 2 members' channels instead of 3 (BatchNorm's and the conv bias's
        # gradient sums): float32 rounding apart, as fused members are from their solo runs (test_fused.py).
        for row, reference in zip(histories[member][1:], whole_histories[member][1:], strict=True):
            assert row["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-3)
            assert row["val_acc"] == pytest.approx(reference["val_acc"], abs=5 / 500)


def test_a_group_that_shrank_resumes_from_its_checkpoint_bit_for_bit(shrinking, data_root, tmp_path):
    (_, straight, _), _ = shrinking
    _fit(data_root, tmp_path, 2, stop=True)  # interrupted after epoch 1, long after it shrank
    module, resumed, snapshots = _fit(data_root, tmp_path, 3, stop=True, ckpt_path=tmp_path / "last.ckpt")
    assert module.live == [0, 2] and snapshots.start[2]["slots"] == 2
    assert [len(rows) for rows in resumed] == [3, 1, 3]
    assert [_numbers(rows) for rows in resumed] == [_numbers(rows) for rows in straight]
