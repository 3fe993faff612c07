"""LeNet-5 regularization study on Fashion-MNIST (PyTorch Lightning + Hydra)."""
