"""VAE reconstruction quality on a held-out split: PSNR and SSIM, written as JSON.

    result = evaluate_vae("runs/demo/vae", split="test", num_clips=64)
    # {"psnr": 31.2, "ssim": 0.97, "num_clips": 64, "split": "test", "step": 1500, ...}

Clips are reconstructed from the posterior mean (encode -> decode, with the config's
chunking/tiling), quantised to uint8 like a saved video, and compared with the uint8
originals: PSNR and SSIM (sora_jax.evaluation.metrics, max value 255) per frame, averaged
over every frame of every clip. Used by `tools/train_vae.py --eval_only` and
`tools/evaluate.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.data import pipeline
from sora_jax.evaluation import metrics
from sora_jax.media.convert import to_uint8
from sora_jax.models import vae as vae_lib
from sora_jax.restore import restore_vae


@jax.jit
def frame_metrics(original: jnp.ndarray, reconstruction: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Per-frame PSNR and SSIM of [B, T, H, W, 3] videos in [-1, 1], after uint8 quantisation.

  Returns {"psnr": [B, T], "ssim": [B, T]}. A frame reconstructed exactly gets PSNR 100 dB
  (instead of +inf, so means stay finite).
  """
  a = to_uint8(original).astype(jnp.float32)
  b = to_uint8(reconstruction).astype(jnp.float32)
  psnr = jnp.minimum(metrics.psnr(a, b, max_value=255.0), 100.0)
  return {"psnr": psnr, "ssim": metrics.ssim(a, b, max_value=255.0)}


def evaluate_reconstructions(
  reconstruct: Callable[[np.ndarray], jnp.ndarray], batches: Iterable[dict], max_batches: int = 0, max_clips: int = 0
) -> dict[str, float]:
  """Mean per-frame PSNR / SSIM of `reconstruct(batch["video"])` over the batches.

  Args:
    reconstruct: video [B, T, H, W, 3] in [-1, 1] -> reconstruction, same shape.
    batches: dicts with "video" float32 [B, T, H, W, 3] in [-1, 1].
    max_batches: stop after this many (0 = all).
    max_clips: score only the first this many clips (0 = all), so that a score does not
      depend on the batch size it was computed with.
  Returns:
    {"psnr", "psnr_min" (worst clip), "ssim", "num_clips"}.
  """
  psnr, ssim, clips = [], [], 0
  for i, batch in enumerate(batches):
    if (max_batches and i >= max_batches) or (max_clips and clips >= max_clips):
      break
    video = np.asarray(batch["video"], np.float32)
    result = jax.device_get(frame_metrics(video, reconstruct(video)))
    psnr.append(result["psnr"])
    ssim.append(result["ssim"])
    clips += len(video)
  if not psnr:
    raise ValueError(
      "no batches to evaluate: the split is empty or smaller than one batch (lower --config.data.batch_size)"
    )
  psnr, ssim = np.concatenate(psnr), np.concatenate(ssim)
  if max_clips:
    psnr, ssim = psnr[:max_clips], ssim[:max_clips]
  return {
    "psnr": float(psnr.mean()),
    "psnr_min": float(psnr.mean(axis=1).min()),
    "ssim": float(ssim.mean()),
    "num_clips": int(psnr.shape[0]),
  }


def evaluate_vae(workdir: str, split: str = "test", num_clips: int = 64, batch_size: int | None = None) -> dict:
  """Restores the VAE in `workdir` and evaluates it on the first `num_clips` clips of `split`
  (0 = all of it) of its own dataset config, in batches of `batch_size` (default: the config's).

  Returns {"psnr", "psnr_min", "ssim", "num_clips", "split", "step"}.
  """
  vae = restore_vae(workdir)

  def reconstruct(video):
    mean, _ = vae_lib.encode_video(vae.module, vae.params, video)
    return vae_lib.decode_latents(vae.module, vae.params, mean)

  data = vae.config.data
  iterator = pipeline.make_eval_iterator(data, split, batch_size=batch_size or data.batch_size, drop_remainder=False)
  try:
    result = evaluate_reconstructions(reconstruct, iterator, max_clips=num_clips)
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  return dict(result, split=split, step=vae.step)


def write_json(path: str, result: dict) -> str:
  """Writes `result` as indented JSON (folders created); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  return path
