"""trials.csv for a search whose job folders were not kept, rebuilt from the trial table of its search.md.

    python scripts/search_md_to_csv.py results/lenet5_search/search.md

Writes trials.csv beside it, with the columns `python -m fashion_lenet.analysis.search` writes for a search it can
read (fashion_lenet.analysis.search.write_trials_csv), from what search.md shows: the drawn values rounded to 3
significant digits and the accuracies to 0.01 points, as printed there; wall seconds are not in search.md (blank).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fashion_lenet.analysis.search import write_trials_csv

AFTER_PARAMS = ["status", "best val %", "at epoch", "test %", "final train %", "fused with"]


def _fraction(percent: str) -> float | None:
    return round(float(percent) / 100, 6) if percent else None


def trial_rows(search_md: Path) -> tuple[list[dict], list[str]]:
    """search.md's trial table (job order) as write_trials_csv's rows, and the drawn parameters' names."""
    lines = search_md.read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("| job |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    keys = header[1 : header.index("status")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        best, epochs = cells["at epoch"].split("/") if cells["at epoch"] else ("", "")
        rows.append({"job": int(cells["job"]), "params": {k: cells[k] for k in keys}, "status": cells["status"],
                     "epochs": int(epochs) if epochs else "", "metrics": {"best_epoch": int(best) - 1 if best else None},
                     "val_acc": _fraction(cells["best val %"]), "test_acc": _fraction(cells["test %"]),
                     "train_acc": _fraction(cells["final train %"]), "wall_s": None,
                     "group": int(cells["fused with"])})  # fmt: skip
    return sorted(rows, key=lambda row: row["job"]), keys


if __name__ == "__main__":
    source = Path(sys.argv[1])
    rows, keys = trial_rows(source)
    write_trials_csv(rows, keys, source.with_name("trials.csv"))
    print(f"wrote {source.with_name('trials.csv')}: {len(rows)} trials")
