"""Dynamic loss scaling for float16 training (Micikevicius et al. 2018).

float16 keeps 5 exponent bits: gradients below ~6e-8 flush to zero and values
above 65,504 overflow to inf. The loss is multiplied by a large `scale` before
the backward pass, so small gradients stay representable, and the float32
gradients are divided by it again before the optimizer sees them. When some
gradient is inf or nan the step is skipped and the scale halved; after
`period` finite steps in a row it is doubled. bfloat16 has float32's exponent
range and needs none of this.

The state is two scalars in the TrainState, so it is checkpointed and resumed
with the rest. (DeepMind's `jmp` has the same rule, but its last release is
from January 2023, it is not a dependency here, and its pytree does not keep
`min_loss_scale` nor serialise through flax/orbax; the rule is a few lines.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class DynamicLossScale(struct.PyTreeNode):
  """scale: float32[] (initial 2**15, as jmp and torch's GradScaler start near);
  counter: int32[] finite steps since the last change."""
  scale: jax.Array
  counter: jax.Array
  period: int = struct.field(pytree_node=False, default=2000)
  factor: float = struct.field(pytree_node=False, default=2.0)
  min_scale: float = struct.field(pytree_node=False, default=1.0)

  @classmethod
  def create(cls, initial: float = 2.0**15, period: int = 2000, factor: float = 2.0,
             min_scale: float = 1.0) -> 'DynamicLossScale':
    return cls(scale=jnp.asarray(initial, jnp.float32), counter=jnp.zeros([], jnp.int32),
               period=period, factor=factor, min_scale=min_scale)

  def scale_loss(self, loss: jax.Array) -> jax.Array:
    """loss · scale, in float32."""
    return loss.astype(jnp.float32) * self.scale

  def unscale(self, grads):
    """grads / scale, leaf by leaf (float32 gradients of float32 params)."""
    inverse = 1.0 / self.scale
    return jax.tree.map(lambda g: g * inverse.astype(g.dtype), grads)

  def adjust(self, finite: jax.Array) -> 'DynamicLossScale':
    """The next state after a step whose gradients were `finite` (bool[])."""
    grow = self.counter == self.period - 1
    grown = jnp.where(grow, self.scale * self.factor, self.scale)
    grown = jnp.where(jnp.isfinite(grown), grown, self.scale)
    shrunk = jnp.maximum(self.scale / self.factor, self.min_scale)
    return self.replace(scale=jnp.where(finite, grown, shrunk),
                        counter=jnp.where(finite & ~grow, self.counter + 1, 0))


def all_finite(tree) -> jax.Array:
  """bool[]: every element of every leaf is finite (True for an empty tree)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def select_tree(pred: jax.Array, on_true, on_false):
  """Leafwise `on_true if pred else on_false` for two trees of one structure."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
