"""sora_jax.data: datasets and the input pipeline.

  shapes.py                the procedural "shapes" clips (renderer + captions), plain numpy
  shapes_builder.py        TFDS builder of the shapes dataset (ArrayRecord, no TensorFlow)
  importer.py              your own videos -> clips (probe, resample, resize + crop or keep-aspect buckets)
  import_captions.py       caption sources of an import (CSV, sidecar .txt, your function), checked
  import_splits.py         which footage of an import is train / validation / test (by video or by time)
  video_folder_builder.py  TFDS builder for imported videos (tools/import_videos.py)
  datasets.py              load_data_source(config.data, split): which dataset a config names;
                           load_sources_by_size: one source per clip size
  pipeline.py              grain iterators: shuffle, augment, batch, resume
  latent_cache.py          VAE latents + text conditioning precomputed for DiT training
  tfds_compat.py           small TFDS workarounds (no TensorFlow, quiet logs)

Modules are imported explicitly (`from sora_jax.data import pipeline`) so that
importing the package stays cheap.
"""
