"""Image generation on Fashion-MNIST (tasks autoencoder, vae, gan, diffusion): the lectures'
autoencoders, VAE, DCGAN and DDPM on the one training loop.

  python -m experiments.generate --flagfile=experiments/configs/vae_fashion_mnist.flags
  python -m experiments.generate --flagfile=experiments/configs/dcgan_fashion_mnist.flags
  python -m experiments.generate --flagfile=experiments/configs/ddpm_fashion_mnist.flags

Then `python -m cvjax.sample --workdir=W --num=64 --out=grid.png` draws a grid, and
`--fd_classifier=RUN` scores the samples in a classification run's features
(docs/generation.md).
"""
from experiments import common

if __name__ == '__main__':
  common.main()
