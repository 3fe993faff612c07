"""Which members of a fused group compute bit for bit the same gradients after the group shrinks.

One forward and backward of a FusedLeNet5 (BatchNorm after ReLU, as lenet5_refine) on random batches, first with
every member, then with only the survivors in a smaller group: for each survivor, whether each parameter's gradient
is bit for bit the same. Used for docs/performance.md ("Groups that shrink").

    python scripts/shrink_rounding.py
"""

import torch
from torch.nn import functional as F

from fashion_lenet.training.fused import FusedLeNet5


def gradients(net: FusedLeNet5, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    net.zero_grad()
    losses = F.cross_entropy(net(images).flatten(0, 1), labels.flatten(), reduction="none")
    losses.view_as(labels).mean(1).sum().backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def main() -> None:
    torch.manual_seed(0)
    for members, survivors in [(8, [0, 1, 4, 5, 6, 7]), (6, [2, 3, 4, 5]), (4, [2]), (3, [0, 2])]:
        whole = FusedLeNet5(members, norm="post")
        images, labels = torch.randn(members, 64, 1, 28, 28), torch.randint(0, 10, (members, 64))
        reference = gradients(whole, images, labels)
        shrunk = FusedLeNet5(len(survivors), norm="post", stacked=True)
        for slot, member in enumerate(survivors):
            shrunk.load_member(slot, whole.member_state_dict(member))
        after = gradients(shrunk, images[survivors], labels[survivors])
        print(f"{members} members -> {len(survivors)} {survivors}:")
        for slot, member in enumerate(survivors):
            differ = [name for name in after if not torch.equal(after[name][slot], reference[name][member])]
            print(f"  member {member} (slot {slot}): " + (f"differs in {', '.join(differ)}" if differ else "bit for bit"))


if __name__ == "__main__":
    main()
