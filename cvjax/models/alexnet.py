"""AlexNet (Krizhevsky, Sutskever & Hinton 2012): the lecture's and torchvision's."""
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import Model
from cvjax.models.layers import LRN, AdaptiveAvgPool, MaxPool, flatten


class AlexNet(Model):
  """AlexNet as the lecture gives it (one tower, no grouped convs), at 227×227×3.

      layer                        output        params (1000 classes)
      conv1 96@11×11, s4, p0       55×55×96          34,944
      lrn1, pool1 3×3 s2           27×27×96               0
      conv2 256@5×5, p2            27×27×256        614,656
      lrn2, pool2 3×3 s2           13×13×256              0
      conv3 384@3×3, p1            13×13×384        885,120
      conv4 384@3×3, p1            13×13×384      1,327,488
      conv5 256@3×3, p1            13×13×256        884,992
      pool5 3×3 s2                  6×6×256               0
      fc6 4096, dropout 0.5            4096      37,752,832
      fc7 4096, dropout 0.5            4096      16,781,312
      fc8 N                               N       4,097,000
                                                 62,378,344

  x float32[B, H, W, 3] → logits float32[B, num_classes]. Other input sizes
  work but change fc6's input size (at 224² pool5 is 5×5×256).
  """
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    dropout = partial(nn.Dropout, self.dropout_rate, deterministic=not train)

    x = nn.relu(self.conv(96, 11, 4, padding=0, name='conv1')(x))
    x = MaxPool(3, 2, name='pool1')(LRN(name='lrn1')(x))
    x = nn.relu(self.conv(256, 5, name='conv2')(x))
    x = MaxPool(3, 2, name='pool2')(LRN(name='lrn2')(x))
    x = nn.relu(self.conv(384, 3, name='conv3')(x))
    x = nn.relu(self.conv(384, 3, name='conv4')(x))
    x = nn.relu(self.conv(256, 3, name='conv5')(x))
    x = MaxPool(3, 2, name='pool5')(x)
    x = flatten(x)
    x = dropout(name='drop6')(nn.relu(self.dense(4096, name='fc6')(x)))
    x = dropout(name='drop7')(nn.relu(self.dense(4096, name='fc7')(x)))
    x = self.dense(self.num_classes, name='fc8')(x)
    return jnp.asarray(x, jnp.float32)


class AlexNetTorchvision(Model):
  """torchvision's `alexnet` (the "one weird trick" variant), at 224×224×3.

  64/192/384/256/256 filters, no LRN, a 6×6 adaptive average pool so any
  input ≥ 63² works, dropout before fc6 and fc7: 61,100,840 params at 1000
  classes. torchvision → cvjax names: features.0/3/6/8/10 → conv1…conv5,
  classifier.1/4/6 → fc6/fc7/fc8 (fc6's rows are C·H·W-ordered in torch).
  """
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    dropout = partial(nn.Dropout, self.dropout_rate, deterministic=not train)

    x = nn.relu(self.conv(64, 11, 4, padding=2, name='conv1')(x))  # 55×55×64
    x = MaxPool(3, 2, name='pool1')(x)  # 27×27
    x = nn.relu(self.conv(192, 5, name='conv2')(x))
    x = MaxPool(3, 2, name='pool2')(x)  # 13×13
    x = nn.relu(self.conv(384, 3, name='conv3')(x))
    x = nn.relu(self.conv(256, 3, name='conv4')(x))
    x = nn.relu(self.conv(256, 3, name='conv5')(x))
    x = MaxPool(3, 2, name='pool5')(x)  # 6×6
    x = flatten(AdaptiveAvgPool(6, name='avgpool')(x))
    x = nn.relu(self.dense(4096, name='fc6')(dropout(name='drop6')(x)))
    x = nn.relu(self.dense(4096, name='fc7')(dropout(name='drop7')(x)))
    x = self.dense(self.num_classes, name='fc8')(x)
    return jnp.asarray(x, jnp.float32)
