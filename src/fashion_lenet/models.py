"""LeNet-5 for 28×28 Fashion-MNIST as in the seed's section 4.1, with its regularization variants."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from fashion_lenet.batchnorm import ManualBatchNorm2d

NORM_CHOICES = ("none", "pre", "post")
BN_IMPLS = {"torch": nn.BatchNorm2d, "manual": ManualBatchNorm2d}


class LeNet5(nn.Module):
    """conv5×5(1→6) → pool → conv5×5(6→16) → pool → FC 256→120→84→10, no padding, ReLU, max-pool.

    norm: "pre" puts BatchNorm between each conv and its ReLU, "post" after the ReLU, "none" leaves it out.
    dropout_layers: 0, 1 (after FC2, the seed's choice) or 2 (after FC1 and FC2), each with dropout_p.
    """

    def __init__(
        self,
        norm: Literal["none", "pre", "post"] = "none",
        dropout_layers: int = 0,
        dropout_p: float = 0.3,
        bn_impl: Literal["torch", "manual"] = "torch",
        num_classes: int = 10,
    ):
        super().__init__()
        self.features = nn.Sequential(
            *self._conv_block(1, 6, norm, BN_IMPLS[bn_impl]),
            *self._conv_block(6, 16, norm, BN_IMPLS[bn_impl]),
            nn.Flatten(),
        )
        fc1, fc2 = [nn.Linear(256, 120), nn.ReLU()], [nn.Linear(120, 84), nn.ReLU()]
        if dropout_layers >= 2:
            fc1.append(nn.Dropout(dropout_p))
        if dropout_layers >= 1:
            fc2.append(nn.Dropout(dropout_p))
        self.classifier = nn.Sequential(*fc1, *fc2, nn.Linear(84, num_classes))

    @staticmethod
    def _conv_block(c_in: int, c_out: int, norm: str, batch_norm: type[nn.Module]) -> list[nn.Module]:
        layers = {
            "none": [nn.ReLU()],
            "pre": [batch_norm(c_out), nn.ReLU()],
            "post": [nn.ReLU(), batch_norm(c_out)],
        }[norm]
        return [nn.Conv2d(c_in, c_out, kernel_size=5), *layers, nn.MaxPool2d(2)]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
