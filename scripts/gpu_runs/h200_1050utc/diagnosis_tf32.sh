PY=${PY:-python3}; OUT=${OUT:-/tmp/out}/gpu_check; SWEEP_ARGS=${SWEEP_ARGS:-}; status=0; mkdir -p $OUT
eval "$(sed -n '/^sweep() {/,/^}/p' scripts/gpu_check.sh)"
/usr/bin/time -f "launcher import train: %e s" python3 -c "import train"
timeout 60 python3 .gpu/diag2.py
sweep sweep_launcher_fix 12 > $OUT/sweep1.log 2>&1
sweep sweep_nondet_6 6 trainer.deterministic=false > $OUT/sweep2.log 2>&1
cat $OUT/sweep_wall.txt
rm -rf $OUT/sweep_launcher_fix/*/checkpoints $OUT/sweep_nondet_6/*/checkpoints $OUT/*/*/tensorboard
