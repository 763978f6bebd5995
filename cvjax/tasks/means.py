"""Per-image scores averaged over an eval split: the sums a jitted eval step returns
(padding excluded) and the evaluator that turns them into means."""
from __future__ import annotations

import jax.numpy as jnp


class MeanEvaluator:
  """Sums of per-image scores and the count of real images; means at the end."""

  def __init__(self, keys: tuple[str, ...]):
    self.sums = dict.fromkeys(keys, 0.0)
    self.count = 0.0

  def update(self, sums: dict, per_example: dict) -> None:
    del per_example
    for k in self.sums:
      self.sums[k] += float(sums[k])
    self.count += float(sums['count'])

  def result(self) -> dict[str, float]:
    n = max(self.count, 1.0)
    return {**{k: v / n for k, v in self.sums.items()}, 'count': int(self.count)}


def masked_sums(per_image: dict, batch: dict) -> dict:
  """{name: Σ over the real images} and 'count' (the padding of the last eval batch has
  mask False)."""
  weights = batch['mask'].astype(jnp.float32)
  sums = {k: jnp.sum(jnp.where(weights > 0, v.astype(jnp.float32), 0.0))
          for k, v in per_image.items()}
  sums['count'] = jnp.sum(weights)
  return sums
