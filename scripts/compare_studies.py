"""Per technique and learning rate: does study B's mean test accuracy lie within study A's seed spread?

    python scripts/compare_studies.py results/seed_study/jobs.csv results/seed_study_fused/jobs.csv > comparison.md

Reads two reports' jobs.csv (python -m fashion_lenet.analysis.report writes them); prints a markdown table.
"""

import csv
import statistics
import sys
from collections import defaultdict


def test_accuracies(path: str) -> dict[tuple[str, float], list[float]]:
    by_setting = defaultdict(list)
    with open(path) as handle:
        for row in csv.DictReader(handle):
            if row["status"] == "completed":
                by_setting[(row["technique"], float(row["lr"]))].append(100 * float(row["test_acc"]))
    return by_setting


def main(reference: str, other: str) -> None:
    a, b = test_accuracies(reference), test_accuracies(other)
    print(f"Test accuracy (%) by technique and lr: A = `{reference}`, B = `{other}`; mean ± sample std over seeds.\n")
    print("| technique | lr | A mean ± std | A min – max | B mean ± std | B − A | B's mean within A's spread |")
    print("|---|---|---|---|---|---|---|")
    for technique, lr in sorted(a, key=lambda key: (key[0], -key[1])):
        ref, new = a[(technique, lr)], b.get((technique, lr), [])
        if len(ref) < 2 or len(new) < 2:
            continue
        inside = min(ref) <= statistics.fmean(new) <= max(ref)
        print(f"| {technique} | {lr:g} | {statistics.fmean(ref):.2f} ± {statistics.stdev(ref):.2f} | "
              f"{min(ref):.2f} – {max(ref):.2f} | {statistics.fmean(new):.2f} ± {statistics.stdev(new):.2f} | "
              f"{statistics.fmean(new) - statistics.fmean(ref):+.2f} | {'yes' if inside else 'no'} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    main(*sys.argv[1:])
