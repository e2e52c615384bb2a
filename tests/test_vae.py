"""Tests of the causal 3D VAE model: causal conv math, shapes, causality, streaming, tiling, errors.

Tiny configs (4-16 channels, 8-16 pixels) keep every test well under a few seconds.
Parity: the causal conv against a numpy loop, and (with the [peers] extra) the causal conv,
RMS norm and residual block against diffusers' PyTorch AutoencoderKLWan modules.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax.models import vae as vae_lib
from sora_jax.models.causal_conv import KERNEL_AXES, CausalConv3d
from sora_jax.models.vae import CausalVAE, decode_latents, encode_video

RNG = np.random.default_rng(0)


def tiny_config(**overrides):
  """4x4x4 compression by convs only: 3 levels, two temporal downsamplings."""
  cfg = base.get_config().vae
  cfg.update(
    temporal_factor=4,
    spatial_factor=4,
    patch_size=(1, 1, 1),
    latent_channels=4,
    base_channels=4,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    mid_attention=True,
  )
  cfg.update(overrides)
  return cfg


def patched_config(**overrides):
  """4x4x4 compression with a (2, 2, 2) patchify and one conv temporal downsampling, no norms."""
  overrides = {"mid_attention": False, "norm": "none", **overrides}
  return tiny_config(patch_size=(2, 2, 2), channel_multipliers=(1, 2), base_channels=8, **overrides)


def asymmetric_config(**overrides):
  """A (4, 2, 2) patchify (all of time in the patch) and a wider decoder, both with per-frame 2D
  convs at their finest level (the demo VAE's layout, smaller)."""
  overrides = {
    "mid_attention": False,
    "norm": "none",
    "decoder_channel_multipliers": (2, 2),
    "encoder_time_kernels": (1, 3),
    "decoder_time_kernels": (1, 3),
    **overrides,
  }
  return tiny_config(patch_size=(4, 2, 2), channel_multipliers=(1, 2), base_channels=8, **overrides)


def random_video(frames, height=8, width=8, batch=1):
  return jnp.asarray(RNG.uniform(-1, 1, (batch, frames, height, width, 3)), jnp.float32)


def init(cfg, video):
  """(model, random params) without compiling model.init: shapes from eval_shape, values from numpy."""
  model = CausalVAE(cfg)
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, video))
  rng = np.random.default_rng(1)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "scale" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 10
    return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), jnp.float32)

  return model, jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract["params"]))


@pytest.fixture(scope="module")
def tiny():
  return init(tiny_config(), random_video(5))


@pytest.fixture(scope="module")
def patched():
  return init(patched_config(), random_video(5))


@pytest.fixture(scope="module")
def asymmetric():
  return init(asymmetric_config(), random_video(5))


@functools.partial(jax.jit, static_argnums=0)
def encode(model, params, video):
  return model.apply({"params": params}, video, method=CausalVAE.encode)


@functools.partial(jax.jit, static_argnums=0)
def decode(model, params, z):
  return model.apply({"params": params}, z, method=CausalVAE.decode)


# ---------------------------------------------------------------------------- causal conv math


def numpy_causal_conv(x, kernel, bias, strides):
  """Independent reference: zero-pad kt-1 past frames and 'same' space, then sum of tap matmuls."""
  kt, kh, kw = kernel.shape[:3]
  st, sh, sw = strides
  xp = np.pad(x, ((0, 0), (kt - 1, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  t_out = (xp.shape[1] - kt) // st + 1
  h_out = (xp.shape[2] - kh) // sh + 1
  w_out = (xp.shape[3] - kw) // sw + 1
  out = np.zeros((x.shape[0], t_out, h_out, w_out, kernel.shape[-1]))
  for a in range(kt):
    for b in range(kh):
      for c in range(kw):
        window = xp[:, a : a + st * t_out : st, b : b + sh * h_out : sh, c : c + sw * w_out : sw]
        out += window @ kernel[a, b, c]
  return out + bias


@pytest.mark.parametrize(
  "kernel_size,strides",
  [((3, 3, 3), (1, 1, 1)), ((3, 1, 1), (2, 1, 1)), ((1, 3, 3), (1, 2, 2)), ((1, 1, 1), (1, 1, 1))],
)
def test_causal_conv_matches_numpy(kernel_size, strides):
  x = RNG.normal(size=(2, 5, 6, 6, 3)).astype(np.float32)
  conv = CausalConv3d(4, kernel_size, strides)
  params = nn.meta.unbox(conv.init(jax.random.key(0), x))
  params = jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape), jnp.float32), params)
  got = conv.apply(params, x)
  want = numpy_causal_conv(x, np.asarray(params["params"]["kernel"]), np.asarray(params["params"]["bias"]), strides)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_causal_conv_never_looks_ahead():
  x = RNG.normal(size=(1, 6, 4, 4, 2)).astype(np.float32)
  conv = CausalConv3d(3)
  params = conv.init(jax.random.key(0), x)
  y = conv.apply(params, x)
  x2 = x.copy()
  x2[:, 3] += 1.0
  y2 = conv.apply(params, x2)
  np.testing.assert_array_equal(y[:, :3], y2[:, :3])
  assert np.abs(np.asarray(y2[:, 3:] - y[:, 3:])).max() > 1e-3


def test_params_carry_logical_axis_names():
  model = CausalVAE(tiny_config())
  boxed = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, jnp.zeros((1, 5, 8, 8, 3)))
  )["params"]
  allowed = {name for name, _ in base.LOGICAL_AXIS_RULES}
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
  for path, leaf in jax.tree_util.tree_leaves_with_path(
    boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  ):
    assert set(leaf.names) - {None} <= allowed, path  # None = an axis deliberately left unnamed
    assert len(leaf.names) == leaf.value.ndim, path
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      assert tuple(leaf.names) == KERNEL_AXES
    if jax.tree_util.keystr(path).endswith("['scale']"):
      assert tuple(leaf.names) == ("norm",)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
  "make_config,frames,height,width",
  [
    (tiny_config, 1, 8, 8),
    (tiny_config, 5, 16, 24),
    (tiny_config, 17, 32, 8),
    (tiny_config, 33, 8, 16),
    (patched_config, 1, 16, 16),
    (patched_config, 5, 8, 8),
    (patched_config, 17, 24, 16),
    (patched_config, 33, 8, 8),
    (asymmetric_config, 1, 8, 8),
    (asymmetric_config, 5, 16, 8),
    (asymmetric_config, 17, 8, 8),
    (asymmetric_config, 33, 8, 16),
  ],
)
def test_shapes(make_config, frames, height, width):
  cfg = make_config()
  model = CausalVAE(cfg)
  video = jax.ShapeDtypeStruct((2, frames, height, width, 3), jnp.float32)
  variables = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, jnp.zeros((1, 5, 8, 8, 3)))
  )
  mean, logvar = jax.eval_shape(lambda v, x: model.apply(v, x, method=CausalVAE.encode), variables, video)
  want = (2, 1 + (frames - 1) // 4, height // 4, width // 4, 4)
  assert mean.shape == logvar.shape == want
  assert want[1:] == vae_lib.latent_shape(cfg, frames, height, width)
  recon = jax.eval_shape(lambda v, z: model.apply(v, z, method=CausalVAE.decode), variables, mean)
  assert recon.shape == video.shape and recon.dtype == jnp.float32


def test_forward_runs_and_is_finite(tiny):
  model, params = tiny
  video = random_video(9, batch=2)
  forward = jax.jit(
    lambda p, v, r, sample: model.apply({"params": p}, v, sample=sample, rngs={"sample": r}), static_argnums=3
  )
  recon, mean, logvar = forward(params, video, jax.random.key(3), True)
  assert recon.shape == video.shape and mean.shape == logvar.shape == (2, 3, 2, 2, 4)
  assert np.isfinite(np.asarray(recon)).all()
  recon_mean, _, _ = forward(params, video, jax.random.key(3), False)
  np.testing.assert_allclose(recon_mean, decode(model, params, encode(model, params, video)[0]), atol=1e-5)
  assert not np.allclose(recon, recon_mean)  # sampling adds noise to z


# ---------------------------------------------------------------------------- causality


@pytest.mark.parametrize("fixture", ["tiny", "patched", "asymmetric"])
def test_changing_frame_k_never_changes_earlier_latents(fixture, request):
  model, params = request.getfixturevalue(fixture)
  video = random_video(9, batch=2)
  mean, _ = encode(model, params, video)
  for frame, first_affected in ((0, 0), (3, 1), (4, 1), (5, 2), (8, 2)):
    changed = video.at[:, frame].add(0.5)
    mean2, _ = encode(model, params, changed)
    np.testing.assert_allclose(mean2[:, :first_affected], mean[:, :first_affected], atol=1e-6)
    assert np.abs(np.asarray(mean2[:, first_affected] - mean[:, first_affected])).max() > 1e-5


@pytest.mark.parametrize("fixture", ["tiny", "patched", "asymmetric"])
def test_decoder_is_causal(fixture, request):
  model, params = request.getfixturevalue(fixture)
  z = jnp.asarray(RNG.normal(size=(2, 3, 2, 2, 4)), jnp.float32)
  video = decode(model, params, z)
  video2 = decode(model, params, z.at[:, 1].add(1.0))
  np.testing.assert_allclose(video2[:, :1], video[:, :1], atol=1e-6)  # frame 0 comes from latent 0 only
  assert np.abs(np.asarray(video2[:, 1:5] - video[:, 1:5])).max() > 1e-4


# ---------------------------------------------------------------------------- chunked == whole


@pytest.mark.parametrize("fixture", ["tiny", "patched", "asymmetric"])
def test_chunked_encode_decode_equals_whole_clip(fixture, request):
  model, params = request.getfixturevalue(fixture)
  chunk = 2
  video = random_video(13, batch=2)  # latent frame 0, one scanned chunk of 2, a remainder of 1
  mean, logvar = encode(model, params, video)
  mean_c, logvar_c = encode_video(model, params, video, chunk_frames=chunk)
  np.testing.assert_allclose(mean_c, mean, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logvar_c, logvar, atol=1e-5, rtol=1e-5)
  recon = decode(model, params, mean)
  recon_c = decode_latents(model, params, mean, chunk_frames=chunk)
  np.testing.assert_allclose(recon_c, recon, atol=1e-5, rtol=1e-5)


def test_chunked_encode_memory_is_bounded_by_the_chunk(tiny):
  """The compiled chunked encoder's temporary memory does not grow with the clip length."""
  model, params = tiny

  def temp_bytes(frames, chunk):
    fn = jax.jit(lambda v: encode_video(model, params, v, chunk_frames=chunk)[0])
    compiled = fn.lower(jax.ShapeDtypeStruct((1, frames, 16, 16, 3), jnp.float32)).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
      pytest.skip("this backend gives no memory analysis")
    return analysis.temp_size_in_bytes

  short, long = temp_bytes(9, 1), temp_bytes(65, 1)
  whole_long = temp_bytes(65, 0)
  latent_bytes = 2 * 17 * 4 * 4 * 4 * 4  # mean + logvar of the long clip
  assert long <= short + 4 * latent_bytes
  assert whole_long > 4 * long


# ---------------------------------------------------------------------------- tiling


def test_blend_tiles_is_exact_for_blockwise_functions():
  """Where fn is pointwise (decode direction) or per-block (encode direction), tiling is exact."""
  x = jnp.asarray(RNG.normal(size=(1, 3, 20, 28, 2)), jnp.float32)
  upsample = lambda t: jnp.repeat(jnp.repeat(2 * t, 2, axis=2), 2, axis=3)
  np.testing.assert_allclose(vae_lib.blend_tiles(upsample, x, tile=8, stride=6, scale=2.0), upsample(x), atol=1e-5)
  pool = lambda t: t.reshape(t.shape[0], t.shape[1], t.shape[2] // 2, 2, t.shape[3] // 2, 2, -1).mean((3, 5))
  np.testing.assert_allclose(vae_lib.blend_tiles(pool, x, tile=8, stride=4, scale=0.5, unit=2), pool(x), atol=1e-5)
  with pytest.raises(ValueError, match="multiples of 4"):
    vae_lib.blend_tiles(pool, x, tile=8, stride=6, scale=0.5, unit=4)


def test_tiled_encode_decode(tiny):
  model, params = tiny
  video = random_video(5, 16, 24)
  mean, _ = encode(model, params, video)
  # A tile covering the frame is the untiled computation.
  np.testing.assert_allclose(encode_video(model, params, video, tile=24)[0], mean, atol=1e-6)
  tiled, _ = encode_video(model, params, video, tile=8, tile_overlap=0.5)
  assert tiled.shape == mean.shape and np.isfinite(np.asarray(tiled)).all()
  assert not np.allclose(tiled, mean)  # tiles really were encoded on their own
  recon = decode_latents(model, params, mean, tile=8, tile_overlap=0.5)
  assert recon.shape == video.shape and np.isfinite(np.asarray(recon)).all()
  with pytest.raises(ValueError, match="multiple of the spatial factor"):
    encode_video(model, params, video, tile=6)


# ---------------------------------------------------------------------------- KL, dtype, remat


def test_kl_of_standard_normal_posterior_is_zero():
  zeros = jnp.zeros((2, 3, 4, 4, 8))
  assert float(vae_lib.kl_divergence(zeros, zeros)) == pytest.approx(0.0, abs=1e-7)


def test_kl_matches_closed_form_in_numpy():
  mean = RNG.normal(size=(2, 3, 4)).astype(np.float32)
  logvar = RNG.normal(size=(2, 3, 4)).astype(np.float32)
  sigma = np.exp(0.5 * logvar.astype(np.float64))
  # KL(N(m, s^2) || N(0, 1)) = -log s + (s^2 + m^2) / 2 - 1/2
  want = np.mean(-np.log(sigma) + (sigma**2 + mean**2) / 2 - 0.5)
  assert float(vae_lib.kl_divergence(mean, logvar)) == pytest.approx(want, rel=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_output(tiny):
  _, params = tiny
  model16 = CausalVAE(tiny_config(dtype="bfloat16"))
  video = random_video(9, batch=2)
  mean32, _ = encode(CausalVAE(tiny_config()), params, video)
  mean16, _ = encode(model16, params, video)
  assert mean16.dtype == jnp.float32 and all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  np.testing.assert_allclose(mean16, mean32, atol=0.1)
  assert not np.array_equal(mean16, mean32)  # really computed in bfloat16


def test_remat_gives_identical_gradients(patched):
  _, params = patched
  video = random_video(5)

  def grads(cfg):
    encoder = vae_lib.Encoder(cfg)
    loss = lambda p: jnp.mean(encoder.apply({"params": p}, video)[0] ** 2)
    return jax.jit(jax.grad(loss))(params["encoder"])

  plain, remat = grads(patched_config()), grads(patched_config(remat=True))
  assert jax.tree.structure(plain) == jax.tree.structure(remat)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- errors


def test_bad_frame_count_names_the_nearest_valid_counts(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match=r"1\+4k.*13 and 17"):
    encode(model, params, random_video(16))
  with pytest.raises(ValueError, match="num_frames"):
    encode_video(model, params, random_video(6))


def test_bad_height_width_says_how_to_fix(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match=r"height 10 is not divisible by the VAE spatial factor 4.*8 or 12"):
    encode(model, params, random_video(9, 10, 8))
  with pytest.raises(ValueError, match="width 6"):
    encode(model, params, random_video(9, 8, 6))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    encode(model, params, jnp.zeros((1, 5, 8, 8, 4)))
  with pytest.raises(ValueError, match="latents"):
    decode(model, params, jnp.zeros((1, 2, 2, 2, 3)))


def test_inconsistent_config_is_rejected():
  with pytest.raises(ValueError, match="channel_multipliers"):
    vae_lib.compression_plan(tiny_config(channel_multipliers=(1, 2)))
  with pytest.raises(ValueError, match="temporal_factor"):
    vae_lib.compression_plan(tiny_config(temporal_factor=3))
  with pytest.raises(ValueError, match="vae.norm"):
    vae_lib.compression_plan(tiny_config(norm="group"))
  with pytest.raises(ValueError, match="decoder_channel_multipliers"):
    vae_lib.compression_plan(patched_config(decoder_channel_multipliers=(1, 2, 2)))
  with pytest.raises(ValueError, match="decoder_time_kernels"):
    vae_lib.compression_plan(patched_config(decoder_time_kernels=(2, 3)))
  with pytest.raises(ValueError, match=r"encoder_time_kernels=\(1,\) needs 2 entries"):
    vae_lib.compression_plan(patched_config(encoder_time_kernels=(1,)))
  with pytest.raises(ValueError, match=r"vae.spatial_factor must be one of \(1, 2, 4, 8, 16, 32\), got 3"):
    vae_lib.compression_plan(tiny_config(spatial_factor=3))


def test_asymmetric_decoder_layout():
  """The decoder may be wider than the encoder; the time kernels are per level."""
  plan = vae_lib.compression_plan(asymmetric_config())
  assert plan["patch"] == (4, 2, 2) and plan["temporal_downsamples"] == 0
  assert plan["channels"] == (8, 16) and plan["decoder_channels"] == (16, 16)
  assert plan["encoder_time_kernels"] == plan["decoder_time_kernels"] == (1, 3)
  model, params = init(asymmetric_config(), random_video(5))
  encoder, decoder = params["encoder"], params["decoder"]
  assert encoder["conv_in"]["kernel"].shape[:3] == (1, 3, 3)
  assert encoder["level0_block0"]["CausalConv3d_0"]["kernel"].shape[:3] == (1, 3, 3)
  assert encoder["mid_block0"]["CausalConv3d_0"]["kernel"].shape[:3] == (3, 3, 3)
  assert encoder["conv_out"]["kernel"].shape[:3] == (3, 3, 3)
  assert decoder["level0_block0"]["CausalConv3d_0"]["kernel"].shape[:3] == (1, 3, 3)  # per-frame 2D
  assert decoder["level1_block0"]["CausalConv3d_0"]["kernel"].shape[:3] == (3, 3, 3)  # causal 3D
  assert decoder["conv_out"]["kernel"].shape == (1, 3, 3, 16, 3 * 4 * 2 * 2)  # 4 frames of 2x2 pixels
  same = vae_lib.compression_plan(patched_config())
  assert same["decoder_channels"] == same["channels"]
  assert same["encoder_time_kernels"] == same["decoder_time_kernels"] == (3, 3)


# ---------------------------------------------------------------------------- diffusers parity


def _wan_modules():
  pytest.importorskip("torch", reason="needs the [peers] extra: pip install torch==2.13.0 diffusers")
  wan = pytest.importorskip(
    "diffusers.models.autoencoders.autoencoder_kl_wan",
    reason="needs the [peers] extra: pip install torch==2.13.0 diffusers",
  )
  return wan


def _to_torch(x):
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))  # [B,T,H,W,C] -> [B,C,T,H,W]


def _from_torch(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def _conv_params(torch_conv):
  return {
    "kernel": jnp.asarray(torch_conv.weight.detach().numpy().transpose(2, 3, 4, 1, 0)),
    "bias": jnp.asarray(torch_conv.bias.detach().numpy()),
  }


@pytest.mark.peers
def test_causal_conv_matches_diffusers_wan_causal_conv_with_cache():
  import torch

  wan = _wan_modules()
  torch.manual_seed(0)
  ref = wan.WanCausalConv3d(3, 5, 3, padding=1)
  x = RNG.normal(size=(1, 5, 6, 6, 3)).astype(np.float32)
  conv = CausalConv3d(5)
  params = {"params": _conv_params(ref)}
  with torch.no_grad():
    want = _from_torch(ref(_to_torch(x)))
    # Wan streaming: frame 0 alone, then frames 1-4 with the previous frame as cache_x.
    want_chunk = _from_torch(ref(_to_torch(x[:, 1:]), cache_x=_to_torch(x[:, :1])))
  np.testing.assert_allclose(conv.apply(params, x), want, rtol=1e-4, atol=1e-5)
  _, cache = conv.apply(params, x[:, :1], mutable=["cache"])
  got_chunk, _ = conv.apply({**params, **cache}, x[:, 1:], mutable=["cache"])
  np.testing.assert_allclose(got_chunk, want_chunk, rtol=1e-4, atol=1e-5)


@pytest.mark.peers
def test_residual_block_matches_diffusers_wan_residual_block():
  import torch

  wan = _wan_modules()
  torch.manual_seed(0)
  ref = wan.WanResidualBlock(4, 6).eval()
  with torch.no_grad():
    for norm in (ref.norm1, ref.norm2):
      norm.gamma.copy_(torch.rand_like(norm.gamma) + 0.5)
  x = RNG.normal(size=(2, 5, 6, 6, 4)).astype(np.float32)
  params = {
    "ChannelRMSNorm_0": {"scale": jnp.asarray(ref.norm1.gamma.detach().numpy().reshape(-1))},
    "CausalConv3d_0": _conv_params(ref.conv1),
    "ChannelRMSNorm_1": {"scale": jnp.asarray(ref.norm2.gamma.detach().numpy().reshape(-1))},
    "CausalConv3d_1": _conv_params(ref.conv2),
    "shortcut": _conv_params(ref.conv_shortcut),
  }
  block = vae_lib.ResBlock(6)
  expected_tree = jax.tree.structure(nn.meta.unbox(block.init(jax.random.key(0), x)["params"]))
  assert jax.tree.structure(params) == expected_tree
  with torch.no_grad():
    want = _from_torch(ref(_to_torch(x)))
  np.testing.assert_allclose(block.apply({"params": params}, x), want, rtol=1e-4, atol=1e-4)


def test_params_unbox_under_a_mesh_with_the_config_rules():
  """Flax applies sharding constraints when unboxing under a mesh; repeated axis names would fail."""
  import flax.linen as nn
  import jax

  from configs import base
  from sora_jax.models.vae import CausalVAE
  from sora_jax.sharding import mesh as mesh_lib
  from sora_jax.sharding import partitioning

  config = base.get_config()
  config.vae.update(dict(base_channels=8, channel_multipliers=(1, 1, 1, 1), num_res_blocks=1, mid_attention=False))
  mesh = mesh_lib.make_mesh((1, 2, 1, 1), devices=jax.devices()[:2])
  module = CausalVAE(config.vae)
  with partitioning.use_mesh(mesh, partitioning.logical_rules(config)):
    variables = jax.jit(
      lambda r: nn.unbox(module.init({"params": r, "sample": r}, jax.numpy.zeros((1, 5, 16, 16, 3))))
    )(jax.random.key(0))
  assert jax.tree.leaves(variables)
