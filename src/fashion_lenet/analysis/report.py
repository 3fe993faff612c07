"""Report of one or more sweeps: the seed's Figure 1 and Figure 2 with seed-to-seed error bars.

    python -m fashion_lenet.analysis.report multirun/seed_study --out results/seed_study [--notes conclusion.md]

Reads every job's metrics.json. Jobs are grouped into settings (every hyperparameter but the learning rate
and the seed); each setting's learning rate is chosen by mean *validation* accuracy, and only then are its
train and test accuracies reported, as mean ± sample std over seeds. Failed, diverged and incomplete jobs
are listed and left out. `--against results/<study>/jobs.csv` adds a committed study's settings to the Welch tests
(its job folders need not exist: its jobs.csv holds each job's settings and accuracies).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from fashion_lenet.sweep.errors import UserError
from fashion_lenet.sweep.jobfiles import read_metrics
from fashion_lenet.training.data import CLASSES
from fashion_lenet.training.plots import confusion_matrix_figure, plt, save

# The seed report's Figure 2 (final train %, final test %), one run each.
SEED_FIGURE_2 = {
    "baseline": (91.59, 89.09),
    "dropout": (92.05, 89.23),
    "batch_norm": (95.47, 89.61),
    "weight_decay": (91.81, 89.64),
}
STUDENT_KEYS = ("distill_temperature", "distill_alpha")  # only distilled jobs have them (jobfiles.job_hparams)
# Hyperparameters that define a setting; lr is chosen per setting, seeds are repeats.
SETTING_KEYS = ("technique", "model", "optimizer", "weight_decay", "dropout_p", "batch_size", "max_epochs", "scheduler",
                "label_smoothing", "max_shift", *STUDENT_KEYS)
ALPHA = 0.05


@dataclass
class Job:
    path: Path
    metrics: dict

    @property
    def ok(self) -> bool:
        m = self.metrics
        return m.get("status") == "completed" and all(_finite(m.get(k)) for k in ("best_val_acc", "test_acc"))

    def value(self, key: str) -> float:
        # The final train accuracy is read from the history: metrics.json files written before 2026-11-27 08:15
        # carry the best epoch's value under final_train_acc (testing the best checkpoint restored the history).
        if key == "final_train_acc" and self.metrics.get("history"):
            return self.metrics["history"][-1].get("train_acc")
        return self.metrics.get(key)

    @property
    def setting(self) -> tuple:
        return tuple((key, self.metrics.get(key)) for key in SETTING_KEYS)


@dataclass
class Group:
    """The jobs of one setting at one learning rate: the seeds."""

    setting: tuple
    lr: float
    jobs: list[Job] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [100 * job.value(key) for job in self.jobs]

    def mean(self, key: str) -> float:
        return statistics.fmean(self.values(key))

    def std(self, key: str) -> float:
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else math.nan

    def curve(self, key: str) -> np.ndarray:
        """Per-epoch values (%) as seeds × epochs, cut to the shortest history."""
        histories = [[100 * row[key] for row in job.metrics["history"]] for job in self.jobs]
        length = min(len(h) for h in histories)
        return np.array([h[:length] for h in histories])


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def load_jobs(sweep_dirs: list[Path]) -> list[Job]:
    jobs = []
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            raise UserError(f"{sweep_dir} is not a folder: give sweep folders such as multirun/<date>/<time>")
        for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
            jobs.append(Job(job_dir, read_metrics(job_dir) or {"status": "incomplete"}))
    if not jobs:
        raise UserError(f"no job folders (with .hydra/) under {', '.join(map(str, sweep_dirs))}")
    return jobs


def load_jobs_csv(path: Path) -> list[Job]:
    """A committed report's jobs.csv as jobs: each job's settings, seed, status and accuracies (no history)."""
    if not path.is_file():
        raise UserError(f"--against {path} is not a file: give a report's jobs.csv (results/<study>/jobs.csv)")
    with path.open(newline="") as handle:
        return [Job(Path(row["job"]), {key: _typed(value) for key, value in row.items()})
                for row in csv.DictReader(handle)]  # fmt: skip


def _typed(text: str) -> int | float | str | None:
    """A CSV cell as write_jobs_csv wrote the value: None (empty), an int, a float, or text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def best_groups(jobs: list[Job]) -> tuple[dict[tuple, Group], dict[tuple, list[Group]]]:
    """(setting → the group at its best lr by mean validation accuracy, setting → all its groups)."""
    by_setting_lr: dict[tuple, dict[float, Group]] = defaultdict(dict)
    for job in jobs:
        if job.ok:
            lr = job.metrics["lr"]
            by_setting_lr[job.setting].setdefault(lr, Group(job.setting, lr)).jobs.append(job)
    all_groups = {s: sorted(groups.values(), key=lambda g: g.lr) for s, groups in by_setting_lr.items()}
    best = {s: max(groups, key=lambda g: g.mean("best_val_acc")) for s, groups in all_groups.items()}
    return best, all_groups


def setting_labels(settings: list[tuple]) -> dict[tuple, str]:
    """Name each setting by its technique plus the hyperparameters that vary within a technique."""
    by_technique: dict[str, list[dict]] = defaultdict(list)
    for setting in settings:
        by_technique[dict(setting)["technique"]].append(dict(setting))
    varying = [k for k in SETTING_KEYS[1:] if any(len({d[k] for d in ds}) > 1 for ds in by_technique.values())]
    return {s: " ".join([dict(s)["technique"], *(f"{k}={dict(s)[k]}" for k in varying)]) for s in settings}


def _pm(group: Group, key: str) -> str:
    std = group.std(key)
    return f"{group.mean(key):.2f} ± {std:.2f}" if math.isfinite(std) else f"{group.mean(key):.2f}"


def welch(a: Group, b: Group, key: str = "test_acc") -> float:
    """Two-sided p-value of Welch's t-test on the seeds' values; NaN with fewer than 2 seeds a side."""
    x, y = a.values(key), b.values(key)
    if min(len(x), len(y)) < 2 or (statistics.pvariance(x) == 0 and statistics.pvariance(y) == 0):
        return math.nan
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def figure_1(best: dict[tuple, Group], labels: dict[tuple, str], path: Path) -> None:
    """Train and test accuracy per epoch, one panel per setting: mean line, band of ±1 std."""
    n = len(best)
    columns = min(n, 2)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.8 * rows), squeeze=False, sharey=True)
    for ax, (setting, group) in zip(axes.flat, best.items(), strict=False):
        for key, color in (("train_acc", "tab:blue"), ("test_acc", "tab:orange")):
            curve = group.curve(key)
            epochs = np.arange(1, curve.shape[1] + 1)
            mean, std = curve.mean(0), curve.std(0, ddof=1) if len(curve) > 1 else np.zeros(curve.shape[1])
            ax.plot(epochs, mean, color=color, label=key.replace("_acc", ""))
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
        ax.set_title(f"{labels[setting]} (lr {group.lr:g}, n={len(group.jobs)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Train and test accuracy per epoch (mean ± 1 std over seeds)")
    fig.tight_layout()
    save(fig, path)


def figure_2(best: dict[tuple, Group], labels: dict[tuple, str], path: Path) -> None:
    """Final train and best-checkpoint test accuracy per setting, with error bars and the seed's values."""
    settings = list(best)
    x = np.arange(len(settings))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(settings)), 4.5))
    for offset, key, color in ((-0.18, "final_train_acc", "tab:blue"), (0.18, "test_acc", "tab:orange")):
        means = [best[s].mean(key) for s in settings]
        errors = [best[s].std(key) if len(best[s].jobs) > 1 else 0 for s in settings]
        ax.bar(x + offset, means, 0.34, yerr=errors, capsize=4, color=color,
               label="final train" if key == "final_train_acc" else "test (best checkpoint)")  # fmt: skip
    seed_points = [(i, SEED_FIGURE_2[s[0][1]]) for i, s in enumerate(settings) if s[0][1] in SEED_FIGURE_2]
    for offset, column in ((-0.18, 0), (0.18, 1)):
        label = "seed report (one run)" if column == 0 else None
        ax.scatter([i + offset for i, _ in seed_points], [v[column] for _, v in seed_points], marker="D", s=36,
                   color="crimson", zorder=3, label=label)  # fmt: skip
    low = min(best[s].mean("test_acc") for s in settings)
    high = max(best[s].mean("final_train_acc") for s in settings)
    ax.set_ylim(max(0, low - 4), min(100, high + 4))
    ax.set_xticks(x, [labels[s] for s in settings], rotation=15, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Final accuracies (mean ± 1 std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    fig.tight_layout()
    save(fig, path)


def write_jobs_csv(jobs: list[Job], path: Path) -> None:
    settings = [k for k in SETTING_KEYS if k not in STUDENT_KEYS or any(k in job.metrics for job in jobs)]
    columns = ["job", *settings, "lr", "seed", "status", "best_epoch", "best_val_acc", "test_acc",
               "final_train_acc", "wall_time_s", "device"]  # fmt: skip
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for job in jobs:
            writer.writerow([str(job.path), *(job.value(c) for c in columns[1:])])


def sweep_wall_time(jobs: list[Job]) -> str:
    spans = [
        (datetime.fromisoformat(j.metrics["started_at"]), j.metrics["wall_time_s"])
        for j in jobs
        if j.metrics.get("started_at") and _finite(j.metrics.get("wall_time_s"))
    ]
    if not spans:
        return "unknown"
    start = min(s for s, _ in spans)
    end = max(s + timedelta(seconds=w) for s, w in spans)
    return f"{(end - start).total_seconds() / 60:.1f} min (first job started {start:%Y-%m-%d %H:%M} UTC)"


def build_report(sweep_dirs: list[Path], out: Path, notes: Path | None = None, against: list[Path] = ()) -> str:
    """report.md (returned too), its figures and jobs.csv in `out`; `notes` (markdown) is appended; `against`:
    committed studies' jobs.csv, whose settings join the Welch tests."""
    if notes and not notes.is_file():  # checked first: a report without its notes must not be half written
        raise UserError(f"--notes {notes} is not a file: give the markdown file to append to the report")
    committed: dict[tuple, Group] = {}
    committed_labels: dict[tuple, str] = {}
    for path in against:
        study, _ = best_groups(load_jobs_csv(path))
        for setting, label in setting_labels(list(study)).items():
            key = (("study", str(path)), *setting)  # apart from this report's settings, even when equal
            committed[key], committed_labels[key] = study[setting], f"{label} ({path.parent.name}/jobs.csv)"
    jobs = load_jobs(sweep_dirs)
    best, all_groups = best_groups(jobs)
    if not best:
        raise UserError("no completed job to report: see each job's metrics.json for its status")
    order = sorted(best, key=lambda s: list(SEED_FIGURE_2).index(s[0][1]) if s[0][1] in SEED_FIGURE_2 else 99)
    best = {s: best[s] for s in order}
    labels = setting_labels(order)
    top = max(best.values(), key=lambda g: g.mean("best_val_acc"))
    best_run = max(top.jobs, key=lambda j: j.metrics["best_val_acc"])
    out.mkdir(parents=True, exist_ok=True)
    write_figures(jobs, best, labels, top, best_run, out)
    lines = [*_header(sweep_dirs, jobs), *_final_accuracies(best, labels),
             *_differences(best | committed, labels | committed_labels),
             *_every_learning_rate(best, all_groups, labels), *_per_class(top, best_run, labels), *_left_out(jobs)]
    if notes:
        lines += [notes.read_text().strip(), ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def write_figures(jobs: list[Job], best: dict[tuple, Group], labels: dict[tuple, str], top: Group, best_run: Job,
                  out: Path) -> None:  # fmt: skip
    """The seed's two figures, jobs.csv and the best run's confusion matrix."""
    figure_1(best, labels, out / "figure1_accuracy_per_epoch.png")
    figure_2(best, labels, out / "figure2_final_accuracies.png")
    write_jobs_csv(jobs, out / "jobs.csv")
    matrix = np.array(best_run.metrics["confusion_matrix"])
    title = f"Best run: {labels[top.setting]}, lr {top.lr:g}, seed {best_run.metrics['seed']}"
    save(confusion_matrix_figure(matrix, CLASSES, title), out / "confusion_matrix_best_run.png")


def _header(sweep_dirs: list[Path], jobs: list[Job]) -> list[str]:
    ok = [j for j in jobs if j.ok]
    first = ok[0].metrics
    return [
        "# Report: " + ", ".join(str(d) for d in sweep_dirs),
        "",
        f"Generated by `python -m fashion_lenet.analysis.report` from {len(jobs)} job folders ({len(ok)} completed).  ",
        f"Device: {first['device']}; " + ", ".join(f"{k} {v}" for k, v in first["versions"].items()) + ".  ",
        f"Sweep wall time: {sweep_wall_time(jobs)}.",
        "",
        "Each setting's learning rate is the one with the highest mean **validation** accuracy; train and test "
        "accuracies are then mean ± sample std over seeds (n = seeds). Test accuracy is that of the best "
        "checkpoint by validation accuracy; final train accuracy is the last epoch's.",
        "",
    ]


def _final_accuracies(best: dict[tuple, Group], labels: dict[tuple, str]) -> list[str]:
    """The seed's Figure 2 as a table beside the seed's own numbers, then both figures."""
    lines = ["## Final accuracies (the seed's Figure 2)", "",
             "| setting | lr | n | final train % | test % | gap train − test | seed report train / test |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for setting, group in best.items():
        gaps = [tr - te for tr, te in zip(group.values("final_train_acc"), group.values("test_acc"), strict=True)]
        gap = f"{statistics.fmean(gaps):.2f}" + (f" ± {statistics.stdev(gaps):.2f}" if len(gaps) > 1 else "")
        seed = SEED_FIGURE_2.get(setting[0][1])
        seed_text = f"{seed[0]:.2f} / {seed[1]:.2f}" if seed else "—"
        lines.append(
            f"| {labels[setting]} | {group.lr:g} | {len(group.jobs)} | {_pm(group, 'final_train_acc')} | "
            f"{_pm(group, 'test_acc')} | {gap} | {seed_text} |"
        )
    return lines + ["", "![Figure 2](figure2_final_accuracies.png)", "", "## Accuracy per epoch (the seed's Figure 1)",
                    "", "![Figure 1](figure1_accuracy_per_epoch.png)", ""]  # fmt: skip


def _differences(best: dict[tuple, Group], labels: dict[tuple, str]) -> list[str]:
    """Welch's t-test for every pair of settings, each at its chosen learning rate."""
    lines = ["## Which differences are real?", "",
             f"Welch's t-test on the seeds' test accuracies, each setting at its chosen lr. A difference with "
             f"p ≥ {ALPHA} is inside seed-to-seed noise. With 3 seeds a side the test only detects large, "
             "consistent gaps: a p above the threshold means 'not shown', not 'equal'.", "",
             "| A | B | mean test A − B (points) | p | verdict |", "|---|---|---|---|---|"]  # fmt: skip
    for a, b in combinations(best, 2):
        p = welch(best[a], best[b])
        diff = best[a].mean("test_acc") - best[b].mean("test_acc")
        verdict = "n/a (fewer than 2 seeds)" if math.isnan(p) else ("different" if p < ALPHA else "inside noise")
        lines.append(f"| {labels[a]} | {labels[b]} | {diff:+.2f} | {p:.3f} | {verdict} |")
    return lines + [""]


def _every_learning_rate(best: dict[tuple, Group], all_groups: dict[tuple, list[Group]],
                         labels: dict[tuple, str]) -> list[str]:  # fmt: skip
    lines = ["## Every learning rate", "", "Mean ± std over seeds; the chosen lr is in bold.", "",
             "| setting | lr | n | best val % | test % | final train % |", "|---|---|---|---|---|---|"]  # fmt: skip
    for setting in best:
        for group in all_groups[setting]:
            bold = "**" if group is best[setting] else ""
            lines.append(
                f"| {labels[setting]} | {bold}{group.lr:g}{bold} | {len(group.jobs)} | {_pm(group, 'best_val_acc')}"
                f" | {_pm(group, 'test_acc')} | {_pm(group, 'final_train_acc')} |"
            )
    return lines + [""]


def _per_class(top: Group, best_run: Job, labels: dict[tuple, str]) -> list[str]:
    """The best run's per-class test accuracy, worst class first, and its confusion matrix."""
    per_class = best_run.metrics["per_class_test_acc"]
    lines = ["## Per-class test accuracy of the best run", "",
             f"{labels[top.setting]}, lr {top.lr:g}, seed {best_run.metrics['seed']} "
             f"(highest validation accuracy: {100 * best_run.metrics['best_val_acc']:.2f} %; "
             f"test {100 * best_run.metrics['test_acc']:.2f} %).", "",
             "| class | test accuracy % |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {100 * acc:.1f} |" for name, acc in sorted(per_class.items(), key=lambda kv: kv[1])]
    return lines + ["", "![Confusion matrix](confusion_matrix_best_run.png)", ""]


def _left_out(jobs: list[Job]) -> list[str]:
    """The jobs that did not complete (failed, diverged, interrupted, incomplete), and where every job's numbers are."""
    left_out = [j for j in jobs if not j.ok]
    lines = ["## Jobs left out", ""]
    if left_out:
        lines += ["| job | status | detail |", "|---|---|---|"]
        for job in left_out:
            detail = job.metrics.get("error") or f"lr {job.metrics.get('lr')}, seed {job.metrics.get('seed')}"
            lines.append(f"| {job.path} | {job.metrics.get('status', 'incomplete')} | {detail} |")
    else:
        lines.append("None: every job completed.")
    return lines + ["", "Per-job numbers: [jobs.csv](jobs.csv).", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description="Report of Hydra sweeps of train.py (report.md + PNGs + jobs.csv).")
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders, e.g. multirun/2026-11-27/10-00-00-1")
    parser.add_argument("--out", type=Path, default=Path("reports/latest"), help="output folder")
    parser.add_argument("--notes", type=Path, help="a markdown file appended to the report (conclusions)")
    parser.add_argument("--against", type=Path, action="append", default=[],
                        help="a committed study's jobs.csv whose settings join the Welch tests (repeatable)")
    args = parser.parse_args()
    try:
        build_report(args.sweeps, args.out, args.notes, args.against)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
