"""LeNet-5 (LeCun et al. 1998), as the lecture table gives it."""
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import Model
from cvjax.models.layers import AvgPool, MaxPool, choose, flatten


class LeNet5(Model):
  """LeNet-5: x float32[B, 32, 32, 1] → logits float32[B, num_classes].

  28×28 inputs (MNIST) are zero-padded by 2 on every side, as LeCun did.

      layer                   output      params (10 classes)
      C1  conv 6@5×5, p0      28×28×6        156
      S2  pool 2×2, s2        14×14×6          0
      C3  conv 16@5×5, p0     10×10×16     2,416
      S4  pool 2×2, s2         5×5×16          0
      C5  conv 120@5×5, p0     1×1×120    48,120
      F6  dense 84                  84    10,164
      out dense N                    N       850
                                          61,706

  The subsampling layers are plain pools (the paper's S2/S4 also had a
  trainable coefficient and bias per map; the lecture's count omits them).
  """
  num_classes: int = 10
  activation: str = 'tanh'  # 'tanh' (paper) | 'relu'
  pooling: str = 'avg'  # 'avg' (paper) | 'max'

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = choose('activation', self.activation, {'tanh': jnp.tanh, 'relu': nn.relu})
    pool = choose('pooling', self.pooling, {'avg': AvgPool, 'max': MaxPool})
    conv5x5 = partial(self.conv, kernel_size=5, padding=0)

    if x.shape[1:3] == (28, 28):
      x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    x = act(conv5x5(6, name='conv1')(x))
    x = pool(2, name='pool1')(x)
    x = act(conv5x5(16, name='conv2')(x))
    x = pool(2, name='pool2')(x)
    x = act(conv5x5(120, name='conv3')(x))
    x = flatten(x)
    x = act(self.dense(84, name='fc1')(x))
    x = self.dense(self.num_classes, name='fc2')(x)
    return jnp.asarray(x, jnp.float32)
