"""The later model families with the shared flags: GoogLeNet, Inception-v3, Xception,
SE-ResNet, ResNeXt, DenseNet, MobileNet v1/v2, EfficientNet B0-B7, ViT.

  python -m experiments.models --flagfile=experiments/configs/mobilenet_v2_cifar10.flags
  python -m experiments.models --model=efficientnet_b0_cifar --dataset=fashion_mnist

Every flagfile for these families in experiments/configs/ names this program on its
first line, with the result to expect. Settings that neither a flagfile nor the command line
gives are TrainConfig's defaults (`--helpshort` lists them): the second command trains for
10 epochs with SGD momentum, lr 0.1 and a cosine schedule. `python -m cvjax.summary --model=NAME` shows a
model's layers, parameters and MACs; `python -m benchmarks.compare_models` compares
the small variants on Fashion-MNIST.
"""
from experiments import common

if __name__ == '__main__':
  common.main()
