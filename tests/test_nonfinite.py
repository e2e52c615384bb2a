"""NaN/Inf guard of the training loop: a non-finite loss or gradient never reaches the params or a checkpoint."""

import jax
import numpy as np
import pytest
import toy_training

from sora_jax.errors import ClearError, NonFiniteError
from sora_jax.models import vae as vae_lib
from sora_jax.training import checkpointing, loop


class _NaNBatches(toy_training.ToyIterator):
  """Batches whose inputs are NaN at the 1-based steps in `bad_steps` (a corrupt clip, an overflowing loss)."""

  bad_steps: tuple[int, ...] = ()

  def __next__(self):
    step = self.position + 1
    batch = super().__next__()
    if step in self.bad_steps:
      batch = dict(batch, x=np.full_like(batch["x"], np.nan))
    return batch


def _iterator(bad_steps):
  return lambda: type("Bad", (_NaNBatches,), {"bad_steps": tuple(bad_steps)})()


def _train(config, workdir, make_iterator, writer=None):
  init_fn, train_step = toy_training.toy_fns(config)
  writer = writer or toy_training.RecordingWriter()
  state = loop.train(
    config=config,
    workdir=str(workdir),
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=make_iterator,
    writer=writer,
  )
  return state, writer


def _finite(tree):
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(jax.device_get(tree)))


def _saved_states_finite(workdir, config):
  init_fn, _ = toy_training.toy_fns(config)
  from sora_jax.sharding import mesh as mesh_lib
  from sora_jax.sharding import partitioning

  mesh = mesh_lib.make_mesh(config.mesh)
  abstract, _ = partitioning.abstract_state(init_fn, mesh, partitioning.logical_rules(config), jax.random.key(0))
  with checkpointing.Checkpointer(workdir) as ckpt:
    return {step: _finite(ckpt.restore(abstract, step)[0]) for step in ckpt.all_steps()}


def test_a_nan_step_is_skipped_counted_and_never_checkpointed(tmp_path):
  config = toy_training.toy_config(steps=6, checkpoint_every=2)
  state, writer = _train(config, tmp_path, _iterator([3]))
  assert _finite(state) and int(state.step) == 6
  assert [writer.scalars[s]["nonfinite"] for s in range(1, 7)] == [0, 0, 1, 0, 0, 0]
  assert np.isnan(writer.scalars[3]["loss"])  # logged as it was, not hidden
  assert _saved_states_finite(tmp_path, config) == {2: True, 4: True, 6: True}


def test_a_skipped_step_leaves_params_and_optimizer_unchanged(tmp_path):
  """Steps 1-2 then a NaN step 3: the state after step 3 is the state after step 2 (step counter aside)."""
  config = toy_training.toy_config(steps=2)
  after_two, _ = _train(config, tmp_path / "two", _iterator([]))
  after_nan, _ = _train(toy_training.toy_config(steps=3), tmp_path / "nan", _iterator([3]))
  for a, b in zip(jax.tree.leaves(after_two.replace(step=0)), jax.tree.leaves(after_nan.replace(step=0))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(after_nan.step) == 3


def test_stop_mode_raises_a_clear_error_and_keeps_the_last_finite_checkpoint(tmp_path):
  config = toy_training.toy_config(steps=6, checkpoint_every=2, nonfinite="stop")
  with pytest.raises(NonFiniteError, match=r"step 3: the loss or a gradient is NaN/Inf .*step 2\) holds finite"):
    _train(config, tmp_path, _iterator([3]))
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [2]


def test_too_many_skips_in_a_row_stop_the_run(tmp_path):
  config = toy_training.toy_config(steps=20, checkpoint_every=1, keep_checkpoints=2, max_nonfinite_in_a_row=3)
  with pytest.raises(NonFiniteError, match="NaN/Inf for 3 steps in a row"):
    _train(config, tmp_path, _iterator(range(3, 21)))
  # Rotation (keep 2) saw only finite states: the newest checkpoints are finite ones.
  assert all(_saved_states_finite(tmp_path, config).values())


def test_learning_rate_blow_up_never_reaches_a_checkpoint(tmp_path):
  """learning_rate=1e30 without clipping: the updates overflow to Inf; every one is skipped and the run stops."""
  config = toy_training.toy_config(
    steps=8, checkpoint_every=1, learning_rate=1e30, grad_clip=0.0, warmup_steps=0, max_nonfinite_in_a_row=2
  )
  with pytest.raises(NonFiniteError):
    _train(config, tmp_path, _iterator([]))
  assert all(_saved_states_finite(tmp_path, config).values())


@pytest.mark.parametrize(
  "setting, match",
  [
    ({"nonfinite": "ignore"}, "train.nonfinite='ignore' is not one of"),
    ({"max_nonfinite_in_a_row": 0}, "max_nonfinite_in_a_row=0 must be at least 1"),
  ],
)
def test_bad_guard_settings_fail_before_training(tmp_path, setting, match):
  with pytest.raises(ClearError, match=match):
    _train(toy_training.toy_config(**setting), tmp_path, _iterator([]))
  assert not (tmp_path / "checkpoints").exists()


def test_latent_stats_refuse_non_finite_values(tmp_path):
  stats = {"mean": np.array([0.0, np.nan], np.float32), "std": np.ones(2, np.float32)}
  with pytest.raises(NonFiniteError, match="mean hold NaN or Inf"):
    vae_lib.save_latent_stats(str(tmp_path), stats)
  assert not list(tmp_path.iterdir())
