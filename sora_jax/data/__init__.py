"""sora_jax.data: datasets and the input pipeline.

  shapes.py                the procedural "shapes" clips (renderer + captions), plain numpy
  shapes_builder.py        TFDS builder of the shapes dataset (ArrayRecord, no TensorFlow)
  importer.py              your own videos -> clips (resample, resize + crop, caption sources)
  video_folder_builder.py  TFDS builder for imported videos (tools/import_videos.py)
  datasets.py              load_data_source(config.data, split): which dataset a config names
  pipeline.py              grain iterators: shuffle, augment, batch, resume
  latent_cache.py          VAE latents + text conditioning precomputed for DiT training
  tfds_compat.py           small TFDS workarounds (no TensorFlow, quiet logs)

Modules are imported explicitly (`from sora_jax.data import pipeline`) so that
importing the package stays cheap.
"""
