"""ResNets (He et al. 2016): ImageNet ResNet-18…152 and CIFAR ResNet-20…110.

  python -m experiments.resnet --flagfile=experiments/configs/resnet20_cifar10.flags
  python -m experiments.resnet --flagfile=experiments/configs/resnet50_imagenet.flags
"""
from experiments import common

DEFAULTS = dict(
    model='resnet20', dataset='cifar10', batch_size=128, num_epochs=182,
    optimizer='momentum', learning_rate=0.1, schedule='step', decay_epochs=['91', '136'],
    weight_decay=1e-4)

if __name__ == '__main__':
  common.main(DEFAULTS)
