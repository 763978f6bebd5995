"""AlexNet (Krizhevsky et al. 2012): the lecture's LRN version or torchvision's.

  python -m experiments.alexnet --flagfile=experiments/configs/alexnet_tf_flowers.flags
"""
from experiments import common

if __name__ == '__main__':
  common.main()
