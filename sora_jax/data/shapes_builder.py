"""TFDS builder of the "shapes" dataset: ArrayRecord files readable without TensorFlow.

    builder = build_dataset(config.data)          # builds once into data_dir, then reuses it
    source = builder.as_data_source(split="train")  # random access, decoded to numpy

Each example is a pure function of (dataset_seed, split, index) and the build's size and
concept set: its own numpy Generator seeded with those draws a `ClipSpec` and a
paraphrased caption, so a build decodes to the same bytes on every machine and any example
can be regenerated alone (`generate_example`). (The files themselves can differ: TFDS writes
each example's features in an order that varies between processes.) The example at index i
of a split is the i-th record of that split (shuffling at write time is disabled).

Sizes (DESIGN.md §4): any frames x height x width; SIZES lists the multi-size grid
(1, 9, 17 and 33 frames at 32x32, 32x48 and 48x32). Each size is its own build
(`make_config(num_frames=..., height=..., width=...)`, or all at once with
`build_sizes`), so every size is one fixed-shape ArrayRecord source. A 1-frame clip is an
image: always still, captioned like a still clip or without a motion ("a red circle").

Concept sets: "default" (the 7 colours x 3 shapes x 5 motions every demo trains on) and
"new_concepts" (orange and diamond: every colour x shape x motion combination with at
least one of them, 55 in all, each equally often; for fine-tuning), "new_concepts_replay"
(those interleaved 1:1 with default-set clips, against forgetting), chosen with
`make_config(concepts=...)` or `config.data.builder_config`.

Features per example:
  video              uint8 [T, H, W, 3], zlib-compressed Tensor
  caption            str, the training caption (canonical form or a paraphrase)
  canonical_caption  str, 'a {color} {shape} moving {dir}' / 'a {color} {shape} staying still'
  color, shape, motion  str (names from shapes.ALL_COLORS / ALL_SHAPES / MOTIONS)
  size_frac          float32, object size / the frame's shorter side
  start_center, end_center  float32 [2], (x, y) as fractions of width / height
  index              int64, the example's index in its split

TFDS without TensorFlow (DESIGN.md §6): only Tensor / Text / Scalar features and the
array_record file format are used; this builder lives in a package module because
TFDS resolves builder classes by module.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from sora_jax.data import shapes
from sora_jax.data.tfds_compat import LocalBuilderMixin, builder_code_path, prepare_locally

# 1.1.0: objects sized on the shorter side, a random stream per size, 1-frame stills, new concepts.
# The default 17x32x32 build decodes to exactly 1.0.0's clips (tests/test_shapes_dataset.py checks it).
VERSION = "1.1.0"
RELEASE_NOTES = {
  "1.0.0": "Initial release.",
  "1.1.0": "Several sizes (object sized on the shorter side), 1-frame stills, the new_concepts set.",
}
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
DEFAULT_SPLIT_SIZES = (2048, 128, 128)  # train, validation, test
ENV_DATA_DIR = "SORA_JAX_DATA"

# Concept set -> its split sizes when none are given. new_concepts: 4 train clips of each of its 55
# combinations (~200 for a CPU fine-tune), one of each in validation and in test. new_concepts_replay:
# the same 220 new-concept clips interleaved with as many clips of the default set (even index: new,
# odd: default), the "prior preservation" of DreamBooth-style fine-tunes, against forgetting.
CONCEPT_SETS: dict[str, tuple[int, int, int]] = {
  "default": DEFAULT_SPLIT_SIZES,
  "new_concepts": (220, 55, 55),
  "new_concepts_replay": (440, 110, 110),
}
CONCEPT_IDS = {"default": 0, "new_concepts": 1, "new_concepts_replay": 2}

# The multi-size grid of DESIGN.md §4: (frames, height, width).
DURATIONS = (1, 9, 17, 33)
RESOLUTIONS = ((32, 32), (32, 48), (48, 32))  # square, landscape, portrait (H x W)
SIZES: tuple[tuple[int, int, int], ...] = tuple((t, h, w) for t in DURATIONS for h, w in RESOLUTIONS)
# The size whose random stream keeps the key of version 1.0.0 (seed, split, index): the demo's data.
DEFAULT_SIZE = (17, 32, 32)


@dataclasses.dataclass(kw_only=True)
class ShapesConfig(tfds.core.BuilderConfig):
  """Clip size, split sizes, seed and concept set of one build; `config_name` gives its name."""

  num_frames: int = 17
  height: int = 32
  width: int = 32
  num_train: int = DEFAULT_SPLIT_SIZES[0]
  num_validation: int = DEFAULT_SPLIT_SIZES[1]
  num_test: int = DEFAULT_SPLIT_SIZES[2]
  seed: int = 0
  concepts: str = "default"

  @property
  def split_sizes(self) -> dict[str, int]:
    return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}


def config_name(
  num_frames: int,
  height: int,
  width: int,
  seed: int,
  split_sizes: tuple[int, int, int] | None = None,
  concepts: str = "default",
) -> str:
  """'f17_32x32_s0' for the concept set's default split sizes, else e.g. 'f9_32x32_s0_n32-8-8';
  the new_concepts set is prefixed: 'new_concepts_f17_32x32_s0'."""
  name = f"f{num_frames}_{height}x{width}_s{seed}"
  if split_sizes is not None and tuple(split_sizes) != CONCEPT_SETS[concepts]:
    name += "_n" + "-".join(str(n) for n in split_sizes)
  return name if concepts == "default" else f"{concepts}_{name}"


def make_config(
  *,
  num_frames: int = 17,
  height: int = 32,
  width: int = 32,
  seed: int = 0,
  num_train: int | None = None,
  num_validation: int | None = None,
  num_test: int | None = None,
  concepts: str = "default",
) -> ShapesConfig:
  """A ShapesConfig with a name derived from its fields (checked for sane values).

  Split sizes left None are the concept set's defaults (CONCEPT_SETS).
  """
  if concepts not in CONCEPT_SETS:
    raise ValueError(f"shapes dataset: concepts must be one of {tuple(CONCEPT_SETS)}, got {concepts!r}")
  defaults = CONCEPT_SETS[concepts]
  num_train = defaults[0] if num_train is None else num_train
  num_validation = defaults[1] if num_validation is None else num_validation
  num_test = defaults[2] if num_test is None else num_test
  for field, value, low in (
    ("num_frames", num_frames, 1),
    ("height", height, 8),
    ("width", width, 8),
    ("num_train", num_train, 0),
    ("num_validation", num_validation, 0),
    ("num_test", num_test, 0),
    ("seed", seed, 0),
  ):
    if isinstance(value, bool) or int(value) != value or value < low:
      raise ValueError(f"shapes dataset: {field} must be an integer >= {low}, got {value!r}")
  sizes = (num_train, num_validation, num_test)
  return ShapesConfig(
    name=config_name(num_frames, height, width, seed, sizes, concepts),
    version=VERSION,
    release_notes=RELEASE_NOTES,
    description=(
      f"{num_frames} frames at {height}x{width}, seed {seed}, concepts {concepts}, train/validation/test = {sizes}"
    ),
    num_frames=num_frames,
    height=height,
    width=width,
    seed=seed,
    num_train=num_train,
    num_validation=num_validation,
    num_test=num_test,
    concepts=concepts,
  )


def _stream_key(config: ShapesConfig, split: str, index: int) -> list[int]:
  """Seed of example `index`'s Generator: (seed, split, index), plus the size and concept set
  for every build but the default one, so the clips of a multi-size mixture differ between
  sizes while the default 17x32x32 data keeps its bytes."""
  key = [config.seed, SPLIT_IDS[split], index]
  if ((config.num_frames, config.height, config.width), config.concepts) != (DEFAULT_SIZE, "default"):
    key += [config.num_frames, config.height, config.width, CONCEPT_IDS[config.concepts]]
  return key


def example_spec(config: ShapesConfig, split: str, index: int) -> tuple[shapes.ClipSpec, str]:
  """(clip spec, training caption) of example `index` of `split`, without rendering it.

  A pure function of the config (seed, size, concept set), split and index. The default
  concept set draws colour, shape and motion at random; new_concepts cycles through its
  55 combinations (example i has combination i mod 55), so every one is equally common;
  new_concepts_replay has combination (i // 2) mod 55 at even i and a default-set clip at odd i.
  A 1-frame clip is always still.
  """
  if split not in SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_IDS)}")
  image = config.num_frames == 1
  rng = np.random.default_rng(_stream_key(config, split, index))
  fixed: dict[str, str] = {"motion": "still"} if image else {}
  replayed = config.concepts == "new_concepts_replay" and index % 2 == 1  # odd: a default-set clip
  if config.concepts in ("new_concepts", "new_concepts_replay") and not replayed:
    combinations = shapes.new_concept_combinations(motions=("still",) if image else shapes.MOTIONS)
    step = 2 if config.concepts == "new_concepts_replay" else 1
    color, shape, motion = combinations[(index // step) % len(combinations)]
    fixed = {"color": color, "shape": shape, "motion": motion}
  spec = shapes.sample_clip_spec(rng, aspect_ratio=config.width / config.height, **fixed)
  return spec, shapes.paraphrase_caption(spec, rng, image=image)


def generate_example(config: ShapesConfig, split: str, index: int) -> dict[str, Any]:
  """Example `index` of `split`: its spec rendered at the config's frames x height x width."""
  spec, caption = example_spec(config, split, index)
  return {
    "video": shapes.render_clip(spec, config.num_frames, config.height, config.width),
    "caption": caption,
    "canonical_caption": shapes.canonical_caption(spec),
    "color": spec.color,
    "shape": spec.shape,
    "motion": spec.motion,
    "size_frac": np.float32(spec.size_frac),
    "start_center": np.asarray(spec.start_center, np.float32),
    "end_center": np.asarray(spec.end_center, np.float32),
    "index": np.int64(index),
  }


class ShapesDataset(LocalBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """Procedural one-object clips with captions (DESIGN.md §4). Never downloads anything."""

  name = "shapes"
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = RELEASE_NOTES
  BUILDER_CONFIGS = [make_config()]  # f17_32x32_s0; any other comes from make_config(...)
  code_path = builder_code_path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg: ShapesConfig = self.builder_config
    return self.dataset_info_from_configs(
      description=__doc__,
      disable_shuffling=True,  # record i of a split is example i
      features=tfds.features.FeaturesDict(
        {
          "video": tfds.features.Tensor(
            shape=(cfg.num_frames, cfg.height, cfg.width, 3), dtype=np.uint8, encoding="zlib"
          ),
          "caption": tfds.features.Text(),
          "canonical_caption": tfds.features.Text(),
          "color": tfds.features.Text(),
          "shape": tfds.features.Text(),
          "motion": tfds.features.Text(),
          "size_frac": tfds.features.Scalar(dtype=np.float32),
          "start_center": tfds.features.Tensor(shape=(2,), dtype=np.float32),
          "end_center": tfds.features.Tensor(shape=(2,), dtype=np.float32),
          "index": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      homepage="https://github.com/sora-jax/sora_jax",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {
      split: self._generate_examples(split, size) for split, size in self.builder_config.split_sizes.items() if size > 0
    }

  def _generate_examples(self, split: str, size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    for index in tqdm.trange(size, desc=f"shapes/{self.builder_config.name} {split}", unit="clip", leave=False):
      yield index, generate_example(self.builder_config, split, index)


# ------------------------------------------------------------------ building


def resolve_data_dir(data_dir: str = "") -> str:
  """`data_dir`, else $SORA_JAX_DATA, else ~/sora_jax_data (absolute, user-expanded)."""
  chosen = data_dir or os.environ.get(ENV_DATA_DIR) or os.path.join("~", "sora_jax_data")
  return os.path.abspath(os.path.expanduser(chosen))


def concepts_from_data_cfg(data_cfg) -> str:
  """The concept set a `config.data` section names: builder_config "" -> "default", or another of CONCEPT_SETS."""
  name = data_cfg.builder_config or "default"
  if name not in CONCEPT_SETS:
    raise ValueError(
      f"config.data.builder_config={data_cfg.builder_config!r} is not a shapes concept set; "
      f"use '' (the default set) or one of {tuple(CONCEPT_SETS)}"
    )
  return name


def config_from_data_cfg(data_cfg, size: tuple[int, int, int] | None = None) -> ShapesConfig:
  """The ShapesConfig described by a `config.data` section (configs/base.py).

  size: (frames, height, width) instead of the section's own (for one size of a mixture).
  """
  num_frames, height, width = size or (data_cfg.num_frames, data_cfg.height, data_cfg.width)
  return make_config(
    num_frames=num_frames,
    height=height,
    width=width,
    seed=data_cfg.dataset_seed,
    num_train=data_cfg.num_train,
    num_validation=data_cfg.num_validation,
    num_test=data_cfg.num_test,
    concepts=concepts_from_data_cfg(data_cfg),
  )


def _dir_size_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _make_builder(config: ShapesConfig, data_dir: str) -> ShapesDataset:
  # TFDS refuses a config object that shares its name with a BUILDER_CONFIGS entry: pass the name then.
  predefined = {c.name: c for c in ShapesDataset.BUILDER_CONFIGS}
  if config.name in predefined and predefined[config.name] != config:
    raise ValueError(f"shapes config {config.name!r} differs from the predefined one: {config}")
  chosen = config.name if config.name in predefined else config
  return ShapesDataset(config=chosen, data_dir=resolve_data_dir(data_dir), file_format="array_record")


def build_shapes(config: ShapesConfig, data_dir: str = "", *, verbose: bool = True) -> ShapesDataset:
  """Builds `config` into `data_dir` (see resolve_data_dir) unless already built; returns the builder.

  A build always reports its time and size; verbose=True also reports reuse.

  A build interrupted half-way leaves only TFDS's temporary folder, which the next
  call discards, so re-running is always safe.
  """
  builder = _make_builder(config, data_dir)
  if builder.is_prepared():
    if verbose:
      print(f"shapes dataset {config.name}: reusing {builder.data_dir}")
    return builder
  start = time.time()
  try:
    prepare_locally(builder)
  except OSError:
    # Another process (a second host, a parallel test worker) finished the same
    # deterministic build first and TFDS could not move ours into place: use theirs.
    builder = _make_builder(config, data_dir)
    if not builder.is_prepared():
      raise
  size_mb = _dir_size_bytes(builder.data_dir) / 2**20
  total = sum(config.split_sizes.values())
  print(
    f"shapes dataset {config.name}: built {total} clips in {time.time() - start:.1f} s, "
    f"{size_mb:.1f} MiB on disk at {builder.data_dir}",
    flush=True,
  )
  return builder


def build_dataset(data_cfg, *, size: tuple[int, int, int] | None = None, verbose: bool = True) -> ShapesDataset:
  """Builds (or reuses) the shapes dataset a `config.data` section describes (at `size`, if given)."""
  if data_cfg.dataset != "shapes":
    raise ValueError(
      f"build_dataset builds the 'shapes' dataset, but config.data.dataset="
      f"{data_cfg.dataset!r}; import your own videos with tools/import_videos.py"
    )
  return build_shapes(config_from_data_cfg(data_cfg, size), data_cfg.data_dir, verbose=verbose)


def check_sizes(sizes) -> tuple[tuple[int, int, int], ...]:
  """`sizes` as a tuple of (frames, height, width) int triples, checked (no duplicates)."""
  checked = []
  for size in sizes:
    if len(size) != 3 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in size):
      raise ValueError(f"a size must be (frames, height, width) with positive integers, got {size!r}")
    checked.append(tuple(int(v) for v in size))
  if not checked or len(set(checked)) != len(checked):
    raise ValueError(f"sizes must be a non-empty list of distinct (frames, height, width), got {list(sizes)!r}")
  return tuple(checked)


def build_sizes(
  sizes=SIZES, data_dir: str = "", *, verbose: bool = True, **config_kwargs
) -> dict[tuple[int, int, int], ShapesDataset]:
  """Builds (or reuses) one shapes dataset per (frames, height, width) in `sizes`.

  config_kwargs go to make_config (seed, split sizes, concepts), the same for every size.
  Returns {size: builder}, in the order of `sizes`.
  """
  return {
    size: build_shapes(
      make_config(num_frames=size[0], height=size[1], width=size[2], **config_kwargs), data_dir, verbose=verbose
    )
    for size in check_sizes(sizes)
  }


def delete_build(config: ShapesConfig, data_dir: str = "") -> None:
  """Removes a build of `config` (all versions) from `data_dir`."""
  path = os.path.join(resolve_data_dir(data_dir), ShapesDataset.name, config.name)
  shutil.rmtree(path, ignore_errors=True)
