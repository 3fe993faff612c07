"""Fashion-MNIST as a LightningDataModule whose splits live on the trainer's device as tensors."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from fashion_lenet.sweep.errors import DataError
from fashion_lenet.training.fused import per_member

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# sha256 of the decompressed IDX files (the .gz bytes differ between mirrors, the content does not).
CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Pixel statistics of the 60,000 training images after scaling to [0, 1] (checked by a test).
MEAN, STD = 0.2860, 0.3530
CLASSES = FashionMNIST.classes
GET_DATA_HINT = (
    "install it with `make install` (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`), "
    "or put the four *-ubyte.gz files of Fashion-MNIST into {raw}"
)


def raw_folder(root: str | Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def ensure_raw_files(root: str | Path) -> Path:
    """Make the four IDX files exist under root and verify them; raise DataError saying how to fix."""
    raw = raw_folder(root)
    if not all((raw / name).is_file() for name in CONTENT_SHA256):
        if DEBIAN_DIR.is_dir() and all((DEBIAN_DIR / f"{name}.gz").is_file() for name in CONTENT_SHA256):
            raw.mkdir(parents=True, exist_ok=True)
            for name in CONTENT_SHA256:
                archive = raw / f"{name}.gz"
                shutil.copyfile(DEBIAN_DIR / archive.name, archive)
                extract_archive(str(archive), str(raw))
        else:
            try:
                FashionMNIST(str(root), train=True, download=True)
                FashionMNIST(str(root), train=False, download=True)
            except Exception as error:  # any network or mirror failure ends in the same advice
                hint = GET_DATA_HINT.format(raw=raw)
                raise DataError(f"Fashion-MNIST not found and download failed ({error}); {hint}") from None
    for name, expected in CONTENT_SHA256.items():
        if hashlib.sha256((raw / name).read_bytes()).hexdigest() != expected:
            raise DataError(f"{raw / name} is corrupted (checksum mismatch); delete {raw} and run `make install` again")
    return raw


def load_images(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (N×1×28×28 normalized float32 images, N int64 labels), parsed by torchvision."""
    dataset = FashionMNIST(str(root), train=train, download=False)
    images = dataset.data.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return images, dataset.targets


def split_indices(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint (train, val) indices; its own generator, independent of the training seed."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = round(n * val_fraction)
    return permutation[n_val:].sort().values, permutation[:n_val].sort().values


def augment(images: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flips and translations of up to `shift` pixels, per image, on the device."""
    n, _, height, width = images.shape
    device = images.device
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    padded = nn.functional.pad(images, (shift,) * 4, value=-MEAN / STD)  # a black pixel, normalized
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n, 1), device=device, generator=generator)
    rows = (dy + torch.arange(height, device=device)).view(n, 1, height, 1)
    cols = (dx + torch.arange(width, device=device)).view(n, 1, 1, width)
    return padded[torch.arange(n, device=device).view(n, 1, 1, 1), 0, rows, cols]


class DeviceBatches:
    """Evaluation batches sliced in order from tensors already on the device; keeps the partial last batch (every
    image is seen once)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int):
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            yield self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]


class MemberBatches:
    """The training batches of a group's live members: images [live, B, 1, 28, 28], labels [live, B].

    Member n shuffles with its own generator (one on-device permutation per epoch, then each batch's augmentation,
    drawn in that order), so its batches are those it sees when it trains alone. `live` lists the members that
    still train, read at each epoch's start.
    """

    def __init__(self, images, labels, batch_size: int, generators: list[torch.Generator],
                 max_shifts: list[int | None], live: list[int]):  # fmt: skip
        self.images, self.labels = images, labels
        self.batch_size, self.generators, self.max_shifts = batch_size, generators, max_shifts  # None: no augmenting
        self.live = live

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.labels), self.labels.device
        generators = [self.generators[m] for m in self.live]
        max_shifts = [self.max_shifts[m] for m in self.live]
        orders = torch.stack([torch.randperm(n, device=device, generator=g) for g in generators])
        for batch in orders.split(self.batch_size, dim=1):
            images = self.images[batch]
            if any(shift is not None for shift in max_shifts):
                members = zip(images, generators, max_shifts, strict=True)
                images = torch.stack([x if shift is None else augment(x, g, shift) for x, g, shift in members])
            yield images, self.labels[batch]


class FashionMNISTDataModule(pl.LightningDataModule):
    """80/20 split of the official training images; the official test set is only ever evaluated.

    Training batches are a group's (MemberBatches): `shuffle_seed`, `augment` and `max_shift` are one value, or
    one per member of a fused group. Evaluation batches are shared: every member sees the same images.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_fraction: float = 0.2,
        split_seed: int = 12345,
        shuffle_seed: int | Sequence[int] = 0,
        augment: bool | Sequence[bool] = False,
        max_shift: int | Sequence[int] = 2,
    ):
        super().__init__()
        self.root = root
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.shuffle_seeds = per_member(shuffle_seed, 1)
        members = len(self.shuffle_seeds)
        augments, shifts = per_member(augment, members), per_member(max_shift, members)
        self.max_shifts = [shift if on else None for on, shift in zip(augments, shifts, strict=True)]
        self.live = list(range(members))  # the members that still train (keep_members)
        self.raw_verified = False
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.shuffle_generators: list[torch.Generator] = []

    def prepare_data(self) -> None:
        # Lightning calls this for fit and again for test; the 55 MB checksum pass is needed only once.
        if not self.raw_verified:
            ensure_raw_files(self.root)
            self.raw_verified = True

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        images, labels = load_images(self.root, train=True)
        train_idx, val_idx = split_indices(len(labels), self.val_fraction, self.split_seed)
        test_images, test_labels = load_images(self.root, train=False)
        parts = {
            "train": (images[train_idx], labels[train_idx]),
            "val": (images[val_idx], labels[val_idx]),
            "test": (test_images, test_labels),
        }
        # Several processes (DDP): each keeps every world_size-th image of each split, its shard.
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        self.splits = {name: (x[rank::world].to(device), y[rank::world].to(device)) for name, (x, y) in parts.items()}
        self.shuffle_generators = [torch.Generator(device=device).manual_seed(seed) for seed in self.shuffle_seeds]

    def train_dataloader(self) -> MemberBatches:
        return MemberBatches(*self.splits["train"], self.batch_size, self.shuffle_generators, self.max_shifts,
                             self.live)  # fmt: skip

    def keep_members(self, live: list[int]) -> None:
        """Train only `live` from the next epoch on (the others stopped)."""
        self.live[:] = live  # in place: the training loader Lightning holds reads this list

    def val_dataloader(self) -> list[DeviceBatches]:
        # Index 0 selects checkpoints; index 1 only draws the per-epoch test curve of the seed's Figure 1.
        return [self._eval_batches("val"), self._eval_batches("test")]

    def test_dataloader(self) -> DeviceBatches:
        return self._eval_batches("test")

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return batch  # already on the trainer's device; Lightning's generic walk costs ~0.1 ms a batch

    def _eval_batches(self, split: str) -> DeviceBatches:
        return DeviceBatches(*self.splits[split], self.eval_batch_size)

    # The shuffle generators' states travel in checkpoints so a resumed run sees the same batches.
    def state_dict(self) -> dict:
        return {"shuffle_generators": [g.get_state() for g in self.shuffle_generators], "live_members": self.live}

    def load_state_dict(self, state_dict: dict) -> None:
        # "shuffle_generator": one run's, as checkpoints written before solo runs were groups of one hold it
        states = state_dict.get("shuffle_generators") or [state_dict["shuffle_generator"]]
        for generator, state in zip(self.shuffle_generators, states, strict=True):
            generator.set_state(state)
        self.keep_members(state_dict.get("live_members", self.live))


if __name__ == "__main__":
    import argparse
    import sys

    from fashion_lenet.sweep.config import PROJECT_ROOT

    parser = argparse.ArgumentParser(description="Put Fashion-MNIST under ROOT and verify its checksums.")
    parser.add_argument("--root", default=str(PROJECT_ROOT / "data"))
    parser.add_argument("--check", action="store_true", help="only verify files already under ROOT")
    args = parser.parse_args()
    try:
        if args.check and not all((raw_folder(args.root) / name).is_file() for name in CONTENT_SHA256):
            raise DataError(f"Fashion-MNIST is not in {raw_folder(args.root)}")
        print(f"Fashion-MNIST verified in {ensure_raw_files(args.root)}")
    except DataError as error:
        sys.exit(f"error: {error}")
