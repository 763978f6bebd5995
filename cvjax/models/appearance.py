"""A small CNN whose penultimate layer is an appearance embedding (DeepSORT's re-id net, smaller)."""
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import Model
from cvjax.models.layers import MaxPool


class AppearanceCNN(Model):
  """x float32[B, 32, 32, 3] object crops → logits float32[B, num_classes].

      layer                   output      params (36 classes)
      conv1 3×3 32, relu      32×32×32        896
      pool 2×2                16×16×32          0
      conv2 3×3 64, relu      16×16×64     18,496
      pool 2×2                 8×8×64           0
      conv3 3×3 128, relu      8×8×128     73,856
      global average pool          128          0
      embedding dense              64       8,256
      head dense                    N       2,340
                                          103,844

  The head's input, the 64-d `embedding` (linear, no activation), is what
  `cvjax.track --embedder` L2-normalises and compares by cosine distance.
  """
  num_classes: int = 36
  embedding_dim: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    conv3x3 = partial(self.conv, kernel_size=3)
    x = MaxPool(2, name='pool1')(nn.relu(conv3x3(32, name='conv1')(x)))
    x = MaxPool(2, name='pool2')(nn.relu(conv3x3(64, name='conv2')(x)))
    x = nn.relu(conv3x3(128, name='conv3')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = self.dense(self.embedding_dim, name='embedding')(x)
    x = self.dense(self.num_classes, name='head')(x)
    return jnp.asarray(x, jnp.float32)
