"""Tests of VAE training: the loss goes down, the GAN switches on on time, checkpoints round-trip
through restore_vae, latent statistics and PSNR/SSIM are right, and tools/train_vae.py runs end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import xla_flags

from configs import base
from sora_jax.data import shapes
from sora_jax.evaluation import vae_eval
from sora_jax.models import vae as vae_lib
from sora_jax.restore import restore_vae
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing, vae_step
from sora_jax.training.optimizer import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEO_SHAPE = (2, 5, 16, 16, 3)


def tiny_config(**loss_overrides) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.vae.update(
    temporal_factor=4,
    spatial_factor=4,
    patch_size=(2, 2, 2),
    latent_channels=4,
    base_channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    mid_attention=False,
  )
  c.vae_loss.update(loss_overrides)
  c.train.update(learning_rate=3e-3, warmup_steps=0, lr_schedule="constant", steps=20, ema_decay=0.0)
  return c


def shapes_batch(seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  clips = [shapes.render_clip(shapes.sample_clip_spec(rng), 5, 16, 16) for _ in range(VIDEO_SHAPE[0])]
  return np.stack(clips).astype(np.float32) / 127.5 - 1.0


def setup(config):
  vae = vae_lib.CausalVAE(config.vae)
  disc = vae_step.make_discriminator(config)
  tx = make_optimizer(config.train)
  ema = config.train.ema_decay > 0
  init_fn = vae_step.make_init_fn(vae, tx, (1,) + VIDEO_SHAPE[1:], disc, ema=ema)
  state = partitioning.unbox(jax.jit(init_fn)(jax.random.key(0)))  # jitted: op by op, init runs the forward
  step = jax.jit(vae_step.make_train_step(vae, tx, config.vae_loss, disc, config.train.ema_decay))
  return vae, init_fn, state, step


def test_a_few_steps_reduce_the_loss_and_the_gan_switches_on_at_its_step():
  gan_start = 10
  _, _, state, step = setup(tiny_config(gan_weight=0.5, gan_start_step=gan_start, disc_channels=4))
  batch = {"video": jnp.asarray(shapes_batch())}
  disc0 = jax.tree.map(np.asarray, state.params["disc"])
  losses = []
  for i in range(gan_start):  # reconstruction + KL only; the discriminator stays frozen
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["loss"]))
    assert float(metrics["gan_on"]) == 0.0
  assert set(metrics) >= {"loss", "l1", "l2", "kl", "psnr", "grad_norm", "d_loss", "g_loss"}
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.6 * losses[0], losses
  for a, b in zip(jax.tree.leaves(disc0), jax.tree.leaves(state.params["disc"])):
    np.testing.assert_array_equal(a, b)

  state, metrics = step(state, batch, jax.random.key(gan_start))
  assert float(metrics["gan_on"]) == 1.0 and int(state.step) == gan_start + 1
  assert np.isfinite([float(metrics[k]) for k in ("d_loss", "g_loss", "d_real", "d_fake")]).all()
  kernels_changed = [not np.array_equal(disc0[name]["kernel"], state.params["disc"][name]["kernel"]) for name in disc0]
  assert all(kernels_changed)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_checkpoint_round_trip_through_restore_vae(tmp_path, ema_decay):
  config = tiny_config()
  config.train.ema_decay = ema_decay
  vae = vae_lib.CausalVAE(config.vae)
  tx = make_optimizer(config.train)
  init_fn = vae_step.make_init_fn(vae, tx, (1,) + VIDEO_SHAPE[1:], ema=ema_decay > 0)
  state = partitioning.unbox(init_fn(jax.random.key(0)))
  rng = np.random.default_rng(0)
  noisy = lambda tree: jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), tree)
  state = state.replace(
    step=state.step + 1, params=noisy(state.params), ema_params=noisy(state.ema_params) if ema_decay else None
  )
  want = state.ema_params["vae"] if ema_decay else state.params["vae"]
  stats = {"mean": np.arange(4, dtype=np.float32), "std": np.full((4,), 2.0, np.float32)}
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, config=config)
  vae_lib.save_latent_stats(str(tmp_path), stats)

  restored = restore_vae(str(tmp_path))
  module, params, loaded_stats, loaded_config = restored.module, restored.params, restored.latent_stats, restored.config
  assert restored.step == 1
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  if ema_decay:  # restore_vae returns the EMA, not the raw params
    assert not np.array_equal(
      params["decoder"]["conv_out"]["kernel"], state.params["vae"]["decoder"]["conv_out"]["kernel"]
    )
  np.testing.assert_array_equal(loaded_stats["mean"], stats["mean"])
  np.testing.assert_array_equal(loaded_stats["std"], stats["std"])
  assert loaded_config.vae.to_dict() == config.vae.to_dict()
  video = jnp.asarray(shapes_batch())
  np.testing.assert_array_equal(
    vae_lib.encode_video(module, params, video)[0], vae_lib.encode_video(vae, want, video)[0]
  )


def test_restore_vae_without_a_run_fails_clearly(tmp_path):
  with pytest.raises(checkpointing.CheckpointNotFoundError, match="train_vae.py"):
    restore_vae(str(tmp_path))


def test_restore_reads_only_the_inference_params(tmp_path):
  """The optimizer state (here a tree no optimizer makes) and the raw params are never read."""
  config = tiny_config()
  config.train.ema_decay = 0.9
  vae = vae_lib.CausalVAE(config.vae)
  init_fn = vae_step.make_init_fn(vae, make_optimizer(config.train), (1,) + VIDEO_SHAPE[1:], ema=True)
  state = partitioning.unbox(init_fn(jax.random.key(0)))
  state = state.replace(opt_state={"not_an_optimizer": jnp.zeros((7,))}, params={"unrelated": jnp.ones((3,))})
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, config=config)
  restored = restore_vae(str(tmp_path))
  for a, b in zip(jax.tree.leaves(state.ema_params["vae"]), jax.tree.leaves(restored.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_vae_of_a_workdir_without_a_vae_names_what_to_pass(tmp_path):
  config = tiny_config()
  state = {"params": {"dit": {"w": jnp.ones((2,))}}, "step": jnp.zeros((), jnp.int32)}
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, config=config)
  expected = r"holds no vae parameters \(its checkpoint's params has \['dit'\]\).*train_vae.py"
  with pytest.raises(ValueError, match=expected):
    restore_vae(str(tmp_path))


def test_latent_channel_stats_match_numpy():
  rng = np.random.default_rng(0)
  batches = [rng.normal(loc=[1.0, -2.0, 0.0], scale=[0.5, 3.0, 1.0], size=(2, 3, 4, 4, 3)) for _ in range(3)]
  stats = vae_lib.latent_channel_stats(batches)
  flat = np.concatenate(batches).reshape(-1, 3)
  np.testing.assert_allclose(stats["mean"], flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["std"], flat.std(0), rtol=1e-5)


def test_reconstruction_metrics():
  video = shapes_batch()
  perfect = vae_eval.evaluate_reconstructions(lambda v: v, [{"video": video}])
  assert perfect["psnr"] == pytest.approx(100.0) and perfect["ssim"] == pytest.approx(1.0)
  assert perfect["num_clips"] == 2
  shifted = vae_eval.evaluate_reconstructions(lambda v: v + 2 * 8 / 255.0, [{"video": video}])
  # Every pixel off by 8 grey levels (black pixels clip at 0 ... so at most 8): PSNR >= 20 log10(255 / 8).
  assert 20 * np.log10(255 / 8) - 0.01 <= shifted["psnr"] < 60 and shifted["ssim"] < 1.0


def test_reconstruction_metrics_score_a_fixed_number_of_clips():
  """A score covers the first N clips whatever the batch size: batches of 2 and of 3 give the same number."""
  clips = shapes_batch()
  video = np.concatenate([(clips + 1) * scale - 1 for scale in (1.0, 0.8, 0.6)])  # 6 distinct clips
  reconstruct = lambda v: v + 0.1 * (v + 1)  # the error depends on the clip, not on its place in a batch
  in_twos = vae_eval.evaluate_reconstructions(
    reconstruct, [{"video": video[i : i + 2]} for i in range(0, 6, 2)], max_clips=3
  )
  in_threes = vae_eval.evaluate_reconstructions(
    reconstruct, [{"video": video[i : i + 3]} for i in range(0, 6, 3)], max_clips=3
  )
  assert in_twos["num_clips"] == in_threes["num_clips"] == 3
  assert in_twos["psnr"] == pytest.approx(in_threes["psnr"], rel=1e-6)
  everything = vae_eval.evaluate_reconstructions(reconstruct, [{"video": video}])
  assert everything["num_clips"] == 6 and abs(everything["psnr"] - in_twos["psnr"]) > 0.1


@pytest.mark.slow
def test_train_vae_tool_end_to_end(tmp_path):
  workdir = tmp_path / "vae"
  overrides = [
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--config.data.num_train=8",
    "--config.data.num_validation=4",
    "--config.data.num_test=4",
    "--config.data.num_frames=5",
    "--config.data.height=16",
    "--config.data.width=16",
    "--config.data.batch_size=4",
    "--config.data.prefetch=0",
    "--config.train.steps=2",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    "--config.train.checkpoint_every=2",
    "--config.train.eval_batches=1",
    "--config.vae_loss.latent_stats_batches=1",
    "--config.vae.spatial_factor=4",
    "--config.vae.patch_size=(2,2,2)",
    "--config.vae.channel_multipliers=(1,2)",
    "--config.vae.base_channels=4",
    "--config.vae.latent_channels=4",
    "--config.vae.num_res_blocks=1",
    "--config.vae.mid_attention=False",
  ]
  command = [
    sys.executable,
    os.path.join(REPO, "tools", "train_vae.py"),
    "--config=configs/vae/demo.py",
    f"--workdir={workdir}",
    "--eval_clips=4",
    "--num_reconstructions=2",
    *overrides,
  ]
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "checkpoints" / "2").is_dir()
  stats = json.loads((workdir / vae_lib.LATENT_STATS_FILE).read_text())
  assert len(stats["mean"]) == 4 and min(stats["std"]) > 0
  evaluation = json.loads((workdir / "eval_test.json").read_text())
  assert evaluation["num_clips"] == 4 and evaluation["step"] == 2 and np.isfinite(evaluation["psnr"])
  assert list((workdir / "samples").glob("recon_*.png"))
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("psnr" in r and "grad_norm" in r for r in logged) and any("eval/psnr" in r for r in logged)

  again = subprocess.run(
    command[:4] + ["--eval_only", "--eval_split=validation", "--eval_clips=3"] + overrides,
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert "PSNR" in again.stdout
  on_validation = json.loads((workdir / "eval_validation.json").read_text())
  assert on_validation["split"] == "validation" and on_validation["step"] == 2
  assert on_validation["num_clips"] == 3  # a clip count, not batches: the last batch of 4 is cut
