#!/usr/bin/env bash
# The whole GPU check of docs/performance.md in one go (a few minutes on one H100/H200):
# the CUDA-graph tests, the epoch bench (naive vs project vs floors), the 12-job study run side by side with
# joblib (timed), and its report. Everything lands in reports/gpu_check/. Run by `make gpu-check`;
# PY=python3 scripts/gpu_check.sh where the packages are installed without the project's .venv.
set -u -o pipefail
PY=${PY:-.venv/bin/python}
OUT=reports/gpu_check
mkdir -p $OUT
status=0
$PY -m pytest -q tests/test_train_step.py 2>&1 | tee $OUT/tests.txt || status=1
$PY -m fashion_lenet.bench --json --epochs 4 --variant cuda_graph=false --variant trainer.deterministic=false \
    --variant "trainer.deterministic=false ++trainer.benchmark=true" | tee $OUT/bench.json || status=1
(TIMEFORMAT="python + import train.py: %R s"; time $PY -c "import train") 2>&1 | tee $OUT/import_time.txt
start=$(date +%s%N)
$PY train.py -m experiment=seed_study seed=0 hydra/launcher=joblib hydra.launcher.n_jobs=12 \
    callbacks.progress_bar.refresh_rate=0 hydra.sweep.dir=$OUT/sweep || status=1
awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "12 jobs with joblib: %.1f s wall\n", ns / 1e9 }' \
    | tee $OUT/sweep_wall.txt
$PY -m fashion_lenet.report $OUT/sweep --out $OUT/report || status=1
exit $status
