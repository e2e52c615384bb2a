"""Cluster launch scripts: usage errors, and the command they would run is a valid tool call.

The schedulers cannot run here, so `gcloud` and `srun` are replaced by stand-ins that
print their arguments; the printed command's config and overrides are then validated.
"""

import os
import shlex
import stat
import subprocess

import pytest

from sora_jax import configuration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake(bin_dir, name):
  path = bin_dir / name
  path.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(script, args, tmp_path, **env):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name in ("gcloud", "srun"):
    _fake(bin_dir, name)
  full_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", **env)
  return subprocess.run(
    ["bash", os.path.join(REPO, "tools/launch", script), *args], cwd=REPO, env=full_env, capture_output=True, text=True
  )


def _check_tool_call(argv):
  """The train_dit.py invocation in argv exists and its --config overrides are valid."""
  i = next(i for i, a in enumerate(argv) if a.endswith("tools/train_dit.py"))
  assert os.path.exists(os.path.join(REPO, argv[i]))
  configuration.check_argv_overrides(argv[i + 1 :])  # raises ConfigError on a bad key


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm.sbatch"])
def test_usage_error_without_arguments(script, tmp_path):
  result = _run(script, [], tmp_path, VAE_WORKDIR="v")
  assert result.returncode == 2 and "usage:" in result.stderr


def test_tpu_pod_runs_train_dit_on_every_worker(tmp_path):
  result = _run(
    "tpu_pod.sh", ["my-tpu", "us-east5-a", "gs://b/run", "--config.train.steps=10"], tmp_path, VAE_WORKDIR="gs://b/vae"
  )
  assert result.returncode == 0, result.stderr
  args = result.stdout.splitlines()
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in args
  command = next(a for a in args if a.startswith("--command=")).removeprefix("--command=")
  remote = shlex.split(command.split("&&")[-1])
  assert "--config.distributed.mode=on" in remote and "--config.train.steps=10" in remote
  _check_tool_call(remote)


def test_tpu_pod_needs_the_vae_workdir(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "VAE_WORKDIR"}
  result = subprocess.run(
    ["bash", os.path.join(REPO, "tools/launch/tpu_pod.sh"), "t", "z", "w"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0 and "VAE_WORKDIR" in result.stderr


def test_slurm_runs_train_dit_under_srun(tmp_path):
  result = _run(
    "slurm.sbatch", ["configs/dit/video.py:wan-1.3b", "runs/w", "runs/v", "--config.mesh.shape=(-1,8,1,1)"], tmp_path
  )
  assert result.returncode == 0, result.stderr
  argv = result.stdout.splitlines()
  assert argv[0] == "--kill-on-bad-exit=1"
  assert "--config.distributed.mode=auto" in argv and "--config.vae_workdir=runs/v" in argv
  _check_tool_call(argv)
