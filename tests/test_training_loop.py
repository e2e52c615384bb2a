"""The generic training loop: resume is exact, time limit checkpoints, bad checkpoints fail clearly."""

import jax
import numpy as np
import pytest
import toy_training

from sora_jax.training import checkpointing, loop, optimizer

_config = toy_training.toy_config
_RecordingWriter = toy_training.RecordingWriter
_ToyIterator = toy_training.ToyIterator


def _train(config, workdir, writer, iterator_factory=_ToyIterator, **kwargs):
  init_fn, train_step = toy_training.toy_fns(config)
  return loop.train(
    config=config,
    workdir=str(workdir),
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=iterator_factory,
    writer=writer,
    **kwargs,
  )


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(_host(a)), jax.tree.leaves(_host(b))):
    np.testing.assert_array_equal(x, y)


class _CrashAfter(_ToyIterator):
  """Fails like a killed job when asked for batch `limit` (0-based)."""

  limit = 4

  def __next__(self):
    if self.position >= self.limit:
      raise RuntimeError("simulated crash")
    return super().__next__()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  writer = _RecordingWriter()
  state = _train(_config(), tmp_path_factory.mktemp("full"), writer)
  return state, writer


def test_crash_then_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
  full_state, full_writer = uninterrupted
  first, second = _RecordingWriter(), _RecordingWriter()
  with pytest.raises(RuntimeError, match="simulated crash"):
    _train(_config(), tmp_path, first, iterator_factory=_CrashAfter)  # dies after step 4, checkpoint at 3
  assert checkpointing.Checkpointer(tmp_path).all_steps() == [3]
  resumed = _train(_config(), tmp_path, second)
  assert int(resumed.step) == 6
  _assert_trees_equal(resumed, full_state)  # params, opt state and EMA bit for bit
  np.testing.assert_array_equal(first.losses()[:3] + second.losses(), full_writer.losses())
  assert sorted(second.scalars) == [4, 5, 6]
  assert full_writer.losses()[4] < full_writer.losses()[0]  # it learns (steps 1 and 5 see the same batch)
  assert (tmp_path / "config.json").exists()


def test_time_limit_checkpoints_and_resume_finishes_the_same_run(tmp_path, uninterrupted):
  full_state, full_writer = uninterrupted
  timed = _config(max_minutes=1e-9)  # stops after the first step
  samples = []
  state = _train(timed, tmp_path, _RecordingWriter(), sample_fn=lambda s, step, w: samples.append(step))
  assert int(state.step) == 1 and samples == [1]
  assert checkpointing.Checkpointer(tmp_path).latest_step() == 1
  writer = _RecordingWriter()
  resumed = _train(_config(), tmp_path, writer, eval_fn=lambda s, step: {"loss": float(step)})
  _assert_trees_equal(resumed.params, full_state.params)
  np.testing.assert_array_equal(writer.losses(), full_writer.losses()[1:])
  assert writer.scalars[6]["eval/loss"] == 6.0
  assert writer.scalars[6]["lr"] == pytest.approx(optimizer.learning_rate_at(_config().train, 5))
  assert writer.scalars[6]["steps_per_sec"] > 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax cleanup noise
def test_resume_with_corrupt_checkpoint_names_the_step_dir(tmp_path):
  _train(_config(steps=3), tmp_path, _RecordingWriter())
  step_dir = tmp_path / "checkpoints" / "3"
  for data_file in (step_dir / "state").rglob("*"):
    if data_file.is_file() and data_file.parent.name == "d":
      data_file.write_bytes(b"garbage")
  with pytest.raises(checkpointing.CorruptCheckpointError) as error:
    _train(_config(steps=6), tmp_path, _RecordingWriter())
  message = str(error.value)
  assert str(step_dir) in message and "delete" in message


def test_finished_run_is_not_retrained(tmp_path, uninterrupted):
  full_state, _ = uninterrupted
  _train(_config(steps=3), tmp_path, _RecordingWriter())
  writer = _RecordingWriter()
  state = _train(_config(steps=3), tmp_path, writer)
  assert writer.scalars == {} and int(state.step) == 3


def test_batch_not_divisible_by_mesh_fails_before_training(tmp_path):
  config = _config()
  config.data.batch_size = 6
  with pytest.raises(ValueError, match="data.batch_size"):
    _train(config, tmp_path, _RecordingWriter())


def _grain_iterator():
  """The project's grain pipeline (prefetching thread, shuffling) over an in-memory source."""
  from sora_jax.data import pipeline

  toy = _ToyIterator(num_rows=40)
  source = [{"x": x, "y": y, "caption": "toy"} for x, y in zip(toy.x, toy.y)]
  return pipeline.make_iterator(source, batch_size=toy_training.BATCH, seed=3, prefetch=2)


def test_resume_through_the_grain_pipeline_replays_the_same_batches(tmp_path):
  config = _config(steps=4, checkpoint_every=2)
  full_writer, first, second = _RecordingWriter(), _RecordingWriter(), _RecordingWriter()
  full = _train(config, tmp_path / "full", full_writer, iterator_factory=_grain_iterator)
  _train(
    _config(steps=4, checkpoint_every=2, max_minutes=1e-9), tmp_path / "split", first, iterator_factory=_grain_iterator
  )  # stops (and checkpoints) after step 1
  resumed = _train(config, tmp_path / "split", second, iterator_factory=_grain_iterator)
  _assert_trees_equal(resumed.params, full.params)
  np.testing.assert_array_equal(first.losses() + second.losses(), full_writer.losses())
