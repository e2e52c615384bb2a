"""Checkpoint integrity: SHA-256 manifests, fallback to the newest intact step, config mismatches named."""

import json
import logging

import jax
import numpy as np
import pytest
import toy_training

from sora_jax.errors import ClearError, ConfigMismatchError
from sora_jax.training import checkpointing, loop


def _train(config, workdir, writer=None):
  init_fn, train_step = toy_training.toy_fns(config)
  return loop.train(
    config=config,
    workdir=str(workdir),
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=toy_training.ToyIterator,
    writer=writer or toy_training.RecordingWriter(),
  )


def _data_files(step_dir):
  return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


def _flip_one_bit(path, offset=-40):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x01
  path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  return _train(toy_training.toy_config(steps=6, checkpoint_every=2), workdir), workdir


def test_every_saved_step_has_a_manifest_of_its_files(full_run):
  _, workdir = full_run
  with checkpointing.Checkpointer(workdir) as ckpt:
    assert ckpt.all_steps() == [2, 4, 6]
    for step in ckpt.all_steps():
      manifest = json.loads(ckpt.manifest_path(step).read_text())
      assert manifest["algorithm"] == "sha256" and any(name.startswith("state/") for name in manifest["files"])
      assert ckpt.verify(step) is True


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax cleanup noise
def test_a_flipped_bit_is_caught_and_resume_falls_back_with_one_warning(tmp_path, full_run, caplog):
  full_state, _ = full_run
  config = toy_training.toy_config(steps=4, checkpoint_every=2)
  _train(config, tmp_path)  # checkpoints 2 and 4
  latest = tmp_path / "checkpoints" / "4"
  _flip_one_bit(_data_files(latest)[0])
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpointing.CorruptCheckpointError, match="does not match its SHA-256"):
      ckpt.verify(4)
  with caplog.at_level(logging.WARNING, logger="sora_jax.training.loop"):
    resumed = _train(toy_training.toy_config(steps=6, checkpoint_every=2), tmp_path)
  warnings = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
  assert len(warnings) == 1 and str(latest) in warnings[0] and str(tmp_path / "checkpoints" / "2") in warnings[0]
  assert "\n" not in warnings[0]
  # Resumed from step 2, it retrains steps 3..6 and ends where the uninterrupted run did.
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed)), jax.tree.leaves(jax.device_get(full_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_missing_file_of_the_only_checkpoint_is_one_clear_error(tmp_path):
  _train(toy_training.toy_config(steps=2, checkpoint_every=2), tmp_path)
  victim = _data_files(tmp_path / "checkpoints" / "2")[0]
  victim.unlink()
  with pytest.raises(checkpointing.CorruptCheckpointError) as error:
    _train(toy_training.toy_config(steps=4, checkpoint_every=2), tmp_path)
  message = str(error.value)
  assert isinstance(error.value, ClearError) and "is missing" in message and "there is none" in message
  assert len(message) < 1200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_changed_model_config_names_the_fields_not_corruption(tmp_path):
  """A toy state saved with one DiT width cannot be resumed by a model of another width."""
  config = toy_training.toy_config(steps=2, checkpoint_every=2)
  _train(config, tmp_path)
  changed = toy_training.toy_config(steps=4, checkpoint_every=2)
  changed.dit.hidden_size = 77  # recorded as the model's config; the toy state's shapes change below
  init_fn, train_step = toy_training.toy_fns(changed)

  def wider_init(rng):  # a different state shape, as a changed config makes
    state = init_fn(rng)
    return state.replace(params={**state.params, "extra": jax.numpy.zeros((3,))})

  with pytest.raises(ConfigMismatchError, match=r"dit.hidden_size: checkpoint 384, now 77"):
    loop.train(
      config=changed,
      workdir=str(tmp_path),
      init_fn=wider_init,
      train_step=train_step,
      make_iterator=toy_training.ToyIterator,
      writer=toy_training.RecordingWriter(),
    )
