"""Wan 2.1's causal video VAE: the network of diffusers' `AutoencoderKLWan`, in Flax.

video [B, 1+4k, H, W, 3] in [-1, 1]  <->  latents [B, 1+k, H/8, W/8, 16]

    encoder: conv_in -> per level: num_res_blocks residual blocks, then (not at the last level)
             a stride-2 spatial conv and, where `temporal_downsample`, a stride-2 time conv
             -> mid block (res, frame attention, res) -> RMS norm, SiLU -> conv_out (2 x z)
             -> quant_conv (1x1x1) -> (mean, logvar)
    decoder: post_quant_conv (1x1x1) -> conv_in -> mid block -> per level (coarse to fine):
             num_res_blocks + 1 residual blocks, then a time conv making two frames of each
             (where the level upsamples time) and nearest 2x + conv halving the channels
             -> RMS norm, SiLU -> conv_out -> clamp to [-1, 1]

Every 3x3x3 conv is causal in time (two zero frames in front; `causal_conv.CausalConv3d`), norms
are Wan's per-position RMS norm (x / |x| * sqrt(C) * gamma) and attention runs within each
frame, so no output frame depends on a later input frame. Two things happen only at the
first frame of a clip, exactly as in diffusers' 1 + 4k chunked encode and frame-by-frame decode:
the time downsampler passes frame 0 through untouched and convolves (f_{2j-2}, f_{2j-1}, f_{2j})
into output frame j; the time upsampler keeps frame 0 as one frame and convolves the later
frames causally as if frame 0 were zeros. These modules stream through the "cache" collection
like ours, so `sora_jax.models.vae.encode_video` / `decode_latents` (time chunks, spatial tiles)
work on this VAE unchanged and chunked == whole clip.

The per-channel latent statistics of the released weights (`LATENTS_MEAN`, `LATENTS_STD`,
diffusers' `latents_mean` / `latents_std`) normalise latents for the DiT exactly like the
statistics our own VAE runs compute: x0 = (z - mean) / std.

Parameter names follow diffusers' module names (`down_blocks_3/conv1`, `mid_block/attentions_0`,
...), so `weights.vae_table` is one rule per tensor. Wan 2.2's residual up/down blocks
(`is_residual`) and attention in the down blocks (`attn_scales`) are not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from sora_jax.models.causal_conv import (
  CACHE,
  KERNEL_AXES,
  VIDEO_AXES,
  CausalConv3d,
  _conv3d_as_conv2d,
  is_first_chunk,
  is_streaming,
)
from sora_jax.models.dtypes import compute_dtype
from sora_jax.models.vae import check_latent_shape, check_video_shape

ARCHITECTURE = "wan2.1"
# The per-channel latent statistics of Wan 2.1's VAE (diffusers' AutoencoderKLWan defaults).
LATENTS_MEAN = (
  -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENTS_STD = (
  2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps the log-variance


def plan(config) -> dict:
  """Checks a Wan VAE config and derives its layout: encoder/decoder widths, per-level resampling.

  Raises ValueError naming the field when the sizes do not fit together.
  """
  mults = tuple(config.channel_multipliers)
  temporal = tuple(bool(t) for t in config.temporal_downsample)
  if len(temporal) != len(mults) - 1:
    raise ValueError(
      f"vae.temporal_downsample={temporal} needs {len(mults) - 1} entries (one per downsampling between the "
      f"{len(mults)} levels of vae.channel_multipliers={mults})"
    )
  spatial_factor, temporal_factor = 2 ** (len(mults) - 1), 2 ** sum(temporal)
  if (config.spatial_factor, config.temporal_factor) != (spatial_factor, temporal_factor):
    raise ValueError(
      f"vae.spatial_factor={config.spatial_factor}, vae.temporal_factor={config.temporal_factor} do not match the "
      f"layout: {len(mults)} levels halve space {len(mults) - 1} times ({spatial_factor}) and temporal_downsample "
      f"{temporal} halves time {sum(temporal)} times ({temporal_factor})"
    )
  base = config.base_channels
  decoder_base = config.get("decoder_base_channels", 0) or base
  return dict(
    encoder_dims=tuple(base * m for m in (1,) + mults),
    decoder_dims=tuple(decoder_base * m for m in (mults[-1],) + mults[::-1]),
    temporal_downsample=temporal,
    temporal_upsample=temporal[::-1],
  )


def _constrain(x):
  return nn.with_logical_constraint(x, VIDEO_AXES)


class WanRMSNorm(nn.Module):
  """Wan's RMS norm over channels: x / max(|x|_2, 1e-12) * sqrt(C) * gamma (computed in float32)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    gamma = self.param("gamma", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (channels,), jnp.float32)
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, 1e-12) * math.sqrt(channels) * gamma).astype(self.dtype)


def _kernel(module: nn.Module, name: str, shape: Sequence[int]):
  return module.param(
    name, nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_AXES), tuple(shape), jnp.float32
  )


def _bias(module: nn.Module, name: str, features: int):
  return module.param(
    name, nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (features,), jnp.float32
  )


class FrameConv(nn.Module):
  """A 2D conv applied to every frame: [B, T, H, W, C] -> [B, T, H', W', features].

  `padding` is ((top, bottom), (left, right)); kernel [1, kh, kw, C, features] (a 3D conv of time
  extent 1, so the weight table treats it like the others).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Sequence[Sequence[int]] = ((1, 1), (1, 1))
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = _kernel(self, "kernel", (1, kh, kw, x.shape[-1], self.features))
    bias = _bias(self, "bias", self.features)
    batch, frames = x.shape[:2]
    y = lax.conv_general_dilated(
      x.reshape(batch * frames, *x.shape[2:]).astype(self.dtype),
      kernel[0].astype(self.dtype),
      window_strides=tuple(self.strides),
      padding=tuple(tuple(p) for p in self.padding),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      preferred_element_type=jnp.float32,
    )
    return (y.reshape(batch, frames, *y.shape[1:]) + bias).astype(self.dtype)


class TimeDownsample(nn.Module):
  """Wan's stride-2 time conv: frame 0 passes untouched, output j >= 1 = conv(f_{2j-2}, f_{2j-1}, f_{2j}).

  1 + 2m frames -> 1 + m. Streams: the last input frame is carried to the next chunk.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = _kernel(self, "kernel", (3, 1, 1, channels, channels))
    bias = _bias(self, "bias", channels)
    first = is_first_chunk(self)
    pieces = [x[:, :1]] if first else []
    if is_streaming(self):
      context = self.variable(CACHE, "context", jnp.zeros, (x.shape[0], 1) + x.shape[2:], x.dtype)
      stream = x if first else jnp.concatenate([context.value.astype(x.dtype), x], axis=1)
    else:
      stream = x
    num_out = max((stream.shape[1] - 3) // 2 + 1, 0)
    if num_out:
      pieces.append((_conv3d_as_conv2d(stream, kernel.astype(self.dtype), (2, 1, 1)) + bias).astype(self.dtype))
    if is_streaming(self):
      rest = stream[:, 2 * num_out :]
      if rest.shape[1] != 1:
        raise ValueError(
          f"Wan VAE chunks must have 1 + 4k frames in the first chunk and 4k after it; a chunk left "
          f"{rest.shape[1]} frames for the time downsampler's context"
        )
      context.value = rest
    return jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]


class TimeUpsample(nn.Module):
  """Wan's time upsampler: frame 0 stays one frame; every later frame becomes two (a causal conv to 2C
  channels, split in time), the conv seeing zeros where frame 0 would be. 1 + m frames -> 1 + 2m."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = _kernel(self, "kernel", (3, 1, 1, channels, 2 * channels))
    bias = _bias(self, "bias", 2 * channels)
    first = is_first_chunk(self)
    rest = x[:, 1:] if first else x
    if is_streaming(self):
      context = self.variable(CACHE, "context", jnp.zeros, (x.shape[0], 2) + x.shape[2:], x.dtype)
      stream = jnp.concatenate([context.value.astype(x.dtype), rest], axis=1)
      context.value = stream[:, -2:]
    else:
      stream = jnp.pad(rest, ((0, 0), (2, 0), (0, 0), (0, 0), (0, 0)))
    pieces = [x[:, :1]] if first else []
    if stream.shape[1] > 2:
      y = (_conv3d_as_conv2d(stream, kernel.astype(self.dtype), (1, 1, 1)) + bias).astype(self.dtype)
      pieces.append(einops.rearrange(y, "b t h w (two c) -> b (t two) h w c", two=2))
    return jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]


class Resample(nn.Module):
  """WanResample: "downsample2d|3d" (pad right/bottom, stride-2 3x3 conv; + TimeDownsample) or
  "upsample2d|3d" (+ TimeUpsample first; nearest 2x, 3x3 conv to `out_channels`)."""

  mode: str
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    if self.mode.startswith("up"):
      if self.mode == "upsample3d":
        x = TimeUpsample(self.dtype, name="time_conv")(x)
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
      x = FrameConv(self.out_channels, dtype=self.dtype, name="resample")(x)
    else:
      x = FrameConv(channels, strides=(2, 2), padding=((0, 1), (0, 1)), dtype=self.dtype, name="resample")(x)
      if self.mode == "downsample3d":
        x = TimeDownsample(self.dtype, name="time_conv")(x)
    return _constrain(x)


class ResidualBlock(nn.Module):
  """norm, SiLU, causal 3x3x3 conv, norm, SiLU, causal 3x3x3 conv, plus a (1x1x1) shortcut."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = CausalConv3d(self.features, (1, 1, 1), dtype=self.dtype, name="conv_shortcut")(x)
    h = nn.silu(WanRMSNorm(self.dtype, name="norm1")(x))
    h = CausalConv3d(self.features, (3, 3, 3), dtype=self.dtype, name="conv1")(h)
    h = nn.silu(WanRMSNorm(self.dtype, name="norm2")(h))
    h = CausalConv3d(self.features, (3, 3, 3), dtype=self.dtype, name="conv2")(h)
    return _constrain(h + shortcut)


class AttentionBlock(nn.Module):
  """Single-head self-attention over the H*W positions of each frame (scale 1/sqrt(C)), residual."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, frames, height, width, channels = x.shape
    h = WanRMSNorm(self.dtype, name="norm")(x)
    qkv = FrameConv(3 * channels, (1, 1), padding=((0, 0), (0, 0)), dtype=self.dtype, name="to_qkv")(h)
    q, k, v = jnp.split(qkv.reshape(batch * frames, height * width, 3 * channels), 3, axis=-1)
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(channels)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bqk,bkc->bqc", weights, v, preferred_element_type=jnp.float32).astype(self.dtype)
    out = out.reshape(batch, frames, height, width, channels)
    out = FrameConv(channels, (1, 1), padding=((0, 0), (0, 0)), dtype=self.dtype, name="proj")(out)
    return _constrain(x + out)


class MidBlock(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    x = ResidualBlock(channels, self.dtype, name="resnets_0")(x)
    x = AttentionBlock(self.dtype, name="attentions_0")(x)
    return ResidualBlock(channels, self.dtype, name="resnets_1")(x)


class Encoder(nn.Module):
  """video [B, T, H, W, 3] -> moments [B, T', H', W', 2 * latent_channels] (before quant_conv)."""

  config: Any

  @nn.compact
  def __call__(self, video):
    cfg, layout = self.config, plan(self.config)
    dtype, dims = compute_dtype(cfg.dtype, "vae.dtype"), layout["encoder_dims"]
    x = CausalConv3d(dims[0], (3, 3, 3), dtype=dtype, name="conv_in")(video.astype(dtype))
    index = 0
    num_levels = len(dims) - 1
    for level in range(num_levels):
      for _ in range(cfg.num_res_blocks):
        x = ResidualBlock(dims[level + 1], dtype, name=f"down_blocks_{index}")(x)
        index += 1
      if level != num_levels - 1:
        mode = "downsample3d" if layout["temporal_downsample"][level] else "downsample2d"
        x = Resample(mode, dims[level + 1], dtype, name=f"down_blocks_{index}")(x)
        index += 1
    x = MidBlock(dtype, name="mid_block")(x)
    x = nn.silu(WanRMSNorm(dtype, name="norm_out")(x))
    return CausalConv3d(2 * cfg.latent_channels, (3, 3, 3), dtype=jnp.float32, name="conv_out")(x)


class UpBlock(nn.Module):
  features: int
  num_res_blocks: int
  upsample: str | None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_res_blocks + 1):
      x = ResidualBlock(self.features, self.dtype, name=f"resnets_{j}")(x)
    if self.upsample:
      x = Resample(self.upsample, self.features // 2, self.dtype, name="upsamplers_0")(x)
    return x


class Decoder(nn.Module):
  """latents (after post_quant_conv) [B, t, h, w, C] -> video [B, 1+tf*(t-1), h*sf, w*sf, 3]."""

  config: Any

  @nn.compact
  def __call__(self, z):
    cfg, layout = self.config, plan(self.config)
    dtype, dims = compute_dtype(cfg.dtype, "vae.dtype"), layout["decoder_dims"]
    x = CausalConv3d(dims[0], (3, 3, 3), dtype=dtype, name="conv_in")(z.astype(dtype))
    x = MidBlock(dtype, name="mid_block")(x)
    num_levels = len(dims) - 1
    for i in range(num_levels):
      upsample = None
      if i != num_levels - 1:
        upsample = "upsample3d" if layout["temporal_upsample"][i] else "upsample2d"
      x = UpBlock(dims[i + 1], cfg.num_res_blocks, upsample, dtype, name=f"up_blocks_{i}")(x)
    x = nn.silu(WanRMSNorm(dtype, name="norm_out")(x))
    return CausalConv3d(3, (3, 3, 3), dtype=jnp.float32, name="conv_out")(x)


class WanVAE(nn.Module):
  """Wan 2.1's VAE with the `CausalVAE` interface. `config` is a `vae` config section (`vae_config`).

  Methods (use with `module.apply(..., method=...)`):
    encode(video [B, 1+4k, H, W, 3] in [-1, 1]) -> (mean, logvar) [B, 1+k, H/8, W/8, z]
    decode(z [B, t, h, w, z]) -> video [B, 1+4(t-1), 8h, 8w, 3] float32 in [-1, 1]
    encode_chunk / decode_chunk: the same without the whole-clip shape check (streaming).
  """

  config: Any

  architecture = ARCHITECTURE

  def __post_init__(self):
    if isinstance(self.config, ml_collections.ConfigDict):
      object.__setattr__(self, "config", ml_collections.FrozenConfigDict(self.config))
    super().__post_init__()

  def setup(self):
    plan(self.config)
    z = self.config.latent_channels
    self.encoder = Encoder(self.config)
    self.quant_conv = CausalConv3d(2 * z, (1, 1, 1), dtype=jnp.float32)
    self.post_quant_conv = CausalConv3d(z, (1, 1, 1), dtype=jnp.float32)
    self.decoder = Decoder(self.config)

  def encode_chunk(self, frames):
    moments = self.quant_conv(self.encoder(frames))
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return _constrain(mean), _constrain(jnp.clip(logvar, *LOGVAR_RANGE))

  def decode_chunk(self, z):
    video = self.decoder(self.post_quant_conv(z.astype(jnp.float32)))
    return _constrain(jnp.clip(video.astype(jnp.float32), -1.0, 1.0))

  def encode(self, video):
    check_video_shape(video.shape, self.config)
    return self.encode_chunk(video)

  def decode(self, z):
    check_latent_shape(z.shape, self.config)
    return self.decode_chunk(z)

  def __call__(self, video, sample: bool = True):
    mean, logvar = self.encode(video)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng("sample"), mean.shape) if sample else mean
    return self.decode(z), mean, logvar


def vae_config(**overrides) -> ml_collections.ConfigDict:
  """A `vae` config section for Wan 2.1's VAE (the released sizes), fields overridable."""
  c = ml_collections.ConfigDict()
  c.architecture = ARCHITECTURE
  c.base_channels = 96
  c.decoder_base_channels = 0  # 0 = base_channels
  c.channel_multipliers = (1, 2, 4, 4)
  c.num_res_blocks = 2
  c.temporal_downsample = (False, True, True)
  c.latent_channels = 16
  c.temporal_factor = 4
  c.spatial_factor = 8
  c.latents_mean = LATENTS_MEAN
  c.latents_std = LATENTS_STD
  c.dtype = "float32"
  c.encode_chunk_frames = 1  # latent frames per time chunk (diffusers: 1); 0 = whole clip
  c.tile_size = 0
  c.tile_overlap = 0.25
  c.update(overrides)
  return c


def vae_config_from_diffusers(config: dict, **overrides) -> ml_collections.ConfigDict:
  """The `vae` config section of a diffusers `AutoencoderKLWan` config.json (a dict).

  Raises ValueError for Wan 2.2's VAE (residual blocks, patchified input) and other layouts we
  do not implement.
  """
  unsupported = {}
  if config.get("is_residual"):
    unsupported["is_residual"] = True
  if config.get("patch_size") not in (None, 1):
    unsupported["patch_size"] = config["patch_size"]
  if config.get("attn_scales"):
    unsupported["attn_scales"] = config["attn_scales"]
  if config.get("in_channels", 3) != 3 or config.get("out_channels", 3) != 3:
    unsupported["in/out_channels"] = (config.get("in_channels"), config.get("out_channels"))
  if unsupported:
    raise ValueError(f"this AutoencoderKLWan config uses {unsupported}: only Wan 2.1's VAE layout converts")
  mults = tuple(config.get("dim_mult", (1, 2, 4, 4)))
  temporal = tuple(bool(t) for t in config.get("temperal_downsample", (False, True, True)))
  z = config.get("z_dim", 16)
  fields = dict(
    base_channels=config.get("base_dim", 96),
    decoder_base_channels=config.get("decoder_base_dim") or 0,
    channel_multipliers=mults,
    num_res_blocks=config.get("num_res_blocks", 2),
    temporal_downsample=temporal,
    latent_channels=z,
    temporal_factor=2 ** sum(temporal),
    spatial_factor=2 ** (len(mults) - 1),
    latents_mean=tuple(config.get("latents_mean", LATENTS_MEAN)),
    latents_std=tuple(config.get("latents_std", LATENTS_STD)),
  )
  for name in ("latents_mean", "latents_std"):
    if len(fields[name]) != z:
      raise ValueError(f"{name} has {len(fields[name])} entries but z_dim={z}")
  fields.update(overrides)
  return vae_config(**fields)


def diffusers_vae_config(config) -> dict:
  """The diffusers `AutoencoderKLWan` config (constructor arguments) of a Wan `vae` config section."""
  plan(config)
  return {
    "base_dim": config.base_channels,
    "decoder_base_dim": config.decoder_base_channels or None,
    "z_dim": config.latent_channels,
    "dim_mult": list(config.channel_multipliers),
    "num_res_blocks": config.num_res_blocks,
    "attn_scales": [],
    "temperal_downsample": [bool(t) for t in config.temporal_downsample],
    "dropout": 0.0,
    "latents_mean": [float(v) for v in config.latents_mean],
    "latents_std": [float(v) for v in config.latents_std],
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
    "scale_factor_temporal": config.temporal_factor,
    "scale_factor_spatial": config.spatial_factor,
  }


def latent_stats(config) -> dict:
  """{"mean", "std"} float32 [C]: the latent normalisation of a Wan VAE config."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  return {
    "mean": np.asarray(config.latents_mean, np.float32),
    "std": np.asarray(config.latents_std, np.float32),
  }
