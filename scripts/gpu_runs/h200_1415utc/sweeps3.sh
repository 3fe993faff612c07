# 2026-11-27, run 14:29-14:34 UTC: the 12-job study again with the fastest settings, then in an environment without
# transformers (the device image has it; the project does not install it). Run from the repository root.
PY=python3; OUT=reports/gpu_check; SWEEP_ARGS=${SWEEP_ARGS:-}; status=0; rm -rf $OUT; mkdir -p $OUT
eval "$(sed -n '/^sweep() {/,/^}/p' scripts/gpu_check.sh)"
FAST="trainer.deterministic=false matmul_precision=high"
imports() {
    local TIMEFORMAT="$1: worker imports (train.py's + Lightning, torchmetrics, the module) %R s"
    { time $PY -c "import train, lightning.pytorch, fashion_lenet.module, fashion_lenet.callbacks"; } 2>>$OUT/import_time.txt
}
imports "image as is"
sweep fast_4_at_once 4 $FAST > $OUT/sweep1.log 2>&1
SP=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p /tmp/hidden && mv "$SP"/transformers "$SP"/transformers-*.dist-info /tmp/hidden/ 2>&1 | tee $OUT/hide.txt
$PY -c "import importlib.util as u; print('transformers after hiding it:', u.find_spec('transformers'))" | tee -a $OUT/hide.txt
imports "without transformers"
sweep fast_4_at_once_without_transformers 4 $FAST > $OUT/sweep2.log 2>&1
sweep fast_6_at_once_without_transformers 6 $FAST > $OUT/sweep3.log 2>&1
sweep defaults_4_at_once_without_transformers 4 > $OUT/sweep4.log 2>&1
cat $OUT/import_time.txt
