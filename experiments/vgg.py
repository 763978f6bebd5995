"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), ImageNet head or small-image head.

  python -m experiments.vgg --flagfile=experiments/configs/vgg16_cifar10.flags
"""
from experiments import common

if __name__ == '__main__':
  common.main()
