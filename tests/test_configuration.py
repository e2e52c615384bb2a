"""Config files and overrides: every config loads, documents its command, and rejects bad keys/values."""

import glob
import os
import subprocess
import sys

import pytest

from sora_jax import configuration
from sora_jax.models import variants

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
  p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True) if not p.endswith("__init__.py")
)
# Config files that take an argument, and the arguments to load them with.
ARGS = {
  "configs/dit/video.py": [v for v in variants.VARIANTS if not v.startswith("DiT-")],
  "configs/image/dit_paper.py": [v for v in variants.VARIANTS if v.startswith("DiT-")],
}


def _cases():
  for path in CONFIG_FILES:
    rel = os.path.relpath(path, REPO)
    for arg in ARGS.get(rel, [None]):
      yield f"{rel}:{arg}" if arg else rel


@pytest.mark.parametrize("spec", list(_cases()))
def test_every_config_loads_and_keeps_the_base_schema(spec):
  config = configuration.load_config(os.path.join(REPO, spec))
  base_keys = set(configuration.all_keys(configuration.load_config(os.path.join(REPO, "configs/base.py"))))
  assert set(configuration.all_keys(config)) == base_keys, "a variant may override fields, not add or drop them"
  assert config.data.num_frames >= 1 and config.data.batch_size >= 1
  assert len(config.mesh.shape) == 4
  if config.dit.variant:
    assert not variants.variant_mismatches(config.dit), "sizes must match the named variant"


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_docstring_holds_the_command_that_runs_it(path):
  source = open(path).read()
  if path.endswith("base.py"):
    assert "python tools/" in source
    return
  rel = os.path.relpath(path, REPO)
  assert f"--config={rel}" in source, f"{rel}: the docstring must show the command that runs it"


def test_overrides_are_typed_and_unknown_keys_name_the_key():
  config = configuration.load_config(
    os.path.join(REPO, "configs/base.py"),
    ["train.steps=7", "dit.patch_size=(1, 4, 4)", "train.learning_rate=3", "data.dataset=video_folder"],
  )
  assert config.train.steps == 7 and config.dit.patch_size == (1, 4, 4)
  assert config.train.learning_rate == 3.0 and isinstance(config.train.learning_rate, float)
  with pytest.raises(configuration.ConfigError, match=r"unknown config key 'train.stpes'.*train.steps"):
    configuration.load_config(os.path.join(REPO, "configs/base.py"), ["train.stpes=3"])
  with pytest.raises(configuration.ConfigError, match=r"'train.steps' expects int"):
    configuration.load_config(os.path.join(REPO, "configs/base.py"), ["train.steps=many"])
  with pytest.raises(configuration.ConfigError, match="key=value"):
    configuration.load_config(os.path.join(REPO, "configs/base.py"), ["train.steps"])
  with pytest.raises(configuration.ConfigError, match="does not exist"):
    configuration.load_config("configs/nope.py")


def test_loaded_configs_are_locked_against_new_keys():
  config = configuration.load_config(os.path.join(REPO, "configs/base.py"))
  with pytest.raises(AttributeError):
    config.train.stepz = 3


def test_json_round_trip_restores_tuples():
  config = configuration.load_config(os.path.join(REPO, "configs/dit/demo.py"))
  back = configuration.from_dict(__import__("json").loads(configuration.to_json(config)))
  assert back.dit.patch_size == config.dit.patch_size and isinstance(back.dit.patch_size, tuple)
  assert back.mesh.logical_axis_rules[0] == tuple(config.mesh.logical_axis_rules[0])


def test_a_tool_rejects_an_unknown_key_before_doing_any_work():
  result = subprocess.run(
    [
      sys.executable,
      "tools/train_dit.py",
      "--config=configs/dit/demo.py",
      "--workdir=/nonexistent",
      "--config.train.stepz=3",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0
  assert "unknown config key 'train.stepz'" in result.stderr and "train.steps" in result.stderr


def test_dit_demo_config_describes_the_demo_vae_latents():
  # tools/benchmark.py and tools/estimate.py size the DiT from config.vae; train_dit reads the
  # VAE workdir. Both must agree for the demo (17x32x32 clips -> 5x8x8x8 latents).
  from sora_jax.training import memory

  dit_config = configuration.load_config(os.path.join(REPO, "configs/dit/demo.py"))
  vae_config = configuration.load_config(os.path.join(REPO, "configs/vae/demo.py"))
  assert dit_config.vae.to_dict() == vae_config.vae.to_dict()
  assert memory.latent_shape_of(dit_config, 17, 32, 32) == (5, 8, 8, 8)


# Keys that model code once read with a default of its own (`.get(key, default)`), with that default:
# a run saved before a key existed must load as the code then behaved.
DEFAULTS_OF_OLD_RUNS = {
  "vae.norm": "rms",
  "vae.decoder_channel_multipliers": (),
  "vae.encoder_time_kernels": (),
  "vae.decoder_time_kernels": (),
  "dit.abs_pos_embedding": "none",
  "dit.modulation": "per_block",
  "text.tokenizer": "byte",
  "text.dtype": "float32",
  "diffusion.min_snr_gamma": 5.0,
  "diffusion.learn_sigma_loss": "hybrid",
  "distributed.mode": "auto",
  "mesh.dcn_shape": (1, 1, 1, 1),
}


def test_a_saved_config_without_newer_keys_gets_the_values_old_code_used():
  from configs import base
  from sora_jax.configuration import merge_saved_config

  saved = base.get_config().to_dict()
  saved["dit"]["depth"] = 3
  for key in DEFAULTS_OF_OLD_RUNS:
    section, leaf = key.split(".")
    del saved[section][leaf]
  config = merge_saved_config(saved)
  assert config.dit.depth == 3
  for key, value in DEFAULTS_OF_OLD_RUNS.items():
    section, leaf = key.split(".")
    assert config[section][leaf] == value, key


def test_a_saved_config_with_removed_keys_at_todays_behaviour_loads():
  from configs import base
  from sora_jax.configuration import REMOVED_KEYS, ConfigError, merge_saved_config

  saved = base.get_config().to_dict()
  saved["vae"].update(output_activation="none", decoder_time_patch=0)
  assert "output_activation" not in merge_saved_config(saved).vae
  assert set(REMOVED_KEYS) == {"vae.output_activation", "vae.decoder_time_patch"}
  saved["vae"]["decoder_time_patch"] = 2
  with pytest.raises(ConfigError, match=r"vae.decoder_time_patch=2: this setting no longer exists"):
    merge_saved_config(saved, source="runs/x/config.json")
  saved["vae"]["decoder_time_patch"] = 0
  saved["train"]["steps"] = "many"
  with pytest.raises(ConfigError, match=r"(?s)runs/x/config.json cannot be used.*train.steps"):
    merge_saved_config(saved, source="runs/x/config.json")
