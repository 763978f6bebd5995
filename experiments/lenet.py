"""LeNet-5 (LeCun et al. 1998) on Fashion-MNIST, offline, in a few minutes on a CPU.

  python -m experiments.lenet                       # the default run (make demo)
  python -m experiments.lenet --flagfile=experiments/configs/lenet_classic_mnist.flags

With no --flagfile the program reads its default flagfile, experiments/configs/
lenet_fashion_mnist.flags: LeNet-5 with ReLU and max-pooling, Adam, 10 epochs; expect test
accuracy ≈ 0.90. Flags on the command line override it; a --flagfile given replaces it.
28×28 images are zero-padded to LeNet's 32×32 input.
"""
from experiments import common

# The default run, `make demo`: its settings and expected result are in the file.
DEFAULT_FLAGFILE = 'lenet_fashion_mnist.flags'

if __name__ == '__main__':
  common.main(default_flagfile=DEFAULT_FLAGFILE)
