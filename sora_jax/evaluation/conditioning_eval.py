"""Prompting with images and videos, measured on held-out shapes clips (issue 15's criteria).

    result = evaluate_modes(pipe, num_clips=16, seed=0)   # {"animate": {...}, "extend": {...}, ...}

Clips are rendered from clip specs drawn with a seed of their own (`EVAL_SEED`: never the
training set's draws), at the model's size, and every result is read back with
`shapes_analyzer` (color, shape, motion, per-frame centroids). Per mode, the fraction of clips
that meet every criterion ("pass_rate") and the means behind it:

  animate          frame 0 of a clip + its caption: frame 0 PSNR >= 28 dB against the image, color and
                   shape kept, motion as captioned, frame-0 centroid within 1.5 px of the image's
  animate_against  frame 0 of a clip + a caption with another motion: the object follows the caption
  extend           first 9 frames -> 17: given frames back (PSNR >= 28 dB), generated velocity within 25 %
  extend_backward  last 8 frames -> 17, likewise
  connect          frame 0 of a moving clip (object at A) and its last frame (at B): both ends within
                   2 px, the centroid moving monotonically from A to B
  loop             text -> loop: last vs first frame PSNR >= 28 dB and no jump on repeat (centroid
                   within 2 px)
  edit             a clip + its caption with a new color: the new color read back, the motion kept, the
                   track within 2 px of the source's on average
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sora_jax.data import shapes
from sora_jax.evaluation import shapes_analyzer as analyzer

EVAL_SEED = 15_015
MODES = ("animate", "animate_against", "extend", "extend_backward", "connect", "loop", "edit")
PSNR_MIN = 28.0
MOVING = ("left", "right", "up", "down")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
  return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def centroids(video: np.ndarray) -> np.ndarray:
  """[T, 2] (x, y) per frame; NaN where no object is found."""
  out = np.full((len(video), 2), np.nan)
  for i, frame in enumerate(video):
    m = analyzer.measure_frame(frame)
    if m is not None:
      out[i] = m.centroid
  return out


def velocity(track: np.ndarray) -> np.ndarray:
  """Least-squares px/frame (x, y) of a centroid track [T, 2] (NaN rows skipped)."""
  ok = ~np.isnan(track).any(axis=1)
  if ok.sum() < 2:
    return np.full(2, np.nan)
  t = np.arange(len(track))[ok]
  return np.array([np.polyfit(t, track[ok, d], 1)[0] for d in range(2)])


def velocity_match(generated: np.ndarray, given: np.ndarray) -> bool:
  """Same direction and speed within 25 % (a still object: within 0.15 px/frame)."""
  if np.isnan(generated).any() or np.isnan(given).any():
    return False
  speed = float(np.linalg.norm(given))
  return float(np.linalg.norm(generated - given)) <= max(0.25 * speed, 0.15)


def _specs(count: int, height: int, width: int, rng: np.random.Generator, motions=None) -> list[shapes.ClipSpec]:
  specs = []
  for i in range(count):
    motion = None if motions is None else motions[i % len(motions)]
    specs.append(shapes.sample_clip_spec(rng, aspect_ratio=width / height, motion=motion))
  return specs


def _render(specs, num_frames: int, height: int, width: int) -> np.ndarray:
  return np.stack([shapes.render_clip(s, num_frames, height, width) for s in specs])


def _summary(records: list[dict], keys: tuple[str, ...]) -> dict[str, Any]:
  out: dict[str, Any] = {"num_clips": len(records), "pass_rate": float(np.mean([r["pass"] for r in records]))}
  for key in keys:
    values = [r[key] for r in records if r.get(key) is not None and np.isfinite(r[key])]
    out[key] = float(np.mean(values)) if values else None
  return out


def _attributes(video: np.ndarray) -> dict:
  return analyzer.analyze_video(video)


def evaluate_modes(
  pipe,
  modes=MODES,
  *,
  num_clips: int = 16,
  seed: int = 0,
  edit_strength: float = 0.7,
  **sample_kwargs,
) -> dict[str, Any]:
  """Runs each mode on `num_clips` held-out clips; returns {mode: summary} plus "videos" / "marks"
  ({mode: (uint8 videos, given-frame flags [N, T])}) for contact sheets (not JSON)."""
  unknown = sorted(set(modes) - set(MODES))
  if unknown:
    raise ValueError(f"unknown modes {unknown}; valid: {', '.join(MODES)}")
  cfg = pipe.config.data
  frames, height, width = cfg.num_frames, cfg.height, cfg.width
  tf = pipe.temporal_factor
  rng = np.random.default_rng(EVAL_SEED)
  result: dict[str, Any] = {}
  shown: dict[str, Any] = {}
  kw = dict(seed=seed, expand_prompts=False, **sample_kwargs)

  def mark(n: int, given: list[int]) -> np.ndarray:
    m = np.zeros((num_clips, n), bool)
    m[:, given] = True
    return m

  if "animate" in modes or "animate_against" in modes:
    specs = _specs(num_clips, height, width, rng)
    clips = _render(specs, frames, height, width)
    for mode in ("animate", "animate_against"):
      if mode not in modes:
        continue
      captions, expected = [], []
      for i, s in enumerate(specs):
        motion = s.motion
        if mode == "animate_against":
          options = [m for m in shapes.MOTIONS if m != s.motion]
          motion = options[i % len(options)]
        expected.append((s.color, s.shape, motion))
        captions.append(shapes.canonical_caption_from(s.color, s.shape, motion))
      videos = pipe.animate(clips[:, 0], captions, num_frames=frames, **kw)
      records = []
      for video, clip, exp in zip(videos, clips, expected):
        got = _attributes(video)
        p0 = psnr(video[0], clip[0])
        c_img, c_gen = centroids(clip[:1])[0], centroids(video[:1])[0]
        dist = float(np.linalg.norm(c_img - c_gen))
        correct = analyzer.score(got, exp)
        ok = correct["color"] and correct["shape"] and correct["motion"]
        if mode == "animate":
          ok = ok and p0 >= PSNR_MIN and dist <= 1.5
        records.append(
          {"pass": bool(ok), "psnr_frame0": p0, "centroid_error_px": dist, "motion_ok": float(correct["motion"])}
        )
      result[mode] = _summary(records, ("psnr_frame0", "centroid_error_px", "motion_ok"))
      shown[mode] = (videos, mark(frames, [0]), captions)

  for mode in ("extend", "extend_backward"):
    if mode not in modes:
      continue
    given_n = 1 + tf * ((frames - 1) // (2 * tf)) if mode == "extend" else tf * ((frames - 1) // (2 * tf))
    specs = _specs(num_clips, height, width, rng)
    clips = _render(specs, frames, height, width)
    captions = [shapes.canonical_caption(s) for s in specs]
    backward = mode == "extend_backward"
    given_idx = list(range(frames - given_n, frames)) if backward else list(range(given_n))
    gen_idx = [i for i in range(frames) if i not in given_idx]
    videos = pipe.extend(clips[:, given_idx], captions, num_frames=frames, backward=backward, **kw)
    records = []
    for video, clip in zip(videos, clips):
      p = psnr(video[given_idx], clip[given_idx])
      v_given = velocity(centroids(clip[given_idx]))
      v_gen = velocity(centroids(video[gen_idx]))
      ok_v = velocity_match(v_gen, v_given)
      records.append({"pass": bool(p >= PSNR_MIN and ok_v), "psnr_given": p, "velocity_ok": float(ok_v)})
    result[mode] = _summary(records, ("psnr_given", "velocity_ok"))
    result[mode]["given_frames"] = given_n
    shown[mode] = (videos, mark(frames, given_idx), captions)

  if "connect" in modes:
    specs = _specs(num_clips, height, width, rng, motions=MOVING)
    clips = _render(specs, frames, height, width)
    captions = [shapes.canonical_caption(s) for s in specs]
    videos = pipe.connect(clips[:, 0], clips[:, -1], captions, num_frames=frames, **kw)
    records = []
    for video, clip in zip(videos, clips):
      a, b = centroids(clip[:1])[0], centroids(clip[-1:])[0]
      track = centroids(video)
      err_a, err_b = float(np.linalg.norm(track[0] - a)), float(np.linalg.norm(track[-1] - b))
      direction = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
      along = track @ direction
      monotone = bool(not np.isnan(along).any() and np.all(np.diff(along) >= -0.5))  # 0.5 px: centroid jitter
      ok = err_a <= 2.0 and err_b <= 2.0 and monotone
      records.append({"pass": bool(ok), "start_error_px": err_a, "end_error_px": err_b, "monotone": float(monotone)})
    result["connect"] = _summary(records, ("start_error_px", "end_error_px", "monotone"))
    shown["connect"] = (videos, mark(frames, [0] + list(range(frames - tf, frames))), captions)

  if "loop" in modes:
    specs = _specs(num_clips, height, width, rng)
    captions = [shapes.canonical_caption(s) for s in specs]
    videos = pipe.loop(captions, num_frames=frames, **kw)
    records = []
    for video in videos:
      p = psnr(video[-1], video[0])
      track = centroids(video[[0, -1]])
      jump = float(np.linalg.norm(track[1] - track[0]))
      ok = p >= PSNR_MIN and np.isfinite(jump) and jump <= 2.0
      records.append({"pass": bool(ok), "psnr_last_first": p, "jump_px": jump})
    result["loop"] = _summary(records, ("psnr_last_first", "jump_px"))
    shown["loop"] = (videos, mark(frames, [0] + list(range(frames - tf, frames))), captions)

  if "edit" in modes:
    specs = _specs(num_clips, height, width, rng)
    clips = _render(specs, frames, height, width)
    captions, new_colors = [], []
    for i, s in enumerate(specs):
      options = [c for c in shapes.COLORS if c != s.color]
      new_colors.append(options[i % len(options)])
      captions.append(shapes.canonical_caption_from(new_colors[-1], s.shape, s.motion))
    videos = pipe.edit(clips, captions, strength=edit_strength, **kw)
    records = []
    for video, clip, spec, color in zip(videos, clips, specs, new_colors):
      got = _attributes(video)
      track_err = np.linalg.norm(centroids(video) - centroids(clip), axis=1)
      err = float(np.nanmean(track_err)) if not np.isnan(track_err).all() else float("nan")
      color_ok, motion_ok = got["color"] == color, got["motion"] == spec.motion
      ok = color_ok and motion_ok and np.isfinite(err) and err <= 2.0
      records.append(
        {"pass": bool(ok), "color_ok": float(color_ok), "motion_ok": float(motion_ok), "track_error_px": err}
      )
    result["edit"] = _summary(records, ("color_ok", "motion_ok", "track_error_px"))
    result["edit"]["strength"] = edit_strength
    shown["edit"] = (videos, np.zeros((num_clips, frames), bool), captions)

  result["shown"] = shown
  return result


# ---------------------------------------------------------------------------- canvas vs segment alone


def canvas_encoding_psnr(vae_module, vae_params, clips: np.ndarray, tf: int) -> dict[str, Any]:
  """How well each way of encoding a segment that is not at the start of the clip reproduces it.

  For every clip [T, H, W, 3] (T = 1 + tf K) and segment (`SEGMENTS`: the last 2 latent frames,
  a backward extension; the last latent frame, connect's end), the segment's latent frames are
  made three ways and put in place of the clip's own latent frames, then the clip is decoded and
  the segment's frames compared with the original (PSNR, dB):

    whole     the clip's own latents (the VAE's reconstruction: the ceiling)
    black     encode the canvas: the segment at its place, black frames before it
    lead_in   encode the canvas with the frames before the segment filled with its first frame
              (a still lead-in: what `sampling.conditioning.build_canvas` does)
    alone     encode the segment alone (its first frame prepended as the causal image frame) and
              move those latent frames into place (the alternative: train the DiT to take them there)
  """
  import jax
  import jax.numpy as jnp

  from sora_jax.models import vae as vae_lib

  @jax.jit
  def encode(video):
    return vae_lib.encode_video(vae_module, vae_params, video.astype(jnp.float32) / 127.5 - 1.0)[0]

  @jax.jit
  def decode(z):
    return jnp.clip(jnp.round((vae_lib.decode_latents(vae_module, vae_params, z) + 1.0) * 127.5), 0, 255)

  num_frames = clips.shape[1]
  latent_frames = (num_frames - 1) // tf + 1
  out: dict[str, Any] = {}
  whole = encode(clips)
  for name, k in (("last_2_latent_frames", 2), ("last_latent_frame", 1)):
    seg = slice(num_frames - tf * k, num_frames)
    lat = slice(latent_frames - k, latent_frames)
    black = np.zeros_like(clips)
    black[:, seg] = clips[:, seg]
    repeat = np.repeat(clips[:, seg.start : seg.start + 1], num_frames, axis=1)
    repeat[:, seg] = clips[:, seg]
    alone_clip = np.concatenate([clips[:, seg.start : seg.start + 1], clips[:, seg]], axis=1)
    variants = {
      "whole": whole[:, lat],
      "black": encode(black)[:, lat],
      "lead_in": encode(repeat)[:, lat],
      "alone": encode(alone_clip)[:, 1:],
    }
    scores = {}
    for variant, z in variants.items():
      video = np.asarray(decode(whole.at[:, lat].set(z)))
      scores[variant] = float(np.mean([psnr(v[seg], c[seg]) for v, c in zip(video, clips)]))
    out[name] = scores
  return out
