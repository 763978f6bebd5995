"""ResNets (He et al. 2016): ImageNet ResNet-18…152 and CIFAR ResNet-20…110.

  python -m experiments.resnet --flagfile=experiments/configs/resnet20_cifar10.flags
  python -m experiments.resnet --flagfile=experiments/configs/resnet50_imagenet.flags
"""
from experiments import common

if __name__ == '__main__':
  common.main()
