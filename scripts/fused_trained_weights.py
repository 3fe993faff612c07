"""Does a fused step get slower as the members train? Solo and fused steps from fresh and from trained weights,
interleaved in one process (docs/performance.md, "Over a whole run").

    python scripts/fused_trained_weights.py --members 12 --epochs 3 --repeats 3

Trains `members` baseline LeNet-5s fused for `epochs` epochs of 750 random batches of 64, then times
`steps` steps of each of: fused from fresh weights, fused from the trained ones, solo (member 0) fresh and
trained, with Adam(fused=True) as conf/optim/adam.yaml, `repeats` rounds, with and without flushing denormals.
Prints ms per member-step.
"""

import argparse
import time

import torch
from torch.nn import functional as F

from fashion_lenet.sweep.config import PROJECT_ROOT
from fashion_lenet.training.data import load_images
from fashion_lenet.training.fused import FusedLeNet5, MemberParameters
from fashion_lenet.training.models import LeNet5

BATCH = 64


def _nets(n: int, weights: list[dict] | None) -> list[LeNet5]:
    nets = []
    for seed in range(n):
        torch.manual_seed(seed)
        nets.append(LeNet5())
        if weights:
            nets[-1].load_state_dict(weights[seed])
    return nets


def _fused(nets: list[LeNet5]):
    stack = FusedLeNet5(len(nets))
    for n, net in enumerate(nets):
        stack.load_member(n, net.state_dict())
    members = MemberParameters(stack)
    optimizer = torch.optim.Adam([{"params": params} for params in members.members], lr=1e-3, fused=True)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:  # [N, B, 1, 28, 28], [N, B]
        stack.zero_grad(set_to_none=False)
        losses = F.cross_entropy(stack(images).flatten(0, 1), labels.flatten(), reduction="none")
        losses.view_as(labels).mean(1).sum().backward()
        members.point_gradients()
        optimizer.step()

    step.stack = stack  # the members' trained weights live here
    return step


def _solo(net: LeNet5):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:  # member 0's batch
        optimizer.zero_grad()
        F.cross_entropy(net(images[0]), labels[0]).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = load_images(PROJECT_ROOT / "data", train=True)
    generator = torch.Generator().manual_seed(0)

    def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        picks = (torch.randint(0, len(images), (args.members, BATCH), generator=generator) for _ in range(count))
        return [(images[i], labels[i]) for i in picks]

    nets = _nets(args.members, None)
    train = _fused(nets)
    for epoch in range(args.epochs):
        start = time.perf_counter()
        for batch in batches(750):
            train(*batch)
        print(f"training epoch {epoch}: {(time.perf_counter() - start) / 750 / args.members * 1e3:.2f} ms per "
              "member-step", flush=True)  # fmt: skip
    trained = [train.stack.member_state_dict(n) for n in range(args.members)]

    timed = batches(args.steps)
    kinds = {"fused fresh": (_fused, None, args.members), "fused trained": (_fused, trained, args.members),
             "solo fresh": (_solo, None, 1), "solo trained": (_solo, trained, 1)}  # fmt: skip
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        for repeat in range(args.repeats):
            cells = []
            for name, (build, weights, per) in kinds.items():
                nets = _nets(args.members, weights)
                step = build(nets) if build is _fused else build(nets[0])
                for batch in timed[:10]:  # warm-up; Adam's state exists from here on
                    step(*batch)
                start = time.perf_counter()
                for batch in timed:
                    step(*batch)
                cells.append(f"{name} {(time.perf_counter() - start) / len(timed) / per * 1e3:.2f}")
            print(f"flush_denormal={flush} round {repeat}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
