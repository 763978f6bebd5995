"""Vision Transformer (Dosovitskiy et al. 2021): an image as a sequence of 16×16 patches.

      step                                                    shape (ViT-B/16 at 224²)
      patch embedding: conv P×P, stride P, D filters          14×14×768
      flatten to tokens, prepend the class token              197×768
      + learned position embeddings, dropout                  197×768
      L pre-norm encoder blocks:                              197×768
          x + MHSA(LN(x)),  then  x + MLP(LN(x))  (MLP: D → 4D, GELU, → D)
      LN, class token → head (dense N)                        N

      variant        P   D     L    heads  MLP    params (1000 classes)
      ViT-B/16       16  768   12   12     3072   86,567,656 (torchvision vit_b_16; paper "86M")
      ViT-Ti/16      16  192   12   3      768     5,717,416 (DeiT-Ti, Touvron et al. 2021)
      ViT-Tiny CIFAR  4  192    6   3      384     1,796,362 at 10 classes, 32² (65 tokens)

LayerNorm eps 1e-6, exact (erf) GELU, position embeddings N(0, 0.02²), class
token and head zero-initialised (§3.1 / Appendix B.1.1). No BatchNorm. Dropout (`dropout_rate`, after the
embeddings, the attention output and both MLP layers; `attention_dropout_rate`
on the attention weights) uses the 'dropout' rng; torchvision's default is 0.

Names (big_vision-like): `embedding` (conv), `cls`, `pos_embedding`,
`encoderblock_{i}` with `ln1`, `attention/{query,key,value,out}` (dense D → D,
heads split after the projection), `ln2`, `mlp/{fc1,fc2}`; `encoder_norm`, `head`.
torchvision: conv_proj, class_token, encoder.pos_embedding,
encoder.layers.encoder_layer_{i}.{ln_1, self_attention (in_proj = q‖k‖v rows,
out_proj), ln_2, mlp.0, mlp.3}, encoder.ln, heads.head (torch kernels transposed).

The position embeddings are sized at init by the input: a model initialised at
224² has 197 of them and must be applied at 224². `cvjax.summary` counts the
dense and conv layers (16.85 GMACs for ViT-B/16); the attention products
Q·Kᵀ and A·V are not layers and add 2·N²·D per block (0.72 GMACs at N = 197,
torchvision's 17.56 includes them): `attention_macs` gives that number.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax.models.base import Model


def attention_macs(image_size: int, patch_size: int, hidden_size: int, depth: int) -> int:
  """Multiply-adds of Q·Kᵀ and A·V over all blocks, per example: depth · 2 · N² · D."""
  tokens = (image_size // patch_size) ** 2 + 1
  return depth * 2 * tokens * tokens * hidden_size


class SelfAttention(nn.Module):
  """Multi-head self-attention: x [B, N, D] → [B, N, D]; softmax(Q Kᵀ / √d) V per head, d = D/heads."""
  num_heads: int
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, n, d = x.shape
    h = self.num_heads
    if d % h:
      raise ValueError(f'hidden size {d} is not divisible by {h} heads')
    dense = partial(nn.Dense, d, kernel_init=nn.initializers.xavier_uniform(),
                    dtype=self.dtype, param_dtype=self.param_dtype)
    split = lambda t: t.reshape(b, n, h, d // h)
    q, k, v = (split(dense(name=name)(x)) for name in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(d // h).astype(q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    weights = nn.Dropout(self.attention_dropout_rate, deterministic=not train,
                         name='attention_dropout')(weights)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, n, d)
    return dense(name='out')(out)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x [B, N, D] → x + MHSA(LN x) → (·) + MLP(LN ·)."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    drop = partial(nn.Dropout, self.dropout_rate, deterministic=not train)
    y = nn.LayerNorm(epsilon=1e-6, name='ln1', **kw)(x)
    y = SelfAttention(self.num_heads, self.attention_dropout_rate, name='attention', **kw)(y, train)
    x = x + drop(name='attention_output_dropout')(y)
    y = nn.LayerNorm(epsilon=1e-6, name='ln2', **kw)(x)
    y = MLP(self.mlp_dim, self.dropout_rate, name='mlp', **kw)(y, train)
    return x + y


class MLP(nn.Module):
  """D → mlp_dim, GELU, dropout → D, dropout: [B, N, D] → [B, N, D]."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dense = partial(nn.Dense, kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.normal(1e-6), dtype=self.dtype,
                    param_dtype=self.param_dtype)
    drop = partial(nn.Dropout, self.dropout_rate, deterministic=not train)
    y = nn.gelu(dense(self.mlp_dim, name='fc1')(x), approximate=False)
    y = drop(name='dropout1')(y)
    return drop(name='dropout2')(dense(x.shape[-1], name='fc2')(y))


class ViT(Model):
  """ViT: x float32[B, H, W, C] → logits float32[B, num_classes]; H, W multiples of patch_size."""
  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p, d = self.patch_size, self.hidden_size
    x = self.conv_general(d, p, p, padding='VALID', name='embedding',
                          kernel_init=nn.initializers.lecun_normal())(x)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, d)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, d), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), (1, gh * gw + 1, d),
                     self.param_dtype)
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                       self.attention_dropout_rate, name=f'encoderblock_{i}', **kw)(x, train)
    x = nn.LayerNorm(epsilon=1e-6, name='encoder_norm', **kw)(x)
    x = self.dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(x[:, 0])
    return jnp.asarray(x, jnp.float32)


ViT_B16 = partial(ViT, patch_size=16, hidden_size=768, depth=12, num_heads=12, mlp_dim=3072)
ViT_Ti16 = partial(ViT, patch_size=16, hidden_size=192, depth=12, num_heads=3, mlp_dim=768)
ViT_TinyCifar = partial(ViT, patch_size=4, hidden_size=192, depth=6, num_heads=3, mlp_dim=384,
                        num_classes=10)
