"""Restoring for inference: a workdir saved before the current layout loads, and only params are read.

tests/data/pre_refactor_workdir holds the config.json files that the training tools of
commit f26753f (before sora_jax/restore.py) wrote for a tiny VAE run and a tiny DiT run.
Their checkpoints are written here with the same TrainState layout those tools saved.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from sora_jax import configuration
from sora_jax.models import factory
from sora_jax.models import vae as vae_lib
from sora_jax.sharding import partitioning
from sora_jax.training import checkpointing, dit_step, vae_step
from sora_jax.training.optimizer import make_optimizer

SAVED = pathlib.Path(__file__).parent / "data" / "pre_refactor_workdir"


def _write_checkpoint(workdir, init_fn, step):
  state = partitioning.unbox(jax.jit(init_fn)(jax.random.key(step)))  # jitted: op by op, init runs the forward
  with checkpointing.Checkpointer(workdir) as ckpt:
    ckpt.save(step, state)  # no config: the run's saved config.json stays as the old code wrote it
  return state


@pytest.fixture(scope="module")
def old_workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("old") / "run"
  shutil.copytree(SAVED, root)
  dit_json = root / "dit" / "config.json"
  saved = json.loads(dit_json.read_text())
  saved["vae_workdir"] = str(root / "vae")  # the absolute path a real run records
  dit_json.write_text(json.dumps(saved, indent=2, sort_keys=True))

  vae_cfg = checkpointing.load_config_from_workdir(root / "vae")
  data = vae_cfg.data
  shape = (1, data.num_frames, data.height, data.width, 3)
  vae = vae_lib.CausalVAE(vae_cfg.vae)
  vae_init = vae_step.make_init_fn(vae, make_optimizer(vae_cfg.train), shape, ema=vae_cfg.train.ema_decay > 0)
  _write_checkpoint(root / "vae", vae_init, 2)
  channels = vae_cfg.vae.latent_channels
  vae_lib.save_latent_stats(
    str(root / "vae"), {"mean": np.zeros(channels, np.float32), "std": np.full(channels, 2.0, np.float32)}
  )

  dit_cfg = checkpointing.load_config_from_workdir(root / "dit")
  latent_shape = vae_lib.latent_shape(vae_cfg.vae, data.num_frames, data.height, data.width)
  denoiser = factory.build_denoiser(dit_cfg, latent_shape)
  dit_init = dit_step.make_init_fn(denoiser, make_optimizer(dit_cfg.train), ema=dit_cfg.train.ema_decay > 0)
  state = _write_checkpoint(root / "dit", dit_init, 3)
  return root, state


def test_old_configs_merge_onto_todays_base(old_workdir):
  root, _ = old_workdir
  saved = json.loads((root / "vae" / "config.json").read_text())
  assert saved["vae"]["output_activation"] == "none" and saved["vae"]["decoder_time_patch"] == 0  # removed since
  config = checkpointing.load_config_from_workdir(root / "vae")
  assert "output_activation" not in config.vae and "decoder_time_patch" not in config.vae
  assert config.vae.base_channels == saved["vae"]["base_channels"] == 8
  assert tuple(config.vae.channel_multipliers) == (1, 1, 1, 1)


def test_a_workdir_saved_before_the_restore_module_samples(old_workdir):
  from sora_jax import Pipeline

  root, _ = old_workdir
  before = {p: p.read_text() for p in root.rglob("config.json")}
  pipe = Pipeline.from_pretrained(str(root))
  videos = pipe(["a red circle moving left"], num_steps=1, seed=0)
  assert videos.shape == (1, 9, 32, 32, 3) and videos.dtype == np.uint8
  assert {p: p.read_text() for p in root.rglob("config.json")} == before  # restoring writes nothing


def test_restore_text_to_video_reads_the_ema_params_onto_the_mesh(old_workdir):
  from sora_jax.restore import restore_text_to_video
  from sora_jax.sharding import mesh as mesh_lib

  root, state = old_workdir
  mesh = mesh_lib.make_mesh((2, 1, 1, 1), devices=jax.devices()[:2])
  restored = restore_text_to_video(str(root), mesh=mesh)
  assert restored.step == 3 and restored.vae.step == 2
  assert set(restored.params) == {"dit", "text"}  # the small text encoder trains with the DiT
  assert restored.text_params is None
  for want, got in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(restored.params)):
    np.testing.assert_array_equal(np.asarray(want), np.asarray(got))
  assert jax.tree.leaves(restored.params)[0].sharding.mesh.devices.size == 2
  np.testing.assert_array_equal(restored.vae.latent_stats["std"], 2.0)
  raw = restore_text_to_video(str(root), use_ema=False)
  for want, got in zip(jax.tree.leaves(state.params), jax.tree.leaves(raw.params)):
    np.testing.assert_array_equal(np.asarray(want), np.asarray(got))


def test_a_removed_setting_with_a_value_other_than_todays_is_a_clear_error(tmp_path):
  saved = json.loads((SAVED / "vae" / "config.json").read_text())
  saved["vae"]["output_activation"] = "tanh"
  saved["vae"]["colour_space"] = "rgb"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(configuration.ConfigError) as error:
    checkpointing.load_config_from_workdir(tmp_path)
  message = str(error.value)
  assert "vae.output_activation='tanh': this setting no longer exists (today's code behaves as 'none'" in message
  assert "vae.colour_space='rgb': no such config key" in message and str(tmp_path) in message
