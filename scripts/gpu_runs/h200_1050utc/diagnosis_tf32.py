"""GPU busy time per project training step (graph + fused Adam), by determinism and TF32 settings."""
import time
import torch
from torch.profiler import ProfilerActivity, profile
from fashion_lenet.models import LeNet5
from fashion_lenet.train_step import TrainStep

dev = torch.device("cuda")
x_all = torch.randn(48000, 1, 28, 28, device=dev)
y_all = torch.randint(0, 10, (48000,), device=dev)

def measure(label, det, matmul_tf32, cudnn_tf32):
    torch.use_deterministic_algorithms(det, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    torch.manual_seed(0)
    net = LeNet5().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    step = TrainStep(net, lambda loss: loss.backward(), dev, capture=True)
    def run(n):
        for batch in torch.randperm(48000, device=dev)[: n * 64].view(-1, 64):
            step(x_all[batch], y_all[batch]); opt.step()
    run(20); torch.cuda.synchronize()
    t = time.perf_counter(); run(750); torch.cuda.synchronize(); s = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        run(100); torch.cuda.synchronize()
    gpu_us = sum(e.self_device_time_total for e in p.key_averages()) / 100
    top = sorted(p.key_averages(), key=lambda e: -e.self_device_time_total)[:3]
    tops = "; ".join(f"{e.key[:50]} {e.self_device_time_total / 100:.0f}" for e in top)
    print(f"{label:40s} {s:.3f} s/750 steps; GPU busy {gpu_us:.0f} us/step; top: {tops}", flush=True)

for det in (True, False):
    for mm, cd in ((False, True), (True, True), (False, False), (True, False)):
        measure(f"det={det} matmul_tf32={mm} cudnn_tf32={cd}", det, mm, cd)
