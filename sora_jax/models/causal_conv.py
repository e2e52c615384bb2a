"""Causal 3D convolution: pads only the past in time, and can stream a clip chunk by chunk.

A causal conv over video [B, T, H, W, C] sees, for output frame t, input frames up to t
and never after. Time is padded with `kt - 1` zero frames in front (nothing behind), as in
Wan 2.1's `CausalConv3d`; space is padded symmetrically ("same").

Streaming (chunked encode/decode for long videos): when the Flax collection "cache" is
mutable, the padding frames are replaced by a cached "context" -- the tail of the stream
seen so far that the next output window still needs -- and the context is updated after
each call. Processing a clip in consecutive chunks then gives exactly the result of
processing it whole, with memory bounded by the chunk. For a time stride `st` the context
after a call is `stream[n_out * st:]`, where `stream = concat(context, chunk)`: `kt - 1`
frames for stride 1, and 1 frame for the (3, stride 2) temporal downsampler once the first
(odd-length) chunk has been consumed.

Parameters carry logical axis names: kernel ('conv_kernel', None, None, 'conv_in', 'conv_out'),
bias ('conv_out',). Compute runs in `dtype` with float32 accumulation; params stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

# Flax rejects a logical name repeated within one array, so only the time tap is named.
KERNEL_AXES = ("conv_kernel", None, None, "conv_in", "conv_out")
VIDEO_AXES = ("activation_batch", "activation_time", "activation_height", "activation_width", "activation_channels")
CACHE = "cache"  # the Flax collection that holds streaming state


def is_streaming(module: nn.Module) -> bool:
  """True while a module runs chunk by chunk (the "cache" collection is mutable)."""
  return module.is_mutable_collection(CACHE)


def is_first_chunk(module: nn.Module) -> bool:
  """True for whole-clip calls and for the first chunk of a stream; marks the stream started.

  Modules whose output length depends on being at the start of the clip (temporal
  upsampling drops the first frame's duplicate, the time un-patchify drops the padding
  frames) use this flag; it costs one boolean leaf in the cache.
  """
  if not is_streaming(module):
    return True
  first = not module.has_variable(CACHE, "started")
  module.variable(CACHE, "started", lambda: jnp.ones((), jnp.bool_))
  return first


def prepend_past(module: nn.Module, x: jnp.ndarray, num_pad: int, window: int, stride: int) -> jnp.ndarray:
  """Puts `num_pad` past frames (zeros at clip start, cached context when streaming) before x.

  Args:
    module: the module owning the cache variable "context".
    x: [B, T, H, W, C] the new frames.
    num_pad: past frames needed at the start of a clip (kt - 1 for a causal conv).
    window: frames one output reads (the kernel's time extent).
    stride: time stride of the consumer.
  Returns:
    [B, num_pad_or_context + T, H, W, C] the stream the consumer slides its window over.
  """
  if not is_streaming(module):
    return jnp.pad(x, ((0, 0), (num_pad, 0), (0, 0), (0, 0), (0, 0)))
  batch, _, height, width, channels = x.shape
  context = module.variable(CACHE, "context", jnp.zeros, (batch, num_pad, height, width, channels), x.dtype)
  stream = jnp.concatenate([context.value.astype(x.dtype), x], axis=1)
  num_out = max((stream.shape[1] - window) // stride + 1, 0)
  context.value = stream[:, num_out * stride :]
  return stream


def _conv3d_as_conv2d(stream: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int]) -> jnp.ndarray:
  """VALID-in-time, SAME-in-space 3D conv computed as one 2D conv over frames.

  The kt time taps are stacked on the channel axis ([B*T', H, W, kt*Cin]) and the kernel
  is reshaped to [kh, kw, kt*Cin, Cout]: the same sum, but XLA's 2D convolution is about
  5x faster than its 3D one on CPU (measured here) and no slower on GPU/TPU.

  Args:
    stream: [B, T_in, H, W, Cin], already padded in time.
    kernel: [kt, kh, kw, Cin, Cout].
    strides: (st, sh, sw).
  Returns:
    [B, (T_in - kt) // st + 1, H', W', Cout], float32.
  """
  kt, kh, kw, cin, cout = kernel.shape
  st, sh, sw = strides
  batch, t_in, height, width, _ = stream.shape
  t_out = (t_in - kt) // st + 1
  taps = [stream[:, a : a + st * (t_out - 1) + 1 : st] for a in range(kt)]
  frames = jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]
  frames = frames.reshape(batch * t_out, height, width, kt * cin)
  kernel2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)
  y = lax.conv_general_dilated(
    frames,
    kernel2d,
    window_strides=(sh, sw),
    padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    preferred_element_type=jnp.float32,
  )
  return y.reshape(batch, t_out, *y.shape[1:])


class CausalConv3d(nn.Module):
  """3D convolution over [B, T, H, W, Cin] -> [B, T', H', W', features], causal in time.

  Attributes:
    features: output channels.
    kernel_size: (kt, kh, kw); kh and kw odd.
    strides: (st, sh, sw). A time stride of 2 with kt=3 maps 1+2m frames to 1+m (frame 0 on
      its own); a space stride of 2 halves even H and W.
    use_bias: add a learned bias.
    dtype: compute dtype (params stay float32; accumulation is float32).
    kernel_init: initializer of the [kt, kh, kw, Cin, features] kernel.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kt, kh, kw = self.kernel_size
    st, sh, sw = self.strides
    if kh % 2 == 0 or kw % 2 == 0:
      raise ValueError(f"CausalConv3d spatial kernel sizes must be odd, got {self.kernel_size}")
    in_channels = x.shape[-1]
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(self.kernel_init, KERNEL_AXES),
      (kt, kh, kw, in_channels, self.features),
      jnp.float32,
    )
    x = x.astype(self.dtype)
    if kt > 1:
      x = prepend_past(self, x, num_pad=kt - 1, window=kt, stride=st)
    if (kt, kh, kw) == (1, 1, 1) and (st, sh, sw) == (1, 1, 1):
      y = jnp.einsum("bthwi,io->bthwo", x, kernel[0, 0, 0].astype(self.dtype), preferred_element_type=jnp.float32)
    else:
      y = _conv3d_as_conv2d(x, kernel.astype(self.dtype), (st, sh, sw))
    if self.use_bias:
      bias = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (self.features,), jnp.float32
      )
      y = y + bias
    return y.astype(self.dtype)
