"""LeNet-5 (LeCun et al. 1998) on Fashion-MNIST, offline, in a few minutes on a CPU.

  python -m experiments.lenet                       # the embedded default run
  python -m experiments.lenet --flagfile=experiments/configs/lenet_fashion_mnist.flags

28×28 images are zero-padded to LeNet's 32×32 input. Expect test accuracy ≈ 0.90.
"""
from experiments import common

DEFAULTS = dict(
    model='lenet5', model_kwargs='activation=relu,pooling=max', dataset='fashion_mnist',
    batch_size=128, num_epochs=10, optimizer='adam', learning_rate=2e-3, schedule='cosine',
    log_every_steps=100)

if __name__ == '__main__':
  common.main(DEFAULTS)
