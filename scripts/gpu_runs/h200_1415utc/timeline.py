"""Per-job timeline of sweeps, from each job's train.log: python timeline.py SWEEP_DIR... (seconds from the
sweep's first log line: job start, fit start, fit end, job end)."""
import json
import sys
from datetime import datetime
from pathlib import Path


def stamp(line):
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


for sweep in map(Path, sys.argv[1:]):
    jobs = []
    for log in sorted(sweep.glob("*/train.log"), key=lambda p: int(p.parent.name)):
        lines = [line for line in log.read_text().splitlines() if line.startswith("[20")]
        fit_start = next(stamp(line) for line in lines if "LOCAL_RANK" in line)
        fit_end = next(stamp(line) for line in lines if "`Trainer.fit` stopped" in line)
        run = json.loads((log.parent / "metrics.json").read_text())
        jobs.append((log.parent.name, run["technique"], run["lr"], stamp(lines[0]), fit_start, fit_end, stamp(lines[-1])))
    zero = min(job[3] for job in jobs)
    print(f"{sweep.name} (first log line {datetime.fromtimestamp(zero):%H:%M:%S}):")
    for name, technique, lr, *times in jobs:
        print(f"  job {name:>2} {technique:<12} lr {lr:<6} start / fit / fit end / end: "
              + " / ".join(f"{t - zero:5.1f}" for t in times))
