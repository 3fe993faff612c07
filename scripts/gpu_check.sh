#!/usr/bin/env bash
# The whole GPU check of docs/performance.md in one go (about 7 minutes on one H100/H200):
#   1. the CUDA-graph tests: "no host sync per training step" (deterministic on and off), runs that repeat;
#   2. the epoch bench (naive vs project vs floors, with variants, the last repeating the defaults);
#   3. import times: the launcher's (`import train`) and a worker's (train.py's imports plus Lightning's);
#   4. the 12-job study with joblib, timed three ways: 12 at once (defaults), 6 at once, and 6 at once with the
#      fastest settings measured per step (no deterministic kernels, TF32 matmuls); each with when its jobs
#      started and ended, so start-up and training separate;
#   5. the report of the first sweep.
# Everything lands in reports/gpu_check/. Run by `make gpu-check`; PY=python3 scripts/gpu_check.sh where the
# packages are installed without the project's .venv. A dry run on a CPU (tests skip, tiny jobs):
#   BENCH_ARGS="--epochs 2 --limit-batches 5" SWEEP_ARGS="trainer.max_epochs=1 ++trainer.limit_train_batches=2" \
#     scripts/gpu_check.sh
set -u -o pipefail
PY=${PY:-.venv/bin/python}
BENCH_ARGS=${BENCH_ARGS:---epochs 4}
SWEEP_ARGS=${SWEEP_ARGS:-}
OUT=reports/gpu_check
rm -rf $OUT && mkdir -p $OUT
status=0

$PY -m pytest -q tests/test_train_step.py 2>&1 | tee $OUT/tests.txt || status=1
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
$PY -m fashion_lenet.bench --json $BENCH_ARGS --variant cuda_graph=false --variant trainer.deterministic=false \
    --variant "trainer.deterministic=false ++trainer.benchmark=true" --variant matmul_precision=high \
    --variant trainer.deterministic=warn | tee $OUT/bench.json || status=1  # the default again: any order effect?
{
    TIMEFORMAT="launcher (python -c 'import train'): %R s"; time $PY -c "import train"
    TIMEFORMAT="worker (train.py's imports + Lightning, torchmetrics, the module): %R s"
    time $PY -c "import train, lightning.pytorch, fashion_lenet.module, fashion_lenet.callbacks"
} 2>&1 | tee $OUT/import_time.txt

# sweep NAME N_JOBS [OVERRIDES...]: the 12-job study into $OUT/NAME, its timeline appended to sweep_wall.txt
sweep() {
    local name=$1 n_jobs=$2 start
    shift 2
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    $PY train.py -m experiment=seed_study seed=0 hydra/launcher=joblib hydra.launcher.n_jobs="$n_jobs" \
        callbacks.progress_bar.refresh_rate=0 hydra.sweep.dir=$OUT/$name "$@" $SWEEP_ARGS || status=1
    $PY - "$OUT/$name" "$start" "$name, n_jobs=$n_jobs${*:+ $*}" <<'EOF' | tee -a $OUT/sweep_wall.txt
import sys, time
from datetime import datetime
from pathlib import Path

sweep, start, label = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def stamp(line):  # "[2026-11-27 09:55:15,522][...": local time, as the logs write it
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp() - start
logs = [[line for line in p.read_text().splitlines() if line.startswith("[20")] for p in sweep.glob("*/train.log")]
logs = [lines for lines in logs if lines]
if not logs:
    sys.exit(f"{label}: no job logs in {sweep}")
first, last = [stamp(lines[0]) for lines in logs], [stamp(lines[-1]) for lines in logs]
print(f"{label}: {time.time() - start:.1f} s wall; {len(logs)} jobs started at +{min(first):.1f} to "
      f"+{max(first):.1f} s, ended at +{min(last):.1f} to +{max(last):.1f} s")
EOF
}
sweep sweep 12
sweep sweep_6_at_once 6
sweep sweep_fast_6_at_once 6 trainer.deterministic=false matmul_precision=high

$PY -m fashion_lenet.report $OUT/sweep --out $OUT/report || status=1
exit $status
