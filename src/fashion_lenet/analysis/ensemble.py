"""An ensemble of trained jobs: their best checkpoints' softmax outputs, averaged.

    python -m fashion_lenet.analysis.ensemble multirun/lenet5_teacher --out results/lenet5_ensemble

Writes ensemble.md and ensemble.json: validation and test accuracy, negative log-likelihood and expected
calibration error (15 equal-width confidence bins) of the ensemble against its members' mean; a figure of accuracy
against ensemble size K, members added in job order (nothing is chosen on the test set); the ensemble's per-class
test accuracy and confusion matrix. Members that share a network are evaluated in one fused forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torchmetrics.functional.classification import multiclass_calibration_error, multiclass_confusion_matrix

from fashion_lenet.sweep.config import PROJECT_ROOT
from fashion_lenet.sweep.errors import UserError
from fashion_lenet.sweep.jobfiles import read_metrics
from fashion_lenet.training.data import CLASSES, FashionMNISTDataModule
from fashion_lenet.training.ensemble import Ensemble, load_ensemble
from fashion_lenet.training.plots import confusion_matrix_figure, plt, save

SPLITS = ("val", "test")
CALIBRATION_BINS = 15
BATCH = 1000


def member_probabilities(ensemble: Ensemble, images: torch.Tensor) -> torch.Tensor:
    """[members, N, classes] softmax outputs of every member."""
    return torch.cat([ensemble(batch).softmax(-1) for batch in images.split(BATCH)], dim=1)


def scores(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, mean negative log-likelihood and expected calibration error of predictions [N, classes]."""
    picked = probabilities[torch.arange(len(labels)), labels]
    return {
        "acc": (probabilities.argmax(-1) == labels).float().mean().item(),
        "nll": -picked.clamp_min(torch.finfo(picked.dtype).tiny).log().mean().item(),
        "ece": multiclass_calibration_error(probabilities, labels, probabilities.shape[-1],
                                            n_bins=CALIBRATION_BINS).item(),  # fmt: skip
    }


def evaluate_ensemble(folders: list[Path], data_root: Path) -> dict:
    """Every number of the report: per split the ensemble's and each member's scores, and accuracy against K."""
    ensemble, jobs = load_ensemble(folders)
    datamodule = FashionMNISTDataModule(str(data_root))
    datamodule.prepare_data()
    datamodule.setup()
    result = {"jobs": [str(job) for job in jobs], "splits": {}}
    for split in SPLITS:
        images, labels = datamodule.splits[split]
        probabilities = member_probabilities(ensemble, images)
        averaged = probabilities.cumsum(0) / torch.arange(1, len(jobs) + 1).view(-1, 1, 1)  # the first K members
        members = [scores(p, labels) for p in probabilities]
        result["splits"][split] = {
            "ensemble": scores(averaged[-1], labels),
            "members": members,
            "members_mean": {key: statistics.fmean(m[key] for m in members) for key in members[0]},
            "acc_by_size": (averaged.argmax(-1) == labels).float().mean(1).tolist(),
        }
        if split == "test":
            matrix = multiclass_confusion_matrix(averaged[-1].argmax(-1), labels, len(CLASSES))
            result["confusion_matrix"] = matrix.tolist()
    return result


def training_minutes(jobs: list[Path]) -> tuple[float, str]:
    """Wall minutes the members took to train (a fused group's once) and the device they trained on."""
    walls, device = {}, ""
    for job in jobs:
        metrics = read_metrics(job) or {}
        group = (metrics.get("fused_group") or {}).get("checkpoint", str(job))
        walls[group], device = metrics.get("wall_time_s") or 0.0, metrics.get("device", "")
    return sum(walls.values()) / 60, device


def accuracy_figure(result: dict, path: Path) -> None:
    sizes = range(1, len(result["jobs"]) + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for split, color in zip(SPLITS, ("tab:green", "tab:orange"), strict=True):
        numbers = result["splits"][split]
        ax.plot(sizes, [100 * a for a in numbers["acc_by_size"]], "o-", color=color, label=f"ensemble, {split}")
        ax.scatter(sizes, [100 * m["acc"] for m in numbers["members"]], color=color, marker="x", alpha=0.6,
                   label=f"member K alone, {split}")  # fmt: skip
        ax.axhline(100 * numbers["members_mean"]["acc"], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("ensemble size K (members in job order)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(list(sizes))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Averaged softmax of the first K members (dotted: members' mean)")
    fig.tight_layout()
    save(fig, path)


def write_report(folders: list[Path], result: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.json").write_text(json.dumps(result, indent=2))
    accuracy_figure(result, out / "accuracy_vs_members.png")
    save(confusion_matrix_figure(result["confusion_matrix"], CLASSES, "Ensemble, test set"),
         out / "confusion_matrix_ensemble.png")  # fmt: skip
    minutes, device = training_minutes([Path(job) for job in result["jobs"]])
    k = len(result["jobs"])
    lines = [f"# Ensemble of {k} jobs: " + ", ".join(str(f) for f in folders), "",
             f"Generated by `python -m fashion_lenet.analysis.ensemble`. Each member is its job's best checkpoint by "
             f"validation accuracy; the ensemble averages the members' softmax. Members trained in {minutes:.1f} min "
             f"of wall time ({device}).", "",
             f"| | val acc % | test acc % | test NLL | test ECE ({CALIBRATION_BINS} bins) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, key in ((f"ensemble of {k}", "ensemble"), ("members' mean", "members_mean")):
        val, test = result["splits"]["val"][key], result["splits"]["test"][key]
        lines.append(f"| {name} | {100 * val['acc']:.2f} | {100 * test['acc']:.2f} | {test['nll']:.4f} | "
                     f"{100 * test['ece']:.2f} % |")  # fmt: skip
    lines += ["", "![accuracy against ensemble size](accuracy_vs_members.png)", "",
              "| K | val acc % | test acc % | member K alone: val / test % | job |",
              "|---|---|---|---|---|"]  # fmt: skip
    val, test = result["splits"]["val"], result["splits"]["test"]
    for n, job in enumerate(result["jobs"]):
        alone = f"{100 * val['members'][n]['acc']:.2f} / {100 * test['members'][n]['acc']:.2f}"
        lines.append(f"| {n + 1} | {100 * val['acc_by_size'][n]:.2f} | {100 * test['acc_by_size'][n]:.2f} | "
                     f"{alone} | {job} |")  # fmt: skip
    matrix = torch.tensor(result["confusion_matrix"])
    per_class = (matrix.diag() / matrix.sum(1)).tolist()
    lines += ["", "## Per-class test accuracy of the ensemble", "", "| class | test accuracy % |", "|---|---|",
              *(f"| {name} | {100 * acc:.1f} |" for name, acc in zip(CLASSES, per_class, strict=True)), "",
              "![confusion matrix](confusion_matrix_ensemble.png)", ""]  # fmt: skip
    text = "\n".join(lines)
    (out / "ensemble.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="job folders, or sweep folders of them")
    parser.add_argument("--out", type=Path, required=True, help="where ensemble.md, its JSON and figures go")
    parser.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    args = parser.parse_args()
    try:
        result = evaluate_ensemble(args.folders, args.data_root)
    except UserError as error:
        sys.exit(f"error: {error}")
    write_report(args.folders, result, args.out)
    for split in SPLITS:
        ours, mean = result["splits"][split]["ensemble"], result["splits"][split]["members_mean"]
        print(f"{split}: ensemble of {len(result['jobs'])} {100 * ours['acc']:.2f} % "
              f"(members' mean {100 * mean['acc']:.2f} %)")  # fmt: skip
    print(f"report: {args.out / 'ensemble.md'}")


if __name__ == "__main__":
    main()
