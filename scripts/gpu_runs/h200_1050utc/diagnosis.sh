set -x
O=$OUT
python3 -m pytest -q tests/test_train_step.py 2>&1 | tail -3
for i in 1 2; do /usr/bin/time -f "worker import wall %e s" python3 -X importtime -c "import train, lightning.pytorch, fashion_lenet.module, fashion_lenet.callbacks" 2> $O/importtime_$i.txt; tail -1 $O/importtime_$i.txt; done
sort -t'|' -k2 -n -r $O/importtime_2.txt | head -40
python3 -c "import time; t=time.time(); import torch; a=time.time(); torch.zeros(1,device='cuda'); print(f'import torch {a-t:.2f} s, cuda init {time.time()-a:.2f} s')"
start=$(date +%s.%N); for i in $(seq 12); do python3 -c "import time; t=time.time(); import torch; a=time.time(); torch.zeros(1,device='cuda'); print(f'12 at once: import torch {a-t:.2f} s, cuda init {time.time()-a:.2f} s')" & done; wait; echo "12 at once wall $(echo "$(date +%s.%N) - $start" | bc) s"
python3 .gpu/diag.py
nproc; cat /proc/cpuinfo | grep "model name" | head -1; df -h /opt/torch | tail -1
