"""The summary of an Optuna search (hparams_search=optuna, experiment=lenet5_search): its trials (search.md, and
trials.csv with every trial's parameters and numbers), the best by validation accuracy, the trials pruned and the
epochs that saved, how much each parameter mattered and two figures. Importance is Optuna's mean decrease in
impurity of a random forest fitted to the completed trials (its fANOVA evaluator fails with scikit-learn >= 1.4
in Optuna 2.10).

    python -m fashion_lenet.analysis.search multirun/lenet5_search --out results/lenet5_search

Reads the study (`<sweep>/optuna.db`) and each trial's job folder (its overrides and metrics.json). The test
accuracy each finished trial printed is listed but chose nothing: the best trial is the best validation accuracy.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import yaml

from fashion_lenet.sweep.errors import UserError
from fashion_lenet.sweep.jobfiles import FINISHED, job_dirs, read_metrics
from fashion_lenet.sweep.naming import MULTIRUN_FILE, STUDY_FILE
from fashion_lenet.sweep.trials import epochs_saved
from fashion_lenet.training.plots import plt, save


def load_study(sweep_dir: Path):
    import optuna

    saved, study = sweep_dir / MULTIRUN_FILE, sweep_dir / STUDY_FILE
    if not saved.is_file() or not study.is_file():
        raise UserError(f"{sweep_dir} holds no Optuna search ({MULTIRUN_FILE} and {STUDY_FILE}): give the "
                        "hydra.sweep.dir of an `hparams_search=optuna` or `experiment=lenet5_search` run")  # fmt: skip
    name = yaml.safe_load(saved.read_text())["hydra"]["sweeper"]["study_name"]
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study}")


def trial_rows(sweep_dir: Path) -> list[dict]:
    """Each trial's job: its number, the values it drew, status, best val acc (and its epoch, 1-based, of all),
    test acc, the last epoch's train acc (under/overfitting), wall time."""
    rows = []
    for folder in job_dirs(sweep_dir):
        drawn = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        metrics = read_metrics(folder) or {}
        best_epoch, epochs = metrics.get("best_epoch"), len(metrics.get("history") or [])
        rows.append({"job": int(folder.name), "params": dict(o.split("=", 1) for o in drawn if "=" in o),
                     "status": metrics.get("status", "unknown"), "val_acc": metrics.get("best_val_acc"),
                     "best_epoch": "" if best_epoch is None else f"{best_epoch + 1}/{epochs}", "epochs": epochs,
                     "test_acc": metrics.get("test_acc"), "train_acc": metrics.get("final_train_acc"),
                     "wall_s": metrics.get("wall_time_s"), "metrics": metrics,
                     "group": (metrics.get("fused_group") or {}).get("members", 1)})  # fmt: skip
    return rows


def _union(seen, drawn):
    """The union of two numeric ranges of one kind and step (an Optuna distribution), or None where there is none."""
    import copy

    def step(distribution):
        return getattr(distribution, "q", None) or getattr(distribution, "step", None)

    if type(seen) is not type(drawn) or not hasattr(seen, "low") or step(seen) != step(drawn):
        return None
    if step(seen) and (drawn.low - seen.low) % step(seen):  # two grids that do not line up
        return None
    union = copy.copy(seen)
    union.low, union.high = min(seen.low, drawn.low), max(seen.high, drawn.high)
    return union


def importances(study) -> dict[str, float]:
    """Each parameter's importance for the validation accuracy (fixed seed: repeatable). Optuna's importance covers
    only parameters whose distribution every trial shares, so a range widened while the study ran (resumed with a
    new interval) is read as its widest: every value drawn lies inside it. Other changes leave the parameter out."""
    import warnings

    import optuna

    done = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    widest, changed = {}, set()
    for trial in done:
        for name, drawn in trial.distributions.items():
            seen = widest.setdefault(name, drawn)
            if seen != drawn:
                union = _union(seen, drawn)
                if union is None:
                    changed.add(name)
                else:
                    widest[name] = union
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    try:
        shared = optuna.create_study(direction=study.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    with warnings.catch_warnings():  # Optuna 2 marks create_trial and add_trials experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for trial in done:
            kept = [name for name in trial.params if name not in changed]
            shared.add_trial(optuna.trial.create_trial(value=trial.value, params={n: trial.params[n] for n in kept},
                                                       distributions={n: widest[n] for n in kept}))  # fmt: skip
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(shared, evaluator=evaluator)


def _percent(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, int | float) else ""


def summarize(sweep_dir: Path, out: Path) -> Path:
    """Write search.md, search_history.png and importances.png into `out`; return search.md's path."""
    study, rows = load_study(sweep_dir), trial_rows(sweep_dir)
    done = [r for r in rows if r["status"] == "completed"]  # a pruned trial's best is not a finished trial's
    if not done:
        raise UserError(f"{sweep_dir}: no trial completed, nothing to summarize")
    best = max(done, key=lambda r: r["val_acc"])
    weights = importances(study)
    out.mkdir(parents=True, exist_ok=True)
    history_figure(done, best, out / "search_history.png")
    importances_figure(weights, out / "importances.png")
    keys = [k for k in best["params"] if len({r["params"].get(k) for r in rows}) > 1]  # what the search drew
    lines = [*_overview(sweep_dir, rows, done, best, keys), *_importance_table(weights), *_trial_table(rows, keys)]
    path = out / "search.md"
    path.write_text("\n".join(lines) + "\n")
    write_trials_csv(rows, keys, out / "trials.csv")
    return path


def write_trials_csv(rows: list[dict], keys: list[str], path: Path) -> None:
    """Every trial in job order: the values it drew (as its job received them), status, epochs trained, best val
    acc and its epoch, test acc, final train acc, wall seconds, fused group size. Accuracies as fractions."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["job", *keys, "status", "epochs_trained", "best_epoch", "best_val_acc", "test_acc",
                         "final_train_acc", "wall_s", "fused_members"])  # fmt: skip
        for r in rows:
            best_epoch = r["metrics"].get("best_epoch")
            writer.writerow([r["job"], *(r["params"].get(k, "") for k in keys), r["status"], r["epochs"],
                             "" if best_epoch is None else best_epoch, *(_blank(r[k]) for k in
                             ("val_acc", "test_acc", "train_acc", "wall_s")), r["group"]])  # fmt: skip


def _blank(value) -> object:
    return "" if value is None else value


def history_figure(done: list[dict], best: dict, path: Path) -> None:
    """Each completed trial's best validation accuracy by job number, and the best so far."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    jobs = [r["job"] for r in done]
    ax.plot(jobs, [100 * r["val_acc"] for r in done], "o", label="trial (best val acc)")
    running = [max(100 * r["val_acc"] for r in done[: i + 1]) for i in range(len(done))]
    ax.step(jobs, running, where="post", label="best so far")
    ax.set(xlabel="trial (job number)", ylabel="validation accuracy %", title="Optuna TPE search")
    ax.set_ylim(max(80, min(running) - 2), 100 * best["val_acc"] + 1)
    ax.legend(loc="lower right")
    save(fig, path)


def importances_figure(weights: dict[str, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(weights) + 1))
    names = list(weights)[::-1]
    ax.barh(names, [weights[n] for n in names])
    ax.set(xlabel="importance for val acc (Optuna, MDI)", title="What mattered")
    save(fig, path)


def _overview(sweep_dir: Path, rows: list[dict], done: list[dict], best: dict, keys: list[str]) -> list[str]:
    """How many trials ended how, the epochs pruning saved, the training time, and the best trial's values."""
    shared = [f"{k}={v}" for k, v in best["params"].items() if k not in keys]
    failed = [r for r in rows if r["status"] not in FINISHED]
    pruned, saved, planned = epochs_saved([r["metrics"] for r in rows])
    trained = [r for r in rows if r["status"] in FINISHED]
    # a fused group's wall time is shared by its members
    seconds = sum((r["wall_s"] or 0) / r["group"] for r in trained)
    return [
        f"# Optuna search: {sweep_dir}",
        "",
        f"{len(rows)} trials: {len(done)} completed, {pruned} pruned, {len(failed)} not finished "
        f"({', '.join(sorted({r['status'] for r in failed})) or 'none'}); "
        f"{saved} of the {planned} epochs planned were not trained (pruning). "
        f"{sum(r['group'] > 1 for r in done)} of the completed trained in fused groups. "
        f"Training time of the completed and pruned trials: {seconds / 60:.0f} min (a fused group's wall time split "
        "among its members).",
        "",
        f"**Best by validation accuracy:** job {best['job']}, val {_percent(best['val_acc'])} %, test "
        f"{_percent(best['test_acc'])} % (test read once, after the trial finished; not used to choose):",
        "",
        *(f"- `{k}={best['params'][k]}`" for k in keys),
        "",
        f"Every trial: `{' '.join(shared)}`.",
        "",
    ]


def _importance_table(weights: dict[str, float]) -> list[str]:
    return [
        "## Importance (mean decrease in impurity of a random forest over the completed trials, val acc)",
        "",
        "| parameter | importance |",
        "|---|---|",
        *(f"| `{name}` | {value:.3f} |" for name, value in weights.items()),
        "",
        "![history](search_history.png) ![importances](importances.png)",
        "",
    ]


def _trial_table(rows: list[dict], keys: list[str]) -> list[str]:
    """Every trial, best validation accuracy first, with the values it drew."""
    lines = [
        "## Trials, best validation accuracy first",
        "",
        f"| job | {' | '.join(keys)} | status | best val % | at epoch | test % | final train % | fused with |",
        f"|{'---|' * (len(keys) + 7)}",
    ]
    for r in sorted(rows, key=lambda r: -(r["val_acc"] or 0)):
        values = " | ".join(_short(r["params"].get(k, "")) for k in keys)
        lines.append(f"| {r['job']} | {values} | {r['status']} | {_percent(r['val_acc'])} | {r['best_epoch']} | "
                     f"{_percent(r['test_acc'])} | {_percent(r['train_acc'])} | {r['group']} |")  # fmt: skip
    return lines


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() else f"{number:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, help="where to write search.md and the figures (default: the sweep)")
    args = parser.parse_args()
    try:
        print(f"wrote {summarize(args.sweep_dir, args.out or args.sweep_dir)}")
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
