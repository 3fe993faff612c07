import shutil

import pytest
import torch

from fashion_lenet.sweep.errors import DataError
from fashion_lenet.training import data
from fashion_lenet.training.data import (
    CONTENT_SHA256,
    DeviceBatches,
    FashionMNISTDataModule,
    ensure_raw_files,
    load_images,
    raw_folder,
    split_indices,
)


def test_split_is_80_20_disjoint_and_deterministic():
    train, val = split_indices(60_000, 0.2, split_seed=12345)
    assert (len(train), len(val)) == (48_000, 12_000)
    assert len(set(train.tolist()) | set(val.tolist())) == 60_000
    again_train, again_val = split_indices(60_000, 0.2, split_seed=12345)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, split_indices(60_000, 0.2, split_seed=1)[1])


def test_split_does_not_depend_on_training_seed(data_root):
    first = FashionMNISTDataModule(str(data_root), shuffle_seed=0)
    second = FashionMNISTDataModule(str(data_root), shuffle_seed=7)
    first.setup(), second.setup()
    assert torch.equal(first.splits["val"][1], second.splits["val"][1])


def test_real_data_is_normalized_with_its_own_statistics(data_root):
    images, labels = load_images(data_root, train=True)
    assert images.shape == (60_000, 1, 28, 28) and images.dtype == torch.float32
    assert abs(images.mean().item()) < 2e-3 and abs(images.std().item() - 1) < 2e-3
    assert torch.bincount(labels).tolist() == [6000] * 10
    test_images, _ = load_images(data_root, train=False)
    assert test_images.shape == (10_000, 1, 28, 28)


def test_loaders_cover_every_image_once_and_keep_partial_batches(data_root):
    module = FashionMNISTDataModule(str(data_root), batch_size=64, eval_batch_size=5000)
    module.setup()
    train = module.train_dataloader()
    assert len(train) == 750
    images, labels = next(iter(train))
    assert images.shape == (1, 64, 1, 28, 28) and labels.shape == (1, 64)  # a group of one member's batch
    val, test = module.val_dataloader()
    assert [len(b[1]) for b in val] == [5000, 5000, 2000]
    assert sum(len(b[1]) for b in test) == 10_000
    seen = torch.cat([labels[0] for _, labels in train])
    assert torch.equal(seen.sort().values, module.splits["train"][1].sort().values)


def test_shuffle_order_is_restored_from_state_dict(data_root):
    module = FashionMNISTDataModule(str(data_root))
    module.setup()
    state = module.state_dict()
    first_epoch = next(iter(module.train_dataloader()))[1]
    module.load_state_dict(state)
    assert torch.equal(next(iter(module.train_dataloader()))[1], first_epoch)
    assert not torch.equal(next(iter(module.train_dataloader()))[1], first_epoch)


def test_each_member_of_a_group_gets_the_batches_it_gets_alone(data_root):
    """Per member its own shuffle seed and augmentation; a group of three against three groups of one."""
    seeds, augment, shifts = [0, 7, 0], [False, True, True], [2, 1, 2]
    group = FashionMNISTDataModule(str(data_root), shuffle_seed=seeds, augment=augment, max_shift=shifts)
    alone = [FashionMNISTDataModule(str(data_root), shuffle_seed=s, augment=a, max_shift=m)
             for s, a, m in zip(seeds, augment, shifts, strict=True)]  # fmt: skip
    for module in (group, *alone):
        module.setup()
    batches = [iter(module.train_dataloader()) for module in (group, *alone)]
    for _ in range(3):
        (images, labels), *solo = (next(member_batches) for member_batches in batches)
        assert images.shape == (3, 64, 1, 28, 28)
        for member, (solo_images, solo_labels) in enumerate(solo):
            assert torch.equal(labels[member], solo_labels[0]) and torch.equal(images[member], solo_images[0])
    assert not torch.equal(images[0], images[2])  # same shuffle, but member 2 augments


def test_device_batches_keep_order():
    x, y = torch.arange(10.0), torch.arange(10)
    assert [b[1].tolist() for b in DeviceBatches(x, y, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_corrupted_file_is_named_and_never_loaded(tmp_path, data_root):
    shutil.copytree(raw_folder(data_root), raw_folder(tmp_path))
    labels = raw_folder(tmp_path) / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is corrupted.*delete"):
        ensure_raw_files(tmp_path)


def test_files_are_taken_from_the_debian_package_when_missing(tmp_path, monkeypatch, data_root):
    package = tmp_path / "debian"
    package.mkdir()
    for name in CONTENT_SHA256:  # a package folder holding .gz files, as dataset-fashion-mnist does
        shutil.copyfile(data.DEBIAN_DIR / f"{name}.gz", package / f"{name}.gz")
    monkeypatch.setattr(data, "DEBIAN_DIR", package)
    assert ensure_raw_files(tmp_path / "root") == raw_folder(tmp_path / "root")


def test_missing_data_without_any_source_says_how_to_get_it(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(data, "FashionMNIST", offline)
    with pytest.raises(DataError, match="make install"):
        ensure_raw_files(tmp_path)
