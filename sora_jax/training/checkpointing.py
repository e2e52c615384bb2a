"""Orbax checkpoints of a training run: state + data-iterator state + config, with clear errors.

Layout of a workdir:

    <workdir>/config.json                    the full config (what `load_config_from_workdir` reads)
    <workdir>/checkpoints/<step>/state/      the training state pytree (sharded arrays, OCDBT)
    <workdir>/checkpoints/<step>/data/       grain iterator state, one JSON file per process
    <workdir>/checkpoints/<step>/config/     the config again (a checkpoint is self-describing)
    <workdir>/checkpoint_manifests/<step>.json   SHA-256 of every file of step <step>

Integrity: Orbax (0.12) keeps no checksum of the array data (a flipped bit restores silently), so
once a save is finalized, process 0 writes a manifest with the SHA-256 of each of the step's files
(at the next save, `wait()` or `close()`), and `restore` verifies it first: a file that differs or
is missing makes the step corrupt (`CorruptCheckpointError` naming the file). The training loop then
falls back to the newest intact step with a one-line warning naming both. A step without a manifest
(killed between finalize and manifest, or saved by an older version) is restored unverified.

Saves are asynchronous (training continues while arrays are written); `wait()` blocks
until they are on disk. Restoring takes an abstract target, a tree of
`jax.ShapeDtypeStruct(shape, dtype, sharding=...)` (from
`sora_jax.sharding.partitioning.abstract_state`), so a checkpoint written on one mesh
can be restored onto another mesh shape, or a single device, bit for bit.

Multi-process: every process calls `save`/`restore`; arrays are written by the
processes that own them, the data-iterator state by each process for itself.

    ckpt = Checkpointer(workdir, keep=3)
    ckpt.save(step, state, data_state=iterator.get_state(), config=config)
    state, data_state = ckpt.restore(abstract_state)       # latest step
    ckpt.close()
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from grain import checkpoint as grain_checkpoint

from sora_jax import configuration
from sora_jax.errors import ClearError

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
MANIFEST_SUBDIR = "checkpoint_manifests"
CONFIG_FILENAME = "config.json"
_WRITTEN_BY = "tools/train_vae.py or tools/train_dit.py (--workdir=...)"


class CheckpointNotFoundError(FileNotFoundError, ClearError):
  """The workdir has no checkpoint (or no config); the message says what was looked for."""


class CorruptCheckpointError(RuntimeError, ClearError):
  """A checkpoint exists but cannot be read; the message names the step directory."""


# Sections of the config that fix the shapes of a run's state: a resume with other values cannot work.
MODEL_SECTIONS = ("vae", "dit", "text")


def config_differences(saved: Any, current: Any, sections: tuple[str, ...] = MODEL_SECTIONS) -> list[str]:
  """'section.key: saved X, now Y' for each model-shaping field that differs between two configs."""
  saved, current = _config_dict(saved), _config_dict(current)
  out = []
  for section in sections:
    a, b = (
      configuration._flatten(saved.get(section) or {}, section + "."),
      configuration._flatten(current.get(section) or {}, section + "."),
    )
    for key in sorted(set(a) | set(b)):
      if key in a and key in b and json.dumps(a[key]) != json.dumps(b[key]):
        out.append(f"{key}: checkpoint {a[key]!r}, now {b[key]!r}")
  return out


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _files_of(step_dir: epath.Path) -> list[epath.Path]:
  """Every file under `step_dir` (walked level by level: epath's GCS paths refuse `**`)."""
  files, pending = [], [step_dir]
  while pending:
    for child in pending.pop().iterdir():
      (pending if child.is_dir() else files).append(child)
  return sorted(files)


class _DataState:
  """Holds one grain iterator state for grain's Orbax handler (which wants get_state/set_state).

  grain iterators return either bytes (DataLoader) or a JSON-able dict (dataset API);
  both are wrapped in a small JSON envelope so the file is text and the type survives.
  """

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    if isinstance(self.state, (bytes, bytearray)):
      envelope = {"encoding": "base64", "value": base64.b64encode(bytes(self.state)).decode("ascii")}
    else:
      envelope = {"encoding": "json", "value": self.state}
    return json.dumps(envelope).encode()

  def set_state(self, raw: bytes) -> None:
    envelope = json.loads(raw)
    decode = {"base64": lambda v: base64.b64decode(v), "json": lambda v: v}[envelope["encoding"]]
    self.state = decode(envelope["value"])

  def start_prefetch(self) -> None:  # called by grain's handler after set_state
    pass


def _as_path(path: str | os.PathLike) -> epath.Path:
  """A local path made absolute, or a cloud URL (gs://...) kept as is."""
  text = os.fspath(path)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def _config_dict(config: Any) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(configuration.to_json(config))
  return json.loads(json.dumps(config, default=list))


def save_config(workdir: str | os.PathLike, config: Any) -> epath.Path:
  """Writes `<workdir>/config.json` (process 0 only) and returns its path."""
  path = _as_path(workdir) / CONFIG_FILENAME
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (CONFIG_FILENAME + ".tmp")
    tmp.write_text(json.dumps(_config_dict(config), indent=2, sort_keys=True))
    tmp.replace(path)
  return path


class Checkpointer:
  """Saves and restores (state, data-iterator state, config) under `<workdir>/checkpoints`.

  Args:
    workdir: the training run's directory.
    keep: how many most recent checkpoints to keep (config.train.keep_checkpoints).
    save_interval_steps: `save` is a no-op unless step % this == 0 (or force=True).
    async_save: write arrays in the background.
  """

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, save_interval_steps: int = 1, async_save: bool = True):
    self.workdir = _as_path(workdir)
    self.directory = self.workdir / CHECKPOINT_SUBDIR
    # create=False: only reading a workdir (or a mistyped one) must not create directories.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_interval_steps, create=False, enable_async_checkpointing=async_save
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None when there is none."""
    return self._manager.latest_step()

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def save(self, step: int, state: Any, data_state: Any = None, config: Any = None, force: bool = False) -> bool:
    """Starts saving `state` (+ iterator state, + config) as checkpoint `step`.

    Args:
      step: the number of steps the state has taken.
      state: any pytree of jax.Arrays (e.g. a TrainState).
      data_state: `iterator.get_state()` of this process's data iterator (bytes or dict).
      config: the run's ConfigDict (also written to <workdir>/config.json).
      force: save even if `step` is not a multiple of save_interval_steps.
    Returns:
      Whether a save was started.
    """
    self.directory.mkdir(parents=True, exist_ok=True)
    self._manager.wait_until_finished()  # Orbax would wait here anyway; the finished steps get their manifests
    self.write_manifests()
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      items["data"] = grain_checkpoint.CheckpointSave(_DataState(data_state))
    if config is not None:
      items["config"] = ocp.args.JsonSave(_config_dict(config))
      save_config(self.workdir, config)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  @property
  def manifest_dir(self) -> epath.Path:
    return self.workdir / MANIFEST_SUBDIR

  def manifest_path(self, step: int) -> epath.Path:
    return self.manifest_dir / f"{step}.json"

  def write_manifests(self) -> None:
    """Process 0: a SHA-256 manifest for each finalized step that has none; drops those of deleted steps."""
    if jax.process_index() != 0 or self._manager.is_saving_in_progress():
      return
    steps = self.all_steps()
    if self.manifest_dir.exists():
      for old in self.manifest_dir.glob("*.json"):
        if old.stem.isdigit() and int(old.stem) not in steps:
          old.unlink()
    for step in steps:
      path = self.manifest_path(step)
      if path.exists():
        continue
      step_dir = self.step_dir(step)
      files = {str(f.relative_to(step_dir)): _sha256(f) for f in _files_of(step_dir)}
      self.manifest_dir.mkdir(parents=True, exist_ok=True)
      tmp = self.manifest_dir / f"{step}.json.tmp"
      tmp.write_text(json.dumps({"step": step, "algorithm": "sha256", "files": files}, indent=1, sort_keys=True))
      tmp.replace(path)

  def verify(self, step: int) -> bool:
    """Checks step `step` against its manifest: True if verified, False if it has none.

    Raises:
      CorruptCheckpointError: a file is missing or its SHA-256 differs (the message names it).
    """
    path = self.manifest_path(step)
    if not path.exists():
      return False
    step_dir = self.step_dir(step)
    try:
      files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
      raise self._corrupt(step, ValueError(f"its manifest {path} is unreadable: {e}")) from e
    for name, digest in files.items():
      file = step_dir / name
      if not file.exists():
        raise self._corrupt(step, FileNotFoundError(f"{name} is missing (listed in {path})"))
      if _sha256(file) != digest:
        raise self._corrupt(step, ValueError(f"{name} does not match its SHA-256 in {path} (the data changed on disk)"))
    return True

  def _missing_message(self) -> str:
    return (
      f"no checkpoint found in {self.directory} (looked for step directories like "
      f"{self.directory}/1000/state). Checkpoints are written by {_WRITTEN_BY}; check --workdir."
    )

  def restore(self, abstract_state: Any, step: int | None = None, restore_data: bool = True) -> tuple[Any, Any]:
    """Restores checkpoint `step` (default: the latest) onto the shardings of `abstract_state`.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)` with
        the saved state's structure; any mesh (or a single device) works.
      step: which checkpoint; None = latest.
      restore_data: also return this process's data-iterator state.
    Returns:
      (state, data_state); data_state is None when not saved, not asked for, or saved by
      a different number of processes (the data order then restarts).
    Raises:
      CheckpointNotFoundError: no checkpoint (or not that step).
      CorruptCheckpointError: the checkpoint cannot be read.
    """
    step = self._existing_step(step)
    self.verify(step)
    step_dir = self.step_dir(step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    data_file = step_dir / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    holder = _DataState()
    if restore_data and data_file.exists():
      items["data"] = grain_checkpoint.CheckpointRestore(holder)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax / tensorstore raise many types; all mean "cannot read this step"
      raise self._corrupt(step, e) from e
    data_state = holder.state if "data" in items else None
    return restored["state"], data_state

  def saved_tree(self, step: int | None = None) -> dict:
    """The structure of the state saved at `step` (default: latest): nested dicts, e.g.
    {"params": {"vae": {...}}, "opt_state": ..., "ema_params": ..., "step": ...}, array metadata at the leaves."""
    step = self._existing_step(step)
    return dict(ocp.PyTreeCheckpointHandler().metadata(self.step_dir(step) / "state").tree)

  def restore_partial(self, target: Any, step: int | None = None) -> tuple[Any, int]:
    """Reads only the arrays of `target` from checkpoint `step` (default: latest), onto their shardings.

    Args:
      target: a nested dict mirroring part of the saved state, with `jax.ShapeDtypeStruct(shape,
        dtype, sharding=...)` leaves, e.g. {"ema_params": {"vae": abstract_vae_params}}. Nothing
        else of the state (optimizer moments, other models) is read.
      step: which checkpoint; None = latest.
    Returns:
      (the restored tree, like `target` with jax.Arrays, the step restored).
    Raises:
      CheckpointNotFoundError: no checkpoint (or not that step).
      CorruptCheckpointError: the checkpoint cannot be read, or does not hold `target`'s arrays.
    """
    step = self._existing_step(step)
    self.verify(step)
    args = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    try:
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        restored = reader.restore(self.step_dir(step) / "state", args=args)
    except Exception as e:  # orbax / tensorstore raise many types; all mean "cannot read this step"
      raise self._corrupt(step, e) from e
    return restored, step

  def _existing_step(self, step: int | None) -> int:
    """`step`, or the latest when None; CheckpointNotFoundError naming the available ones if absent."""
    steps = self.all_steps()
    if step is None:
      step = self.latest_step()
    if step is None:
      raise CheckpointNotFoundError(self._missing_message())
    if step not in steps:
      raise CheckpointNotFoundError(f"no checkpoint for step {step} in {self.directory}; available steps: {steps}.")
    return step

  def _corrupt(self, step: int, error: Exception) -> CorruptCheckpointError:
    earlier = [s for s in self.all_steps() if s < step]
    step_dir = self.step_dir(step)
    cause = f"{type(error).__name__}: {error}"
    cause = cause if len(cause) <= 500 else cause[:500] + " ..."
    return CorruptCheckpointError(
      f"could not restore the checkpoint at {step_dir}: it is corrupt or incomplete (e.g. the run was "
      f"killed or the disk filled while writing, or a file changed on disk). To go on, delete {step_dir} so "
      f"training resumes from the previous checkpoint"
      f"{f' (available: {earlier})' if earlier else ' (there is none: training starts over)'}, "
      f"or restore an earlier step explicitly (restore(..., step=N)). Cause: {cause}"
    )

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    """The config saved with checkpoint `step` (default: latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointNotFoundError(self._missing_message())
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return configuration.merge_saved_config(restored["config"], source=f"the config of {self.step_dir(step)}")

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk (and have their manifests)."""
    self._manager.wait_until_finished()
    self.write_manifests()

  def close(self) -> None:
    """Waits for pending saves, writes their manifests and releases the manager's threads."""
    self._manager.wait_until_finished()
    self.write_manifests()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def load_config_from_workdir(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a run was trained with: `<workdir>/config.json`, else the latest checkpoint's copy.

  Merged onto today's `configs/base.py` (`configuration.merge_saved_config`), so runs saved by
  older versions load with every current key.

  Raises:
    CheckpointNotFoundError: neither exists (the message names both places looked at).
    configuration.ConfigError: the saved config uses a setting this version no longer has.
  """
  path = _as_path(workdir) / CONFIG_FILENAME
  if path.exists():
    return configuration.merge_saved_config(json.loads(path.read_text()), source=str(path))
  checkpoints = _as_path(workdir) / CHECKPOINT_SUBDIR
  if checkpoints.is_dir():
    with Checkpointer(workdir) as ckpt:
      if ckpt.latest_step() is not None:
        return ckpt.restore_config()
  raise CheckpointNotFoundError(
    f"no training run found in {workdir!s}: looked for {path} and for checkpoints in {checkpoints}. "
    f"Both are written by {_WRITTEN_BY}; point --workdir (or Pipeline.from_pretrained) at that directory."
  )
