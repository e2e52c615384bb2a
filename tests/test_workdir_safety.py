"""One run per workdir (a lock naming its holder; a dead holder's lock is taken over) and relocatable workdirs."""

import json
import os
import socket
import subprocess
import sys

import pytest
import toy_training

from configs import base
from sora_jax.errors import WorkdirLockedError
from sora_jax.restore import resolve_workdirs
from sora_jax.training import checkpointing, loop
from sora_jax.training.workdir_lock import LOCK_FILENAME


def _train(workdir, steps=2):
  config = toy_training.toy_config(steps=steps, checkpoint_every=2)
  init_fn, train_step = toy_training.toy_fns(config)
  return loop.train(
    config=config,
    workdir=str(workdir),
    init_fn=init_fn,
    train_step=train_step,
    make_iterator=toy_training.ToyIterator,
    writer=toy_training.RecordingWriter(),
  )


def _write_lock(workdir, pid, host=None):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / LOCK_FILENAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 0}))


def test_a_second_run_on_a_live_runs_workdir_fails_before_writing(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, holder.pid)
    match = rf"in use by another run: pid {holder.pid} on host .*kill {holder.pid}"
    with pytest.raises(WorkdirLockedError, match=match):
      _train(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILENAME]  # nothing written
  finally:
    holder.kill()
    holder.wait()


def test_a_lock_from_another_host_says_how_to_remove_it(tmp_path):
  _write_lock(tmp_path, 1, host="some-other-host")
  with pytest.raises(WorkdirLockedError, match=r"host 'some-other-host'.*no longer alive, delete .*\.lock"):
    _train(tmp_path)


def test_a_dead_runs_lock_is_taken_over_and_released_at_the_end(tmp_path):
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  _write_lock(tmp_path, gone.pid)
  state = _train(tmp_path)
  assert int(state.step) == 2
  assert not (tmp_path / LOCK_FILENAME).exists()


def _dit_run(root, vae_workdir):
  config = base.get_config()
  config.vae_workdir = vae_workdir
  (root / "vae").mkdir(parents=True)
  checkpointing.save_config(root / "dit", config)


def test_a_copied_workdir_uses_its_own_vae_even_with_an_old_absolute_path(tmp_path):
  original, copy = tmp_path / "original", tmp_path / "copy"
  _dit_run(original, str(original / "vae"))  # what older versions stored
  _dit_run(copy, str(original / "vae"))
  assert resolve_workdirs(str(copy)) == (str(copy / "dit"), str(copy / "vae"))
  assert resolve_workdirs(str(original))[1] == str(original / "vae")


def test_training_stores_the_vae_relative_so_a_moved_run_finds_it(tmp_path):
  from sora_jax.recipes.train_dit import relocatable_config

  root = tmp_path / "runs" / "demo"
  config = base.get_config()
  config.vae_workdir = str(root / "vae")
  stored = relocatable_config(config, str(root / "dit"))
  assert stored.vae_workdir == "vae" and config.vae_workdir == str(root / "vae")  # the caller's config untouched
  outside = base.get_config()
  outside.vae_workdir = "/somewhere/else/vae"
  assert relocatable_config(outside, str(root / "dit")).vae_workdir == "/somewhere/else/vae"
  moved = tmp_path / "moved"
  _dit_run(moved, "vae")
  assert resolve_workdirs(str(moved))[1] == str(moved / "vae")
