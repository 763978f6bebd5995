"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), ImageNet head or small-image head.

  python -m experiments.vgg --flagfile=experiments/configs/vgg16_cifar10.flags
"""
from experiments import common

DEFAULTS = dict(
    model='vgg16_bn_cifar', dataset='cifar10', batch_size=128, num_epochs=100,
    optimizer='momentum', learning_rate=0.05, schedule='cosine', weight_decay=5e-4)

if __name__ == '__main__':
  common.main(DEFAULTS)
