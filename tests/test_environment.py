"""The environment contract: TensorFlow is neither installed nor pulled in by the data stack."""

import importlib.metadata
import importlib.util
import subprocess
import sys


def test_tensorflow_is_not_installed():
  assert importlib.util.find_spec("tensorflow") is None, "TensorFlow must not be installed (DESIGN.md §6)"
  for distribution in ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-intel"):
    try:
      importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
      continue
    raise AssertionError(f"{distribution} is installed; TFDS and grain must run without it")


def test_data_stack_imports_without_tensorflow():
  code = (
    "import sys; import sora_jax.data.pipeline, sora_jax.data.shapes_builder, "
    "sora_jax.data.video_folder_builder, tensorflow_datasets as tfds, grain; "
    "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:] or "tensorflow was imported"
