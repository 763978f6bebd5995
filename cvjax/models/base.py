"""The fields every cvjax model shares, declared once, and the layers they configure.

    class ResNet(BNModel):            # num_classes, conv_impl, dtype, param_dtype, bn_* inherited
      stage_sizes: Sequence[int]
      ...
      def __call__(self, x, train=False):
        conv, norm = partial(self.conv, use_bias=False), self.norm(train)

  Net      conv_impl, dtype, param_dtype: what a run decides about every layer.
  BNNet    Net + bn_momentum, bn_epsilon, bn_axis_name.
  Model    Net + num_classes: a registered model without BatchNorm.
  BNModel  BNNet + num_classes.

A Net builds its layers with `self.conv`, `self.conv_general`, `self.dense`,
`self.depthwise_conv` (and `self.norm(train)` in a BNNet): the flax layers with the
net's dtypes and conv lowering, so no model passes `conv_impl` to a conv by hand.
Blocks take those as constructors (`conv: ModuleDef`, flax's examples/imagenet idiom)
and never see the run's options; sub-nets built with the same options (a detector's
backbone) take `**self.net_options()`.

The fields of these bases are keyword-only, and so is every field of a Model: a model
can then override a default next to its required fields (`bn_momentum: float = 0.99`
for a Keras port) and is built by keyword (`get_model`, the registry's partials).
A model needs none of this to be registered: the factory passes only the options a
model declares (`cvjax.models.model_options`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models import blocks, layers

Array = Any
ModuleDef = Any


class Net(nn.Module, kw_only=True):
  """A network, or a part of one, whose layers follow the run's options.

  conv_impl: a resolved conv lowering ('xla', 'cpu', ...; `cvjax.models.conv_lowering`),
    set once per model by `get_model`; parameters and their names do not depend on it.
  dtype: the compute dtype of every layer; param_dtype: that of the parameters.
  """
  conv_impl: str = 'xla'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.nowrap
  def _layer_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {'dtype': self.dtype, 'param_dtype': self.param_dtype, **kwargs}

  @nn.nowrap
  def conv(self, features: int, kernel_size: int, strides: int = 1, padding: int | None = None,
           **kwargs: Any) -> nn.Conv:
    """`layers.conv` (k×k, symmetric padding, He init) with this net's dtypes and lowering."""
    return layers.conv(features, kernel_size, strides, padding,
                       **self._layer_kwargs({'impl': self.conv_impl, **kwargs}))

  @nn.nowrap
  def conv_general(self, features: int, kernel_size: Any, strides: Any = 1,
                   **kwargs: Any) -> nn.Conv:
    """`layers.conv_general` (any padding, flax's init) with this net's dtypes and lowering."""
    return layers.conv_general(features, kernel_size, strides,
                               **self._layer_kwargs({'impl': self.conv_impl, **kwargs}))

  @nn.nowrap
  def dense(self, features: int, **kwargs: Any) -> nn.Dense:
    """`nn.Dense` with this net's dtypes."""
    return nn.Dense(features, **self._layer_kwargs(kwargs))

  @nn.nowrap
  def depthwise_conv(self, x: Array, kernel_size: int, strides: int = 1, padding: Any = 'same',
                     **kwargs: Any) -> Array:
    """`blocks.depthwise_conv` of x with this net's dtypes and lowering (call in a compact method)."""
    return blocks.depthwise_conv(x, kernel_size, strides, padding,
                                 **self._layer_kwargs({'impl': self.conv_impl, **kwargs}))

  @nn.nowrap
  def net_options(self) -> dict[str, Any]:
    """The run's options this net holds, as keywords for a sub-net built the same way."""
    base = BNNet if isinstance(self, BNNet) else Net
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(base)
            if f.name not in ('parent', 'name')}


class BNNet(Net):
  """A Net with BatchNorm: momentum and epsilon as flax's `nn.BatchNorm` takes them
  (torch's momentum 0.1 is 0.9 here), and the axis that averages batch statistics
  across devices (None: each device its own)."""
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None

  @nn.nowrap
  def norm(self, train: bool, **overrides: Any) -> ModuleDef:
    """`nn.BatchNorm` configured from this net's fields, as a constructor for its layers.

    Running statistics are used in eval (`train=False`) and updated in training;
    `overrides` win (e.g. `use_scale=False`).
    """
    kwargs = dict(use_running_average=not train, momentum=self.bn_momentum,
                  epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    return functools.partial(nn.BatchNorm, **{**kwargs, **overrides})


class Model(Net):
  """A registered model: a Net with `num_classes` outputs. Every field of a subclass is
  keyword-only (see the module docstring)."""
  num_classes: int = 1000

  def __init_subclass__(cls, **kwargs: Any) -> None:
    super().__init_subclass__(kw_only=True, **kwargs)


class BNModel(Model, BNNet):
  """A registered model with BatchNorm."""

