"""Causal 3D VAE: video [B, T, H, W, 3] in [-1, 1] <-> latents [B, 1+(T-1)/tf, H/sf, W/sf, C].

Sora's video compression network, built like Wan 2.1's VAE:

* every conv is a `CausalConv3d` (time padded only in the past), so latent frame j depends
  on pixel frames up to tf*j: the first frame is encoded on its own (an image is a 1-frame
  video) and each later latent frame covers the tf frames after the previous one;
* norms are per-position RMS norms over channels and the optional mid-block attention is
  per frame, so nothing mixes information backwards in time or across chunks;
* an optional causal space/time-to-depth "patchify" at the input (and its inverse at the
  output) counts towards the compression factors and keeps full-resolution convs out of
  small CPU configs;
* the encoder outputs a diagonal Gaussian posterior (mean, logvar).

Entry points for other parts of the library:

  module = CausalVAE(config.vae)
  mean, logvar = module.apply({"params": p}, video, method=CausalVAE.encode)
  video = module.apply({"params": p}, z, method=CausalVAE.decode)
  mean, logvar = encode_video(module, p, video, chunk_frames=2, tile=64)   # long/large videos
  video = decode_latents(module, p, z, chunk_frames=2, tile=64)

Restoring a trained VAE from its workdir is `sora_jax.restore.restore_vae`.

Chunked processing streams time through the causal-conv caches (see causal_conv.py) and
equals whole-clip processing; spatial tiling blends overlapping tiles with linear ramps.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from sora_jax.errors import NonFiniteError
from sora_jax.models.causal_conv import CACHE, VIDEO_AXES, CausalConv3d, is_first_chunk, prepend_past
from sora_jax.models.dtypes import compute_dtype

NORMS = ("rms", "none")
TEMPORAL_FACTORS = (1, 2, 4, 8)
SPATIAL_FACTORS = (1, 2, 4, 8, 16, 32)
LATENT_STATS_FILE = "latent_stats.json"


# ---------------------------------------------------------------------------- geometry


def compression_plan(config) -> dict:
  """Checks a VAE config and derives its layout.

  Returns a dict with: patch (pt, ph, pw), num_levels, temporal_downsamples (how many of the
  first downsampling stages also halve time; the decoder's upsampling stages mirror them),
  channels (per level) and decoder_channels (the decoder may be wider:
  vae.decoder_channel_multipliers). encoder_time_kernels and decoder_time_kernels give the
  time extent of each level's convs (vae.encoder_time_kernels / vae.decoder_time_kernels:
  3 = causal 3D, 1 = per-frame 2D).
  Raises ValueError naming the field to change when the factors do not fit together.
  """
  tf, sf = config.temporal_factor, config.spatial_factor
  pt, ph, pw = tuple(config.patch_size)
  if tf not in TEMPORAL_FACTORS:
    raise ValueError(f"vae.temporal_factor must be one of {TEMPORAL_FACTORS}, got {tf}")
  if sf not in SPATIAL_FACTORS:
    raise ValueError(f"vae.spatial_factor must be one of {SPATIAL_FACTORS}, got {sf}")
  if ph != pw or sf % ph or tf % pt:
    raise ValueError(
      f"vae.patch_size={tuple(config.patch_size)} must be (pt, p, p) with p dividing "
      f"spatial_factor={sf} and pt dividing temporal_factor={tf}"
    )
  num_levels = int(round(math.log2(sf // ph))) + 1
  if len(config.channel_multipliers) != num_levels:
    raise ValueError(
      f"vae.channel_multipliers has {len(config.channel_multipliers)} entries but spatial_factor="
      f"{sf} with patch {ph} needs log2({sf}/{ph})+1 = {num_levels} levels; e.g. "
      f"--config.vae.channel_multipliers={tuple([1] + [2] * (num_levels - 1))}"
    )
  if config.norm not in NORMS:
    raise ValueError(f"vae.norm={config.norm!r} is not one of {NORMS}")
  temporal_downsamples = int(round(math.log2(tf // pt)))
  if temporal_downsamples > num_levels - 1:
    raise ValueError(
      f"temporal_factor={tf} with patch time {pt} needs {temporal_downsamples} temporal "
      f"downsamplings but there are only {num_levels - 1} downsampling stages; raise "
      f"vae.patch_size[0] or the spatial factor"
    )
  channels = tuple(config.base_channels * m for m in config.channel_multipliers)
  decoder_multipliers = tuple(config.decoder_channel_multipliers or config.channel_multipliers)
  if len(decoder_multipliers) != num_levels:
    raise ValueError(
      f"vae.decoder_channel_multipliers={decoder_multipliers} needs {num_levels} entries, one per "
      f"level like vae.channel_multipliers (or () for the same)"
    )
  return dict(
    patch=(pt, ph, pw),
    num_levels=num_levels,
    temporal_downsamples=temporal_downsamples,
    channels=channels,
    encoder_time_kernels=_time_kernels(config, "encoder_time_kernels", num_levels),
    decoder_channels=tuple(config.base_channels * m for m in decoder_multipliers),
    decoder_time_kernels=_time_kernels(config, "decoder_time_kernels", num_levels),
  )


def _time_kernels(config, field: str, num_levels: int) -> tuple[int, ...]:
  """config.<field>: the time extent (1 or 3) of the convs at each level; () means 3 everywhere."""
  kernels = tuple(config[field] or (3,) * num_levels)
  if len(kernels) != num_levels or any(k not in (1, 3) for k in kernels):
    raise ValueError(
      f"vae.{field}={kernels} needs {num_levels} entries of 1 (per-frame 2D "
      f"convs) or 3 (causal 3D convs), one per level (or () for 3 everywhere)"
    )
  return kernels


def latent_shape(config, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
  """(latent frames, latent height, latent width, channels) of a valid clip shape."""
  check_video_shape((1, num_frames, height, width, 3), config)
  return (
    1 + (num_frames - 1) // config.temporal_factor,
    height // config.spatial_factor,
    width // config.spatial_factor,
    config.latent_channels,
  )


def check_video_shape(shape: Sequence[int], config) -> None:
  """Raises ValueError (saying how to fix it) unless shape is [B, 1+tf*k, H, W, 3], sf | H, W."""
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f"the VAE takes video [B, T, H, W, 3] in [-1, 1], got shape {tuple(shape)}")
  _, frames, height, width, _ = shape
  tf, sf = config.temporal_factor, config.spatial_factor
  if frames < 1 or (frames - 1) % tf:
    lower = 1 + (max(frames - 1, 0) // tf) * tf
    raise ValueError(
      f"got {frames} frames, but a causal VAE with temporal factor {tf} takes 1+{tf}k frames "
      f"(1, {1 + tf}, {1 + 2 * tf}, ...); the nearest valid counts are {lower} and {lower + tf}: "
      f"trim or pad the clip, or set --config.data.num_frames={lower if frames > 1 else lower + tf}"
    )
  for name, size in (("height", height), ("width", width)):
    if size % sf or size == 0:
      lower = (size // sf) * sf
      raise ValueError(
        f"{name} {size} is not divisible by the VAE spatial factor {sf}; resize or crop to "
        f"{lower or sf} or {lower + sf} (e.g. --config.data.{name}={lower or sf})"
      )


def check_latent_shape(shape: Sequence[int], config) -> None:
  if len(shape) != 5 or shape[-1] != config.latent_channels:
    raise ValueError(f"the VAE decoder takes latents [B, T, h, w, {config.latent_channels}], got shape {tuple(shape)}")


def _constrain(x: jnp.ndarray) -> jnp.ndarray:
  return nn.with_logical_constraint(x, VIDEO_AXES)


# ---------------------------------------------------------------------------- layers


class ChannelRMSNorm(nn.Module):
  """RMS norm over channels at each position (Wan's RMS_norm); causal and tile-friendly."""

  dtype: Any = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    scale = self.param(
      "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), jnp.float32
    )
    x32 = x.astype(jnp.float32)
    y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(self.dtype)


def make_norm(kind: str, dtype: Any, name: str | None = None) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """The norm layer `kind` names: "rms" (ChannelRMSNorm, as Wan) or "none" (a cast to dtype).

  Both are per position, so they keep the network causal and chunk-exact. Without norms a
  small VAE learns faster (measured on the CPU demo); deep ones want "rms".
  """
  factories = {"rms": lambda: ChannelRMSNorm(dtype, name=name), "none": lambda: lambda x: x.astype(dtype)}
  if kind not in factories:
    raise ValueError(f"vae.norm={kind!r} is not one of {NORMS}")
  return factories[kind]()


class ResBlock(nn.Module):
  """norm -> SiLU -> conv -> norm -> SiLU -> conv (zero-init), plus a (1x1x1-projected) shortcut.

  Convs are (time_kernel, 3, 3): 3 = causal 3D, 1 = per-frame 2D (3x cheaper).
  """

  features: int
  dtype: Any = jnp.float32
  norm: str = "rms"
  time_kernel: int = 3

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = (self.time_kernel, 3, 3)
    h = nn.silu(make_norm(self.norm, self.dtype)(x))
    h = CausalConv3d(self.features, kernel, dtype=self.dtype)(h)
    h = nn.silu(make_norm(self.norm, self.dtype)(h))
    # Zero-initialised: every block starts as the identity (stable, fast early training).
    h = CausalConv3d(self.features, kernel, dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.features:
      x = CausalConv3d(self.features, (1, 1, 1), dtype=self.dtype, name="shortcut")(x)
    return _constrain(x + h)


class FrameAttention(nn.Module):
  """Single-head self-attention over the H*W positions of each frame (never across time)."""

  dtype: Any = jnp.float32
  norm: str = "rms"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    batch, frames, height, width, channels = x.shape
    h = make_norm(self.norm, self.dtype)(x)
    qkv = CausalConv3d(3 * channels, (1, 1, 1), dtype=self.dtype, name="qkv")(h)
    q, k, v = jnp.split(qkv.reshape(batch * frames, height * width, 3 * channels), 3, axis=-1)
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(channels), axis=-1).astype(self.dtype)
    out = jnp.einsum("bqk,bkc->bqc", weights, v, preferred_element_type=jnp.float32)
    out = out.reshape(batch, frames, height, width, channels).astype(self.dtype)
    out = CausalConv3d(channels, (1, 1, 1), dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj")(out)
    return _constrain(x + out)


class Downsample(nn.Module):
  """Halves H and W (stride-2 conv per frame); with `temporal`, also maps 1+2m frames to 1+m."""

  temporal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    x = CausalConv3d(channels, (1, 3, 3), (1, 2, 2), dtype=self.dtype, name="spatial")(x)
    if self.temporal:
      x = CausalConv3d(channels, (3, 1, 1), (2, 1, 1), dtype=self.dtype, name="temporal")(x)
    return _constrain(x)


class Upsample(nn.Module):
  """Inverse of Downsample: with `temporal`, 1+m frames -> 1+2m; then nearest 2x + conv in space.

  Time upsampling is depth-to-time: a causal conv makes 2C channels per frame that become two
  frames; at the start of a clip the first of frame 0's pair is dropped (frame 0 stays one
  frame, as it was encoded on its own).
  """

  temporal: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    if self.temporal:
      first = is_first_chunk(self)
      x = CausalConv3d(2 * channels, (3, 1, 1), dtype=self.dtype, name="temporal")(x)
      x = einops.rearrange(x, "b t h w (two c) -> b (t two) h w c", two=2)
      if first:
        x = x[:, 1:]
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    x = CausalConv3d(channels, (1, 3, 3), dtype=self.dtype, name="spatial")(x)
    return _constrain(x)


class Patchify(nn.Module):
  """Causal space/time-to-depth: [B, T, H, W, C] -> [B, T', H/ph, W/pw, pt*ph*pw*C].

  Time is grouped into pt frames after padding pt-1 zero frames in front, so frame 0 forms
  a group on its own (1+pt*k frames -> 1+k groups); streams like a causal conv.
  """

  patch: Sequence[int]

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    pt, ph, pw = self.patch
    if pt > 1:
      x = prepend_past(self, x, num_pad=pt - 1, window=pt, stride=pt)
    return einops.rearrange(x, "b (t pt) (h ph) (w pw) c -> b t h w (pt ph pw c)", pt=pt, ph=ph, pw=pw)


class Unpatchify(nn.Module):
  """Inverse of Patchify; drops the pt-1 padding frames at the start of a clip."""

  patch: Sequence[int]

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    pt, ph, pw = self.patch
    first = is_first_chunk(self) if pt > 1 else False
    x = einops.rearrange(x, "b t h w (pt ph pw c) -> b (t pt) (h ph) (w pw) c", pt=pt, ph=ph, pw=pw)
    return x[:, pt - 1 :] if first else x


# ---------------------------------------------------------------------------- encoder / decoder


def _res_block_class(remat: bool):
  return nn.remat(ResBlock) if remat else ResBlock


class Encoder(nn.Module):
  """video [B, T, H, W, 3] -> (mean, logvar), each [B, 1+(T-1)/tf, H/sf, W/sf, latent_channels]."""

  config: Any

  @nn.compact
  def __call__(self, video: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    cfg = self.config
    plan = compression_plan(cfg)
    dtype = compute_dtype(cfg.dtype, "vae.dtype")
    block = _res_block_class(cfg.remat)
    kernels = plan["encoder_time_kernels"]
    x = Patchify(plan["patch"])(video.astype(dtype))
    x = CausalConv3d(plan["channels"][0], (kernels[0], 3, 3), dtype=dtype, name="conv_in")(x)
    for level, channels in enumerate(plan["channels"]):
      for i in range(cfg.num_res_blocks):
        x = block(channels, dtype, cfg.norm, kernels[level], name=f"level{level}_block{i}")(x)
      if level < plan["num_levels"] - 1:
        x = Downsample(level < plan["temporal_downsamples"], dtype, name=f"down{level}")(x)
    x = block(plan["channels"][-1], dtype, cfg.norm, kernels[-1], name="mid_block0")(x)
    if cfg.mid_attention:
      x = FrameAttention(dtype, cfg.norm, name="mid_attention")(x)
    x = block(plan["channels"][-1], dtype, cfg.norm, kernels[-1], name="mid_block1")(x)
    x = nn.silu(make_norm(cfg.norm, dtype, name="norm_out")(x))
    moments = CausalConv3d(2 * cfg.latent_channels, (kernels[-1], 3, 3), dtype=jnp.float32, name="conv_out")(x)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return _constrain(mean), _constrain(jnp.clip(logvar, -30.0, 20.0))


class Decoder(nn.Module):
  """latents [B, t, h, w, latent_channels] -> video [B, 1+tf*(t-1), h*sf, w*sf, 3] (float32)."""

  config: Any

  @nn.compact
  def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    plan = compression_plan(cfg)
    dtype = compute_dtype(cfg.dtype, "vae.dtype")
    block = _res_block_class(cfg.remat)
    pt, ph, pw = plan["patch"]
    widths, kernels = plan["decoder_channels"], plan["decoder_time_kernels"]
    x = CausalConv3d(widths[-1], dtype=dtype, name="conv_in")(z.astype(dtype))
    x = block(widths[-1], dtype, cfg.norm, kernels[-1], name="mid_block0")(x)
    if cfg.mid_attention:
      x = FrameAttention(dtype, cfg.norm, name="mid_attention")(x)
    x = block(widths[-1], dtype, cfg.norm, kernels[-1], name="mid_block1")(x)
    for level in reversed(range(plan["num_levels"])):
      for i in range(cfg.num_res_blocks + 1):
        x = block(widths[level], dtype, cfg.norm, kernels[level], name=f"level{level}_block{i}")(x)
      if level > 0:
        x = Upsample(level - 1 < plan["temporal_downsamples"], dtype, name=f"up{level}")(x)
    x = nn.silu(make_norm(cfg.norm, dtype, name="norm_out")(x))
    x = CausalConv3d(3 * pt * ph * pw, (kernels[0], 3, 3), dtype=jnp.float32, name="conv_out")(x)
    return _constrain(Unpatchify(plan["patch"])(x))


# ---------------------------------------------------------------------------- the VAE


def kl_divergence(mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """KL(N(mean, exp(logvar)) || N(0, 1)) per latent element, averaged: a scalar (float32)."""
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  return 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def sample_posterior(rng: jax.Array, mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


class CausalVAE(nn.Module):
  """The causal video VAE. `config` is the `vae` section of the config (frozen on construction).

  Methods (use with `module.apply(..., method=CausalVAE.<name>)`):
    encode(video [B, T, H, W, 3] in [-1, 1]) -> (mean, logvar) [B, 1+(T-1)/tf, H/sf, W/sf, C]
    decode(z [B, t, h, w, C]) -> video [B, 1+tf*(t-1), h*sf, w*sf, 3] (float32, ~[-1, 1])
    __call__(video, sample=True) -> (reconstruction, mean, logvar); needs rng "sample" if sample.
    encode_chunk / decode_chunk: the same without the whole-clip shape check, for streaming
      with a mutable "cache" collection (see encode_video / decode_latents).
  """

  config: Any

  def __post_init__(self):
    if isinstance(self.config, ml_collections.ConfigDict):
      # Hashable, so the module can be a static argument of jax.jit.
      object.__setattr__(self, "config", ml_collections.FrozenConfigDict(self.config))
    super().__post_init__()

  def setup(self):
    compression_plan(self.config)
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def encode(self, video: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    check_video_shape(video.shape, self.config)
    return self.encoder(video)

  def decode(self, z: jnp.ndarray) -> jnp.ndarray:
    check_latent_shape(z.shape, self.config)
    return self.decoder(z)

  def encode_chunk(self, frames: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self.encoder(frames)

  def decode_chunk(self, z: jnp.ndarray) -> jnp.ndarray:
    return self.decoder(z)

  def __call__(self, video: jnp.ndarray, sample: bool = True):
    mean, logvar = self.encode(video)
    z = sample_posterior(self.make_rng("sample"), mean, logvar) if sample else mean
    return self.decode(z), mean, logvar


# ---------------------------------------------------------------------------- chunked streaming


def _stream(apply_chunk: Callable, x: jnp.ndarray, first_len: int, chunk_len: int):
  """Runs apply_chunk(cache, frames) -> (outputs, cache) over time chunks of x [B, T, ...].

  The first chunk (first_len frames) starts the stream; the following full chunks run under
  lax.scan, sliced from x inside the loop, so one chunk of activations is alive at a time;
  a shorter remainder runs last. Returns the outputs concatenated over time (a pytree of
  [B, T', ...] arrays).
  """
  outputs, cache = apply_chunk(None, x[:, :first_len])
  pieces = [outputs]
  num_full = (x.shape[1] - first_len) // chunk_len
  if num_full:

    def body(carry, index):
      chunk = lax.dynamic_slice_in_dim(x, first_len + index * chunk_len, chunk_len, axis=1)
      out, carry = apply_chunk(carry, chunk)
      return carry, out

    cache, stacked = lax.scan(body, cache, jnp.arange(num_full))
    pieces.append(jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], -1, *a.shape[3:]), stacked))
  start = first_len + num_full * chunk_len
  if start < x.shape[1]:
    out, _ = apply_chunk(cache, x[:, start:])
    pieces.append(out)
  return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *pieces)


def _chunk_applier(module: CausalVAE, params, method: str) -> Callable:
  def apply_chunk(cache, frames):
    variables = {"params": params} if cache is None else {"params": params, CACHE: cache}
    out, state = module.apply(variables, frames, method=method, mutable=[CACHE])
    return out, state[CACHE]

  return apply_chunk


@functools.partial(jax.jit, static_argnums=(0, 3))
def _encode_streamed(module: CausalVAE, params, video: jnp.ndarray, chunk_frames: int):
  if chunk_frames <= 0:
    return module.apply({"params": params}, video, method="encode")
  # Methods by name: any VAE module with encode/decode(_chunk) streams here (ours, models/wan/vae.py).
  return _stream(_chunk_applier(module, params, "encode_chunk"), video, 1, chunk_frames * module.config.temporal_factor)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode_streamed(module: CausalVAE, params, z: jnp.ndarray, chunk_frames: int):
  if chunk_frames <= 0:
    return module.apply({"params": params}, z, method="decode")
  return _stream(_chunk_applier(module, params, "decode_chunk"), z, 1, chunk_frames)


# ---------------------------------------------------------------------------- spatial tiling


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
  if tile >= size:
    return [0]
  starts = list(range(0, size - tile, stride))
  return starts + [size - tile]


def _ramp(length: int, overlap: int) -> np.ndarray:
  """Blend weights along one axis of a tile: linear up/down over `overlap` at both ends, > 0."""
  i = np.arange(length, dtype=np.float32)
  return np.clip(np.minimum(i + 1, length - i) / (overlap + 1), 1e-3, 1.0)


def blend_tiles(fn: Callable, x: jnp.ndarray, tile: int, stride: int, scale: float, unit: int = 1):
  """Applies fn to overlapping spatial tiles of x [B, T, H, W, C] and blends the results.

  Args:
    fn: maps a tile [B, T, tile, tile, C] to a pytree of [B, T', tile*scale, tile*scale, C'].
    tile, stride: tile size and step in x's pixels (multiples of `unit`).
    scale: output pixels per input pixel (1/sf for encoding, sf for decoding).
    unit: tile starts are multiples of this (the spatial factor when encoding).
  Returns:
    fn's pytree for the whole frame, each output pixel the ramp-weighted mean of the tiles
    covering it; equals fn(x) wherever fn is pointwise in space.
  """
  _, _, height, width, _ = x.shape
  tile_h, tile_w = min(tile, height), min(tile, width)
  rows = _tile_starts(height, tile_h, stride)
  cols = _tile_starts(width, tile_w, stride)
  if any(s % unit for s in rows + cols):
    raise ValueError(f"tile starts {rows}, {cols} must be multiples of {unit}")
  overlap_out = max(int(round((tile - stride) * scale)), 0)
  total, weight_sum = None, None
  for r in rows:
    for c in cols:
      out = fn(x[:, :, r : r + tile_h, c : c + tile_w])
      leaves, treedef = jax.tree.flatten(out)
      h_out, w_out = leaves[0].shape[2], leaves[0].shape[3]
      weight = jnp.asarray(np.outer(_ramp(h_out, overlap_out), _ramp(w_out, overlap_out)))
      weight = weight[None, None, :, :, None]
      r0, c0 = int(round(r * scale)), int(round(c * scale))
      if total is None:
        shape = lambda a: (a.shape[0], a.shape[1], int(round(height * scale)), int(round(width * scale)), a.shape[4])
        total = [jnp.zeros(shape(a), jnp.float32) for a in leaves]
        weight_sum = jnp.zeros((1, 1) + total[0].shape[2:4] + (1,), jnp.float32)
      region = (slice(None), slice(None), slice(r0, r0 + h_out), slice(c0, c0 + w_out))
      total = [t.at[region].add(weight * a.astype(jnp.float32)) for t, a in zip(total, leaves)]
      weight_sum = weight_sum.at[region].add(weight)
  return jax.tree.unflatten(treedef, [t / weight_sum for t in total])


def _tiling(config, tile: int | None, overlap: float | None) -> tuple[int, float]:
  tile = config.tile_size if tile is None else tile
  overlap = config.tile_overlap if overlap is None else overlap
  if tile and tile % config.spatial_factor:
    raise ValueError(
      f"tile size {tile} must be a multiple of the spatial factor "
      f"{config.spatial_factor} (e.g. {max(tile // config.spatial_factor, 1) * config.spatial_factor})"
    )
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"tile overlap must be a fraction in [0, 1), got {overlap}")
  return tile, overlap


def encode_video(
  module: CausalVAE,
  params,
  video,
  *,
  chunk_frames: int | None = None,
  tile: int | None = None,
  tile_overlap: float | None = None,
):
  """Encodes video [B, T, H, W, 3] in [-1, 1] -> (mean, logvar) [B, 1+(T-1)/tf, H/sf, W/sf, C].

  Args:
    chunk_frames: latent frames per time chunk (0 = whole clip); memory then scales with the
      chunk, not the clip. None = config.encode_chunk_frames.
    tile: spatial tile size in pixels (multiple of sf; 0 = off). None = config.tile_size.
    tile_overlap: fraction of a tile shared with its neighbour. None = config.tile_overlap.
  """
  config = module.config
  video = jnp.asarray(video, jnp.float32)
  check_video_shape(video.shape, config)
  chunk = config.encode_chunk_frames if chunk_frames is None else chunk_frames
  tile, overlap = _tiling(config, tile, tile_overlap)
  fn = lambda v: _encode_streamed(module, params, v, chunk)
  if not tile or tile >= max(video.shape[2:4]):
    return fn(video)
  sf = config.spatial_factor
  stride = max(sf, int(round(tile * (1 - overlap) / sf)) * sf)
  return blend_tiles(fn, video, tile, stride, 1.0 / sf, unit=sf)


def decode_latents(
  module: CausalVAE,
  params,
  latents,
  *,
  chunk_frames: int | None = None,
  tile: int | None = None,
  tile_overlap: float | None = None,
) -> jnp.ndarray:
  """Decodes latents [B, t, h, w, C] -> video [B, 1+tf*(t-1), h*sf, w*sf, 3] float32 in ~[-1, 1].

  chunk_frames (latent frames per chunk), tile (pixels) and tile_overlap as in encode_video.
  """
  config = module.config
  latents = jnp.asarray(latents, jnp.float32)
  check_latent_shape(latents.shape, config)
  chunk = config.encode_chunk_frames if chunk_frames is None else chunk_frames
  tile, overlap = _tiling(config, tile, tile_overlap)
  fn = lambda z: _decode_streamed(module, params, z, chunk)
  sf = config.spatial_factor
  latent_tile = tile // sf
  if not tile or latent_tile >= max(latents.shape[2:4]):
    return fn(latents)
  stride = max(1, int(round(latent_tile * (1 - overlap))))
  return blend_tiles(fn, latents, latent_tile, stride, float(sf))


# ---------------------------------------------------------------------------- latent statistics


def latent_channel_stats(latents: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
  """Per-channel mean and std over batches of latents [B, t, h, w, C] -> {"mean", "std"} [C].

  The DiT trains on (z - mean) / std, i.e. unit-variance latents per channel.
  """
  total = count = total_sq = 0.0
  for z in latents:
    z = np.asarray(z, np.float64).reshape(-1, np.shape(z)[-1])
    total = total + z.sum(0)
    total_sq = total_sq + np.square(z).sum(0)
    count += z.shape[0]
  if not count:
    raise ValueError("latent_channel_stats needs at least one batch of latents")
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return {"mean": mean.astype(np.float32), "std": np.maximum(std, 1e-6).astype(np.float32)}


def _check_finite_stats(stats: dict[str, np.ndarray], what: str) -> None:
  bad = [k for k, v in stats.items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]
  if bad:
    raise NonFiniteError(
      f"{what}: {' and '.join(bad)} hold NaN or Inf values: the VAE's encoder produced non-finite latents "
      f"(its training diverged). Retrain the VAE (e.g. a lower --config.train.learning_rate) before using it."
    )


def save_latent_stats(workdir: str, stats: dict[str, np.ndarray], **info) -> str:
  """Writes <workdir>/latent_stats.json ({"mean": [C], "std": [C], **info}); returns the path.

  Raises:
    NonFiniteError: a statistic is NaN or Inf (the VAE's encoder diverged); nothing is written.
  """
  path = os.path.join(workdir, LATENT_STATS_FILE)
  _check_finite_stats(stats, f"the latent statistics for {path}")
  record = {k: np.asarray(v).tolist() for k, v in stats.items()}
  record.update(info)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, path)
  return path


def load_latent_stats(workdir: str, latent_channels: int) -> dict[str, np.ndarray]:
  """{"mean", "std"} float32 [C] from <workdir>/latent_stats.json; identity stats if missing."""
  path = os.path.join(workdir, LATENT_STATS_FILE)
  if not os.path.exists(path):
    import logging

    logging.warning(
      "%s is missing (the VAE run did not finish); using mean 0, std 1. Re-run "
      "tools/train_vae.py with the same --workdir to compute the statistics.",
      path,
    )
    return {"mean": np.zeros((latent_channels,), np.float32), "std": np.ones((latent_channels,), np.float32)}
  with open(path) as f:
    record = json.load(f)
  stats = {k: np.asarray(record[k], np.float32) for k in ("mean", "std")}
  _check_finite_stats(stats, path)
  if stats["mean"].shape != (latent_channels,):
    raise ValueError(
      f"{path} holds statistics for {stats['mean'].shape[0]} channels but the VAE has "
      f"{latent_channels}; delete it and re-run tools/train_vae.py to recompute"
    )
  return stats
