"""Bucket batching: the table, one size per batch, exact resume with mixed sizes, the multi-size latent
cache, one compilation per bucket."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax.data import buckets, latent_cache, pipeline
from sora_jax.models.text import build_text_encoder
from sora_jax.recipes import dit_data

SIZES = ((9, 16, 16), (9, 16, 24), (1, 16, 16))  # square, landscape, image (frames, height, width)


def _clips(size, n, seed):
  rng = np.random.default_rng(seed)
  return [
    {"video": rng.integers(0, 256, (*size, 3), dtype=np.uint8), "caption": f"a red circle number {i}"} for i in range(n)
  ]


def _encode(video):
  """A stand-in VAE (4x time, 8x space like the demo's): strided mean-pool as the mean, constant log-variance."""
  b, t, h, w, c = video.shape
  first = video[:, :1]
  rest = video[:, 1:].reshape(b, (t - 1) // 4, 4, h, w, c).mean(2) if t > 1 else video[:, :0]
  z = jnp.concatenate([first, rest], axis=1)
  mean = z.reshape(b, z.shape[1], h // 8, 8, w // 8, 8, c).mean(axis=(3, 5))
  return mean, jnp.full(mean.shape, -3.0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A latent cache with one file per split and size, as dit_data builds for a bucket table."""
  cfg = base.get_config().text
  cfg.update(dict(encoder="small", max_length=24, width=32, depth=1, num_heads=2))
  encoder = build_text_encoder(cfg)
  splits = {latent_cache.split_name("train", s): _clips(s, 11, i) for i, s in enumerate(SIZES)}
  path = str(tmp_path_factory.mktemp("cache"))
  counts = latent_cache.build_latent_cache(
    cache_dir=path,
    splits=splits,
    encode_fn=jax.jit(_encode),
    text_encoder=encoder,
    text_params=None,
    meta={"sizes": [list(s) for s in SIZES]},
    batch_size=4,
  )
  assert counts == {name: 11 for name in splits}
  return path, splits


def test_table_parses_both_forms_and_scales_batches_by_tokens():
  table = buckets.parse_table({"17x32x32": (2, 0), "17x32x48": (1, 0), "1x32x32": (1, 0), "33x32x32": (0, 8)})
  assert table == buckets.parse_table("17x32x32=2:0,17x32x48=1,1x32x32=1:0,33x32x32=0:8")
  assert buckets.parse_table(buckets.format_table(table)) == table
  assert table[(17, 32, 32)] == (0.5, 0) and table[(33, 32, 32)] == (0.0, 8)
  tokens = {(17, 32, 32): 20, (17, 32, 48): 30, (1, 32, 32): 4, (33, 32, 32): 36}
  resolved = buckets.resolve_buckets(
    table, base_batch=32, base_size=(17, 32, 32), tokens_of=tokens.__getitem__, multiple=4
  )
  batch = {b.size: b.batch_size for b in resolved}
  # 32 x 20 tokens = 640 per step: 640/30 = 21.3 -> 20 (multiple of 4); 640/4 = 160; 33 frames given.
  assert batch == {(17, 32, 32): 32, (17, 32, 48): 20, (1, 32, 32): 160, (33, 32, 32): 8}
  with pytest.raises(ValueError, match="multiple of 4"):
    buckets.resolve_buckets(
      {(17, 32, 32): (1.0, 6)}, base_batch=32, base_size=(17, 32, 32), tokens_of=tokens.__getitem__, multiple=4
    )
  for bad, match in (
    ({"17x32": (1, 0)}, "FRAMESxHEIGHTxWIDTH"),
    ({"17x32x32": (-1, 0)}, "probability"),
    ({"17x32x32": (0, 0)}, "sum to 0"),
    ({}, "empty"),
    ("17x32x32", "needs a probability"),
  ):
    with pytest.raises(ValueError, match=match):
      buckets.parse_table(bad)


def test_latent_cache_round_trips_variable_shapes(cache):
  path, splits = cache
  for name, clips in splits.items():
    source = latent_cache.LatentCacheSource(path, name)
    t, h, w = clips[0]["video"].shape[:3]
    for i in (0, 10):  # record 10 comes from a padded batch of the size
      record = source[i]
      expected, _ = _encode(jnp.asarray(clips[i]["video"][None], jnp.float32) / 127.5 - 1.0)
      assert record["latent_mean"].shape == (1 + (t - 1) // 4, h // 8, w // 8, 3)
      np.testing.assert_allclose(record["latent_mean"], np.asarray(expected[0]), atol=2e-3)  # float16 storage
      assert record["caption"] == clips[i]["caption"]


def _mixture(path, seed=0, batch_sizes=(4, 2, 8), probabilities=(0.5, 0.25, 0.25)):
  iterators, probs = {}, {}
  for size, batch, p in zip(SIZES, batch_sizes, probabilities, strict=True):
    name = buckets.size_name(size)
    source = latent_cache.LatentCacheSource(path, latent_cache.split_name("train", size))
    iterators[name] = pipeline.make_iterator(source, batch_size=batch, seed=seed, prefetch=2)
    probs[name] = p
  return buckets.BucketMixture(iterators, probs, seed=seed)


def _size_of(batch):
  return tuple(batch["latent_mean"].shape)


def test_each_batch_is_one_size_with_its_batch_size(cache):
  path, _ = cache
  mixture = _mixture(path)
  seen = {}
  for _ in range(40):
    name = mixture.next_name()
    batch = next(mixture)
    shape = _size_of(batch)
    assert all(np.asarray(v).shape[0] == shape[0] for v in batch.values()), "every field has the batch's rows"
    seen.setdefault(name, set()).add(shape)
  mixture.close()
  assert seen == {
    "9x16x16": {(4, 3, 2, 2, 3)},
    "9x16x24": {(2, 3, 2, 3, 3)},
    "1x16x16": {(8, 1, 2, 2, 3)},
  }
  assert mixture.counts["9x16x16"] > mixture.counts["9x16x24"], "drawn by probability (0.5 vs 0.25 over 40 draws)"


def test_resume_mid_epoch_gives_the_identical_next_batches(cache):
  path, _ = cache
  first = _mixture(path, seed=3)
  for _ in range(7):  # 11 clips per size: mid-epoch for every bucket
    next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(6)]
  first.close()
  assert len({_size_of(b)[1:] for b in expected}) > 1, "the batches after the resume point mix sizes"

  resumed = _mixture(path, seed=3)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert _size_of(got) == _size_of(want)
    for key in want:
      np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
  resumed.close()

  other = _mixture(path, seed=3, batch_sizes=(4, 2, 8))
  bad = other._iterators.pop("1x16x16")
  bad.close()
  other.names.remove("1x16x16")
  with pytest.raises(ValueError, match="bucket table"):
    other.set_state(state)


def test_a_jitted_step_compiles_once_per_bucket(cache):
  path, _ = cache
  traces = []

  @jax.jit
  def step(batch):
    traces.append(batch["latent_mean"].shape)
    return jnp.mean(batch["latent_mean"])

  mixture = _mixture(path)
  for _ in range(12):
    batch = next(mixture)
    step({k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"})
  mixture.close()
  assert len(traces) == len(set(traces)) == 3, traces


def test_dit_data_resolves_the_config_table():
  config = base.get_config()
  config.data.batching = "buckets"
  config.data.buckets = buckets.format_table({"17x32x32": (0.5, 0), "1x32x32": (0.25, 0), "17x32x48": (0.25, 16)})
  assert config.data.buckets == "17x32x32=0.5:0,1x32x32=0.25:0,17x32x48=0.25:16"
  config.data.batch_size = 32
  resolved = {b.name: (b.batch_size, b.tokens) for b in dit_data.resolve_buckets(config, config.vae, multiple=2)}
  # demo VAE geometry (4x time, 8x space) and patch (1, 2, 2): 5x2x2 = 20 tokens; an image 1x2x2 = 4 -> 5x batch.
  assert resolved == {"17x32x32": (32, 20), "1x32x32": (160, 4), "17x32x48": (16, 30)}
  config.data.batching = "packed"
  with pytest.raises(ValueError, match="batching"):
    dit_data.resolve_buckets(config, config.vae)


def test_mixture_state_survives_an_orbax_checkpoint(cache, tmp_path):
  """The loop saves `iterator.get_state()` with the checkpoint; a restored run continues with the same batches."""
  from sora_jax.training import checkpointing

  path, _ = cache
  first = _mixture(path, seed=5)
  for _ in range(5):
    next(first)
  state = {"w": jnp.arange(3.0)}
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(5, state, data_state=first.get_state(), force=True)
  expected = [next(first) for _ in range(4)]
  first.close()
  with checkpointing.Checkpointer(str(tmp_path)) as ckpt:
    _, data_state = ckpt.restore(jax.eval_shape(lambda: state))
  resumed = _mixture(path, seed=5)
  resumed.set_state(data_state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["latent_mean"], want["latent_mean"])
    np.testing.assert_array_equal(got["caption"], want["caption"])
  resumed.close()


def test_a_bucket_config_survives_config_json():
  """Pipeline.from_pretrained reads config.json back onto configs/base.py: the table must merge."""
  import json

  from configs.dit import demo_sizes
  from sora_jax import configuration

  config = demo_sizes.get_config("17x32x32=0.5,1x32x32=0.25:64,17x32x48=0.25")
  restored = configuration.merge_saved_config(json.loads(json.dumps(config.to_dict())))
  assert restored.data.batching == "buckets" and restored.data.buckets == config.data.buckets
  assert buckets.parse_table(restored.data.buckets)[(1, 32, 32)] == (0.25, 64)
  assert buckets.trained_sizes(restored) == [(17, 32, 32), (1, 32, 32), (17, 32, 48)]


def test_each_bucket_gets_the_timestep_shift_of_its_own_token_count():
  """The train step reads tokens from the batch's latent shape, so each bucket's compile uses its own shift."""
  from sora_jax.diffusion import build_diffusion
  from sora_jax.models import factory
  from sora_jax.models.text import fields
  from sora_jax.training import dit_step
  from sora_jax.training.optimizer import make_optimizer

  config = base.get_config()
  config.dit.update(dict(depth=1, hidden_size=32, num_heads=2, mlp_dim=64))
  config.text.update(dict(encoder="small", max_length=16, width=32, depth=1, num_heads=2))
  config.diffusion.update(dict(shift=0.0, base_shift_tokens=4, max_shift_tokens=64, max_shift=3.0))
  flow = build_diffusion(config.diffusion)
  seen = []

  class Recording:
    kind = "flow"

    def loss(self, model_fn, x0, cond, rng, num_tokens, **kwargs):
      seen.append((x0.shape[1:4], num_tokens, flow.shift_for(num_tokens)))
      return flow.loss(model_fn, x0, cond, rng, num_tokens=num_tokens, **kwargs)

  denoiser = factory.build_denoiser(config, (3, 4, 4, 4))
  stats = {"mean": np.zeros(4, np.float32), "std": np.ones(4, np.float32)}
  _, loss_fn = dit_step.make_train_step(
    denoiser=denoiser,
    diffusion=Recording(),
    latent_stats=stats,
    null_fields=fields.null_text_fields(denoiser.text_encoder, None),
    cfg_dropout=0.0,
    tx=make_optimizer(config.train),
    ema_decay=0.0,
  )
  params = denoiser.init(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
  text = fields.text_fields(denoiser.text_encoder, None, ["a red circle"] * 2)
  for shape in ((3, 4, 4), (1, 4, 4), (9, 8, 8)):  # 12, 4 and 144 tokens
    batch = {"latent_mean": jnp.zeros((2, *shape, 4)), "latent_logvar": jnp.zeros((2, *shape, 4)), **text}
    jax.jit(loss_fn)(params, batch, jax.random.PRNGKey(1))
  assert [(s, n) for s, n, _ in seen] == [((3, 4, 4), 12), ((1, 4, 4), 4), ((9, 8, 8), 144)]
  shifts = [shift for _, _, shift in seen]
  assert shifts[1] == 1.0 and 1.0 < shifts[0] < shifts[2] == 3.0, shifts
