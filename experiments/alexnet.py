"""AlexNet (Krizhevsky et al. 2012): the lecture's LRN version or torchvision's.

  python -m experiments.alexnet --flagfile=experiments/configs/alexnet_tf_flowers.flags
"""
from experiments import common

DEFAULTS = dict(
    model='alexnet', dataset='tf_flowers', batch_size=128, num_epochs=90,
    optimizer='momentum', learning_rate=0.01, schedule='step', decay_epochs=['30', '60'],
    weight_decay=5e-4)

if __name__ == '__main__':
  common.main(DEFAULTS)
