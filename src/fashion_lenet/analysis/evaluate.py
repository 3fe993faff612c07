"""Evaluate any saved checkpoint on the official test set, without the config it was trained with.

    python -m fashion_lenet.analysis.evaluate multirun/<date>/<time>/0/checkpoints/last.ckpt [--out DIR]

The checkpoint carries the network's description (LeNetModule's hyperparameters), so the model rebuilds itself.
Prints test accuracy and per-class accuracy, and writes a confusion-matrix PNG.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import lightning.pytorch as pl

from fashion_lenet.sweep.config import PROJECT_ROOT
from fashion_lenet.sweep.console import quiet_lightning
from fashion_lenet.sweep.errors import UserError
from fashion_lenet.training.checkpoints import refused_code
from fashion_lenet.training.data import CLASSES, FashionMNISTDataModule
from fashion_lenet.training.module import LeNetModule
from fashion_lenet.training.plots import confusion_matrix_figure, save


def evaluate(checkpoint: Path, data_root: Path, out: Path, accelerator: str = "auto") -> dict:
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint} does not exist: give a .ckpt file from a run's checkpoints/ folder")
    try:  # weights-only, as every checkpoint load (fashion_lenet.training.checkpoints): a crafted file runs nothing
        module = LeNetModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, KeyError, TypeError) as error:
        # torch's and Lightning's messages for these run to many lines; the kind of failure is enough here
        code = refused_code(error)
        reason = f"it holds code, not only data: {code}" if code else type(error).__name__
        raise UserError(
            f"{checkpoint} is not a checkpoint of this project ({reason}): "
            "give a .ckpt file from a run's checkpoints/ folder"
        ) from error
    if module.members > 1:
        raise UserError(f"{checkpoint} holds a fused group of {module.members} jobs: give one job's best checkpoint, "
                        "from its checkpoints/ folder")  # fmt: skip
    datamodule = FashionMNISTDataModule(str(data_root))
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_model_summary=False,
                         enable_progress_bar=False)  # fmt: skip
    trainer.test(module, datamodule=datamodule, verbose=False)
    tested = module.test_results()[0]  # a checkpoint of one job
    matrix = tested["confusion"].cpu()
    out.mkdir(parents=True, exist_ok=True)
    figure = out / f"confusion_matrix_{checkpoint.stem}.png"
    save(confusion_matrix_figure(matrix, CLASSES, f"Test set: {checkpoint.name}"), figure)
    per_class = (matrix.diag() / matrix.sum(1)).tolist()
    return {"test_acc": tested["test_acc"], "per_class": dict(zip(CLASSES, per_class, strict=True)),
            "figure": str(figure)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, help="where to write the PNG (default: beside the checkpoint)")
    parser.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, ...")
    args = parser.parse_args()
    quiet_lightning()
    try:
        result = evaluate(args.checkpoint, args.data_root, args.out or args.checkpoint.parent, args.accelerator)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"test accuracy: {100 * result['test_acc']:.2f} %  ({args.checkpoint})")
    for name, accuracy in result["per_class"].items():
        print(f"  {name:<12} {100 * accuracy:6.2f} %")
    print(f"confusion matrix: {result['figure']}")


if __name__ == "__main__":
    main()
