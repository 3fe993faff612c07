"""One-off GPU diagnosis: GPU time per training step by setting, and which kernels take it."""
import sys, time
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from fashion_lenet.models import LeNet5
from fashion_lenet.train_step import TrainStep

dev = torch.device("cuda")
x_all = torch.randn(48000, 1, 28, 28, device=dev)
y_all = torch.randint(0, 10, (48000,), device=dev)

def setup(det, bench, norm="none", fused=True, channels_last=False):
    torch.use_deterministic_algorithms(det, warn_only=True)
    torch.backends.cudnn.benchmark = bench
    torch.manual_seed(0)
    net = LeNet5(norm=norm).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused)
    step = TrainStep(net, lambda loss: loss.backward(), dev, capture=True)
    def run(n):
        for batch in torch.randperm(48000, device=dev)[: n * 64].view(-1, 64):
            step(x_all[batch], y_all[batch])
            opt.step()
    return run

def epoch_s(label, **kw):
    run = setup(**kw)
    run(20)
    torch.cuda.synchronize()
    t = time.perf_counter(); run(750); torch.cuda.synchronize()
    s = time.perf_counter() - t
    # GPU busy time per step from the profiler (kernels + memcpy/memset), graphs replayed
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        run(100); torch.cuda.synchronize()
    gpu_us = sum(e.self_device_time_total for e in p.key_averages()) / 100
    print(f"{label:45s} one process: {s:.3f} s/750 steps; GPU busy {gpu_us:.0f} us/step", flush=True)

for label, kw in [("deterministic (project default)", dict(det=True, bench=False)),
                  ("not deterministic", dict(det=False, bench=False)),
                  ("not deterministic + cudnn.benchmark", dict(det=False, bench=True)),
                  ("deterministic + cudnn.benchmark", dict(det=True, bench=True)),
                  ("deterministic, channels_last", dict(det=True, bench=False, channels_last=True)),
                  ("deterministic, batch norm pre", dict(det=True, bench=False, norm="pre"))]:
    epoch_s(label, **kw)

for det in (True, False):
    torch.use_deterministic_algorithms(det, warn_only=True)
    torch.backends.cudnn.benchmark = False
    net = LeNet5().to(dev); opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    step = TrainStep(net, lambda loss: loss.backward(), dev, capture=False)
    for batch in torch.randperm(48000, device=dev)[: 20 * 64].view(-1, 64):
        step(x_all[batch], y_all[batch]); opt.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for batch in torch.randperm(48000, device=dev)[: 100 * 64].view(-1, 64):
            step(x_all[batch], y_all[batch]); opt.step()
        torch.cuda.synchronize()
    print(f"\neager kernels, deterministic={det}, 100 steps")
    print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90))
