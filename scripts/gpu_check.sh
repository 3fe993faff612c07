#!/usr/bin/env bash
# The whole GPU check of docs/performance.md in one go (about 8 minutes on one H100/H200 before step 1's fused
# CUDA-graph tests were added; their six short sweeps are not timed yet), most decisive first, so that a run cut
# short by a time limit has already measured what matters most:
#   1. the CUDA-graph tests: "no host sync per training step" (deterministic on and off), runs that repeat,
#      the first replay's dropout mask with a lagging capture stream (and that test against a TrainStep
#      without the fix, where it must fail); then a fused group's (tests/test_fused.py -k cuda_graph,
#      hydra.launcher.cuda_graph=true): its replay follows its eager run over epochs, and repeats to the last digit;
#   2. fused sweeps (issue 18): the 36-job seed study with hydra/launcher=fused, wall time start-up included
#      (target: <= 20 s on one H200), and model-steps per second fused vs one job at a time, N = 1, 4, 12, 36;
#   3. the 12-job study with joblib, timed four ways: the defaults 12 at once (joblib's default on a 16-core
#      machine) and 4 at once; the fastest settings (no deterministic kernels, TF32 matmuls) 6 at once, the
#      recipe of docs/performance.md; TF32 matmuls alone 4 at once; each with when its jobs started and ended,
#      so start-up and training separate; the two default sweeps (same deterministic jobs) must give every job
#      the same curves;
#   4. the same dropout run in 4 processes at once (CUDA graph), then in 2 (eager): do they repeat across
#      processes, as the in-process test says they do within one?
#   5. import times: the launcher's (`import train`) and a worker's (train.py's imports plus Lightning's);
#   6. the epoch bench (naive vs project vs floors, with variants, the last repeating the defaults);
#   7. the report of the first sweep.
# Everything lands in reports/gpu_check/. Run by `make gpu-check`; PY=python3 scripts/gpu_check.sh where the
# packages are installed without the project's .venv. A dry run on a CPU (tests skip, tiny jobs):
#   BENCH_ARGS="--epochs 2 --limit-batches 5" SWEEP_ARGS="trainer.max_epochs=1 ++trainer.limit_train_batches=2" \
#     REPEAT_ARGS="trainer.max_epochs=1 ++trainer.limit_train_batches=2 threads=1" FUSED_BENCH_ARGS="--limit-batches 3" \
#     scripts/gpu_check.sh
set -u -o pipefail
PY=${PY:-.venv/bin/python}
BENCH_ARGS=${BENCH_ARGS:---epochs 4}
SWEEP_ARGS=${SWEEP_ARGS:-}
REPEAT_ARGS=${REPEAT_ARGS:-trainer.max_epochs=2 ++trainer.limit_train_batches=200}
OUT=reports/gpu_check
rm -rf $OUT && mkdir -p $OUT
status=0

$PY -m pytest -q tests/test_train_step.py 2>&1 | tee $OUT/tests.txt || status=1
# The lag test must fail against a TrainStep without the wait after capture, or it does not force the race.
sed '/wait_stream(capture_stream)/d' src/fashion_lenet/training/train_step.py > $OUT/train_step_without_the_wait.py
$PY - "$OUT/train_step_without_the_wait.py" <<'EOF' 2>&1 | tail -4 | tee $OUT/lag_test_without_the_wait.txt || status=1
import importlib.util, sys
import pytest, torch

spec = importlib.util.spec_from_file_location("fashion_lenet.training.train_step", sys.argv[1])
sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
code = pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_train_step.py", "-k", "capture_stream_lags"])
if not torch.cuda.is_available():
    print("lag test without the wait: skipped (no GPU)")
elif code == pytest.ExitCode.TESTS_FAILED:
    print("lag test without the wait: failed, as it must")
else:
    sys.exit(f"lag test without the wait: exit code {code}; it should have failed")
EOF
$PY -m pytest -q tests/test_fused.py -k cuda_graph 2>&1 | tee $OUT/fused_cuda_graph_tests.txt || status=1

# repeat NAME COPIES [OVERRIDES...]: the same dropout run in COPIES processes at once; are their numbers equal?
repeat() {
    local name=$1 copies=$2 i
    shift 2
    for i in $(seq "$copies"); do
        # shellcheck disable=SC2086  # REPEAT_ARGS is a list of overrides
        $PY train.py model=dropout callbacks.progress_bar.refresh_rate=0 hydra.run.dir=$OUT/$name/$i "$@" \
            $REPEAT_ARGS >/dev/null 2>&1 &
    done
    wait
    $PY - "$OUT/$name" "$copies" "$name${*:+ $*}" <<'EOF' | tee -a $OUT/repeat.txt || status=1
import json, sys
from pathlib import Path

runs = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*/metrics.json"))]
if len(runs) < int(sys.argv[2]):
    sys.exit(f"{sys.argv[3]}: only {len(runs)} of {sys.argv[2]} runs wrote metrics.json; see {sys.argv[1]}")
curves = {str([(row["train_loss"], row["val_acc"]) for row in run["history"]]) for run in runs}
verdict = "identical" if len(curves) == 1 else f"{len(curves)} DIFFERENT curves"
print(f"{sys.argv[3]}: {len(runs)} processes at once, {verdict}; final val acc",
      [run["history"][-1]["val_acc"] for run in runs])
EOF
}

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
    cp "$OUT/$name/summary.md" "$OUT/${name}_summary.md" 2>/dev/null  # $OUT's deep folders may not come back
}
start=$(date +%s.%N)
# shellcheck disable=SC2086
$PY train.py -m experiment=seed_study hydra/launcher=fused callbacks.progress_bar.refresh_rate=0 \
    hydra.sweep.dir=$OUT/seed_study_fused $SWEEP_ARGS > $OUT/seed_study_fused.log 2>&1 || status=1
echo "36-job seed study, hydra/launcher=fused: $($PY -c "import time; print(f'{time.time() - $start:.1f}')") s wall" \
    | tee $OUT/fused.txt
cp "$OUT/seed_study_fused/summary.md" "$OUT/seed_study_fused_summary.md" 2>/dev/null
# shellcheck disable=SC2086
$PY -m fashion_lenet.analysis.bench --json --fused 1,4,12,36 ${FUSED_BENCH_ARGS:-} | tee $OUT/bench_fused.json || status=1

sweep sweep 12
sweep sweep_4_at_once 4
# The two sweeps above ran the same deterministic jobs, 12 and 4 at once: every job's curves must be equal.
$PY - $OUT/sweep $OUT/sweep_4_at_once <<'EOF' | tee -a $OUT/repeat.txt || status=1
import json, sys
from pathlib import Path

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc")  # not the rows' timings

def curves(sweep):
    runs = {p.parent.name: json.loads(p.read_text()) for p in Path(sweep).glob("*/metrics.json")}
    return {job: (run["technique"], run["lr"], [[row.get(k) for k in KEYS] for row in run["history"]])
            for job, run in runs.items()}

first, second = curves(sys.argv[1]), curves(sys.argv[2])
moved = sorted(job for job in first if first[job] != second.get(job))
print(f"defaults, 12 vs 4 at once: {len(first) - len(moved)} of {len(first)} jobs identical"
      + "".join(f"; job {job} ({first[job][0]}, lr {first[job][1]}) differs" for job in moved))
sys.exit(bool(moved) or not first)
EOF
sweep sweep_fast_6_at_once 6 trainer.deterministic=false matmul_precision=high
sweep sweep_tf32_4_at_once 4 matmul_precision=high
repeat repeat_graph 4
repeat repeat_eager 2 cuda_graph=false

{
    TIMEFORMAT="launcher (python -c 'import train'): %R s"; time $PY -c "import train"
    TIMEFORMAT="worker (train.py's imports + Lightning, torchmetrics, the module): %R s"
    time $PY -c "import train, lightning.pytorch, fashion_lenet.training.module, fashion_lenet.training.callbacks"
} 2>&1 | tee $OUT/import_time.txt
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
$PY -m fashion_lenet.analysis.bench --json $BENCH_ARGS --variant cuda_graph=false --variant matmul_precision=high \
    --variant "trainer.deterministic=false matmul_precision=high" \
    --variant trainer.deterministic=warn | tee $OUT/bench.json || status=1  # the default again: any order effect?

$PY -m fashion_lenet.analysis.report $OUT/sweep --out $OUT/report || status=1
exit $status
