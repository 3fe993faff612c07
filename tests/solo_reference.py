"""Solo runs' numbers recorded from the code before solo runs became groups of one (commit eb2e8b6).

    python tests/solo_reference.py      # records tests/data/solo_reference.json (overwrites it)

tests/test_one_stack.py trains the same runs and compares: bit for bit where the CPU model, thread count and torch
version are those of the recording (float32 sums repeat exactly only there), else within float32 rounding as
training amplifies it (the tolerances of tests/test_fused.py's 30-step pairings).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

RUNS = {  # name -> overrides on top of SHORT: every variant, optimizer, scheduler and training-loss option
    "baseline_adam": ["model=baseline"],
    "dropout_adamw_cosine_smoothing_augment": ["model=dropout", "optim=adamw", "scheduler=cosine",
                                               "label_smoothing=0.1", "data.augment=true", "data.max_shift=1"],
    "bn_pre_sgd": ["model=bn_pre", "optim=sgd", "optim.lr=0.05"],
    "bn_post_weight_decay": ["model=bn_post", "optim.weight_decay=1e-3"],
}
SHORT = ["trainer.max_epochs=2", "++trainer.limit_train_batches=20", "++trainer.limit_val_batches=3",
         "++trainer.limit_test_batches=3", "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0",
         "threads=1"]  # fmt: skip
FILE = Path(__file__).parent / "data" / "solo_reference.json"


def numbers(metrics: dict) -> dict:
    """What must repeat: every epoch's numbers (no timings), the selected epoch and its test accuracy."""
    history = [{k: v for k, v in row.items() if not k.endswith("_time_s")} for row in metrics["history"]]
    return {"history": history, "best_epoch": metrics["best_epoch"], "best_val_acc": metrics["best_val_acc"],
            "test_acc": metrics["test_acc"]}  # fmt: skip


def where() -> dict:
    """What bit-for-bit numbers depend on."""
    import torch

    from fashion_lenet.training.lifecycle import cpu_model

    return {"cpu": cpu_model(), "threads": 1, "torch": torch.__version__}


def record() -> None:
    from fashion_lenet.sweep.config import compose_job
    from train import train

    runs = {}
    for name, overrides in RUNS.items():
        with tempfile.TemporaryDirectory() as folder:
            runs[name] = numbers(train(compose_job([*SHORT, *overrides], Path(folder))))
    FILE.parent.mkdir(exist_ok=True)
    FILE.write_text(json.dumps({"recorded_with": where(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {FILE}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))  # train.py
    record()
