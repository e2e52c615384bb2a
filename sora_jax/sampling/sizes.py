"""Which clip sizes a trained system can produce, and the error that names the nearest ones.

A causal VAE with temporal factor tf makes 1 + tf*k frames (1 = an image) and a spatial factor
sf; the DiT cuts latents into (pt, ph, pw) patches. So frames must be 1 + tf*k with (1 + k)
divisible by pt, and height / width multiples of sf*ph / sf*pw. Any such size works at
sampling time (positions are computed from each clip's own grid); how well depends on the
sizes the model was trained on.

    check_size(17, 40, 40, temporal_factor=4, spatial_factor=8, patch_size=(1, 2, 2))
    # ValueError: 17x40x40 (frames x height x width) cannot be produced ...; nearest valid sizes:
    #   17x32x32, 17x32x48, 17x48x32, 17x48x48
"""

from __future__ import annotations

from collections.abc import Sequence

from sora_jax.errors import InputError


def valid_frames(frames: int, temporal_factor: int, pt: int = 1) -> bool:
  return frames >= 1 and (frames - 1) % temporal_factor == 0 and ((frames - 1) // temporal_factor + 1) % pt == 0


def nearest_frames(frames: int, temporal_factor: int, pt: int = 1) -> list[int]:
  """The valid frame counts just below and above `frames` (one if `frames` is valid or below the first)."""
  below = [n for n in range(max(frames, 1), 0, -1) if valid_frames(n, temporal_factor, pt)][:1]
  above = next(
    n
    for n in range(max(frames, 1), max(frames, 1) + 2 * temporal_factor * pt + 2)
    if valid_frames(n, temporal_factor, pt)
  )
  return sorted(set(below + [above]))


def nearest_multiples(size: int, multiple: int) -> list[int]:
  lower = max(multiple, size // multiple * multiple)
  upper = max(multiple, -(-size // multiple) * multiple)
  return sorted({lower, upper})


def check_size(
  num_frames: int, height: int, width: int, *, temporal_factor: int, spatial_factor: int, patch_size: Sequence[int]
) -> None:
  """Raises ValueError naming the nearest valid sizes unless (num_frames, height, width) can be produced."""
  pt, ph, pw = (int(p) for p in patch_size)
  mh, mw = spatial_factor * ph, spatial_factor * pw
  ok_t = valid_frames(num_frames, temporal_factor, pt)
  ok_h = height >= mh and height % mh == 0
  ok_w = width >= mw and width % mw == 0
  if ok_t and ok_h and ok_w:
    return
  frames = [num_frames] if ok_t else nearest_frames(num_frames, temporal_factor, pt)
  heights = [height] if ok_h else nearest_multiples(height, mh)
  widths = [width] if ok_w else nearest_multiples(width, mw)
  nearest = ", ".join(f"{t}x{h}x{w}" for t in frames for h in heights for w in widths)
  rules = []
  if not ok_t:
    rules.append(
      f"frames must be 1+{temporal_factor}k (the causal VAE's temporal factor {temporal_factor}"
      + (f", with 1+k divisible by the DiT's time patch {pt}" if pt > 1 else "")
      + "; 1 = an image)"
    )
  if not (ok_h and ok_w):
    rules.append(
      f"height must be a positive multiple of {mh} and width of {mw} (VAE spatial factor {spatial_factor} "
      f"x DiT patch {ph}x{pw})"
    )
  raise InputError(
    f"{num_frames}x{height}x{width} (frames x height x width) cannot be produced: {'; '.join(rules)}. "
    f"Nearest valid sizes: {nearest}"
  )
