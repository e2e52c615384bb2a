"""Fused DiT ops with hand-written backward passes (`jax.custom_vjp`): fewer saved tensors, fewer passes.

* `layer_norm_modulate(x, shift, scale)`: LN(x) * (1 + scale) + shift (LayerNorm without affine,
  over the last axis, float32 statistics). shift / scale broadcast against x [B, N, D]: [B, 1, D]
  (one timestep per example, adaLN) or [B, N, D] (per-token timesteps / conditioning). Saves only
  x's row statistics (mean, 1/std: [B, N, 1]) besides x itself, which the residual stream keeps
  anyway; autodiff of the unfused form saves the centred x, the normalised x and the broadcast
  (1 + scale). The backward is the textbook LayerNorm gradient in one elementwise pass plus two
  row reductions, and the shift / scale gradients reduced straight to their own shapes.
* `gelu_tanh(x)`: GELU with the tanh approximation (as `nn.gelu(approximate=True)`); saves x only
  and computes the derivative in closed form in one pass (autodiff saves x, the x^3 term and tanh,
  and walks the chain op by op); in the sigmoid form, accurate in the tails too.
* `mixed_einsum(spec, a, b, dtype)`: a two-operand einsum with inputs cast to `dtype` (bfloat16)
  and float32 accumulation, whose backward matmuls are ALSO `dtype` x `dtype` -> float32. Autodiff
  of `einsum(a.astype(bf16), b.astype(bf16), preferred_element_type=f32)` multiplies the float32
  cotangent by a bf16 operand (XLA then runs the two backward matmuls in float32, 2/3 of the
  FLOPs) and rounds the weight gradient to bf16 before returning it as float32. Here the weight
  gradient stays float32 and all three matmuls are bf16 (what torch autocast does). With
  dtype=float32 it is a plain einsum (no custom rule).

Every op equals its unfused form: values and gradients agree to float32 rounding
(tests/test_fused.py). `FusedEinsum` is `nn.Einsum` (same parameters, names, shapes, init)
computing with `mixed_einsum`; `attention.linear(..., fused=True)` builds it.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# ------------------------------------------------------------------------------ LayerNorm + adaLN modulate


def _row_stats(x, epsilon):
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  return xf, mean, jax.lax.rsqrt(var + epsilon)


def _reduce_to(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums g over the axes that `shape` broadcast along (size 1 there, or missing in front)."""
  lead = g.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
  return jnp.sum(g, axis=axes, keepdims=True).reshape(shape) if axes else g


def _check_modulation(x, shift, scale):
  for name, v in (("shift", shift), ("scale", scale)):
    try:
      jnp.broadcast_shapes(v.shape, x.shape)
    except ValueError:
      raise ValueError(
        f"{name} of shape {v.shape} does not broadcast against x {x.shape}: give [B, 1, D] (per example) or "
        f"[B, N, D] (per token)"
      ) from None
    if v.shape[-1] != x.shape[-1]:
      raise ValueError(f"{name} must have x's width {x.shape[-1]} on its last axis, got shape {v.shape}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ln_modulate(x, shift, scale, epsilon):
  xf, mean, rstd = _row_stats(x, epsilon)
  return (xf - mean) * rstd * (1.0 + scale) + shift


def _ln_modulate_fwd(x, shift, scale, epsilon):
  xf, mean, rstd = _row_stats(x, epsilon)
  y = (xf - mean) * rstd * (1.0 + scale) + shift
  return y, (x, mean, rstd, scale, shift)


def _ln_modulate_bwd(epsilon, res, g):
  del epsilon
  x, mean, rstd, scale, shift = res
  g = g.astype(jnp.float32)
  x_hat = (x.astype(jnp.float32) - mean) * rstd
  d_shift = _reduce_to(g, shift.shape)
  d_scale = _reduce_to(g * x_hat, scale.shape)
  d_xhat = g * (1.0 + scale)
  # LayerNorm backward: dx = rstd (d_xhat - mean(d_xhat) - x_hat mean(d_xhat x_hat)).
  dx = rstd * (
    d_xhat - jnp.mean(d_xhat, axis=-1, keepdims=True) - x_hat * jnp.mean(d_xhat * x_hat, axis=-1, keepdims=True)
  )
  return dx.astype(x.dtype), d_shift.astype(jnp.float32), d_scale.astype(scale.dtype)


_ln_modulate.defvjp(_ln_modulate_fwd, _ln_modulate_bwd)


def layer_norm_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, epsilon: float = 1e-6) -> jax.Array:
  """LN(x) * (1 + scale) + shift in float32; x [B, N, D], shift / scale [B, 1, D] or [B, N, D] (any shape that
  broadcasts against x and has its width last)."""
  _check_modulation(x, shift, scale)
  return _ln_modulate(x, shift.astype(jnp.float32), scale.astype(jnp.float32), float(epsilon))


def layer_norm_modulate_reference(x, shift, scale, epsilon: float = 1e-6):
  """The unfused form (what autodiff differentiates op by op), for tests and A/B runs."""
  xf, mean, rstd = _row_stats(x, epsilon)
  return (xf - mean) * rstd * (1.0 + scale) + shift


# ------------------------------------------------------------------------------ GELU (tanh)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@jax.custom_vjp
def gelu_tanh(x: jax.Array) -> jax.Array:
  """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as nn.gelu(x, approximate=True); computed in x's dtype."""
  return jax.nn.gelu(x, approximate=True)  # the forward is jax's (equal values); the backward is ours


def _gelu_fwd(x):
  return gelu_tanh(x), x


def _gelu_bwd(x, g):
  x2 = x * x
  z = 2.0 * _SQRT_2_OVER_PI * x * (1.0 + _GELU_C * x2)
  # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) u', t = tanh(u), u' = sqrt(2/pi) (1 + 3 c x^2). With s = sigmoid(2u):
  # 0.5 (1 + t) = s and 0.25 (1 - t^2) = s (1 - s) = sigmoid(2u) sigmoid(-2u), free of the cancellation in
  # 1 + t and 1 - t^2 where |t| -> 1 (the tails, where autodiff of the tanh form loses all digits).
  s, s_neg = jax.nn.sigmoid(z), jax.nn.sigmoid(-z)
  d = s + 2.0 * x * s * s_neg * (_SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x2))
  return ((g * d).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


# ------------------------------------------------------------------------------ mixed-precision einsum


def _parse(spec: str) -> tuple[str, str, str]:
  spec = spec.replace(" ", "")
  inputs, arrow, out = spec.partition("->")
  if not arrow or inputs.count(",") != 1 or "." in spec:
    raise ValueError(f"mixed_einsum needs an explicit two-operand spec 'ab,bc->ac' without '...', got {spec!r}")
  a, b = inputs.split(",")
  return a, b, out


def _transposable(spec: str) -> bool:
  """Whether each operand's gradient is an einsum of the other operand with the cotangent (every index of an
  operand also appears in the other operand or the output; no repeated index within one term)."""
  a, b, out = _parse(spec)
  terms = (a, b, out)
  return all(len(set(t)) == len(t) for t in terms) and set(a) <= set(b) | set(out) and set(b) <= set(a) | set(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4, 5))
def _mixed_einsum(spec, a, b, dtype, a_dtype, b_dtype):
  del a_dtype, b_dtype
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _mixed_einsum_fwd(spec, a, b, dtype, a_dtype, b_dtype):
  del a_dtype, b_dtype
  a_c, b_c = a.astype(dtype), b.astype(dtype)  # saved in `dtype`: half the bytes of float32 residuals
  return jnp.einsum(spec, a_c, b_c, preferred_element_type=jnp.float32), (a_c, b_c)


def _mixed_einsum_bwd(spec, dtype, a_dtype, b_dtype, res, g):
  a_c, b_c = res
  a, b, out = _parse(spec)
  g_c = g.astype(dtype)
  da = jnp.einsum(f"{out},{b}->{a}", g_c, b_c, preferred_element_type=jnp.float32)
  db = jnp.einsum(f"{a},{out}->{b}", a_c, g_c, preferred_element_type=jnp.float32)
  return da.astype(a_dtype), db.astype(b_dtype)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def mixed_einsum(spec: str, a: jax.Array, b: jax.Array, dtype=jnp.bfloat16) -> jax.Array:
  """einsum(spec, a, b) with a, b cast to `dtype` and float32 accumulation, forwards AND backwards (float32
  result; gradients in a's and b's own dtypes, accumulated in float32). dtype float32: a plain einsum."""
  spec = spec.replace(" ", "")
  if jnp.dtype(dtype) == jnp.float32 or not _transposable(spec):
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
  return _mixed_einsum(spec, a, b, jnp.dtype(dtype), jnp.dtype(a.dtype), jnp.dtype(b.dtype))


class FusedEinsum(nn.Einsum):
  """`nn.Einsum` (same params: 'kernel' [shape], 'bias') computing `mixed_einsum` in `dtype` (f32 accumulation,
  bf16 backward matmuls); the bias is added in float32."""

  @nn.compact
  def __call__(self, inputs: jax.Array, einsum_str: str | None = None) -> jax.Array:
    einsum_str = nn.module.merge_param("einsum_str", self.einsum_str, einsum_str).replace(" ", "")
    _parse(einsum_str)
    kernel = self.param("kernel", self.kernel_init, self.shape, self.param_dtype)
    bias = None
    if self.use_bias:
      bias_shape, broadcast_shape = self._get_bias_shape(einsum_str, inputs, kernel)
      bias = self.param("bias", self.bias_init, bias_shape, self.param_dtype)
    y = mixed_einsum(einsum_str, inputs, kernel, self.dtype or jnp.float32)
    if bias is not None:
      y = y + jnp.reshape(bias, broadcast_shape).astype(jnp.float32)
    return y
