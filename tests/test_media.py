"""Tests for sora_jax.media: mp4/GIF round trips, corrupt files, contact sheets, uint8 conversion."""

import numpy as np
import pytest
from PIL import Image

from sora_jax.media import contact_sheet, convert, video_io

PALETTE = np.array(video_io.RESERVED_GIF_COLORS, dtype=np.uint8)  # black + 7 shapes colours


def _psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return 10 * np.log10(255.0**2 / mse)


def _smooth_clip(t=9, h=32, w=32):
  """A smooth, moving colour gradient: easy for H.264, hard to get right by accident."""
  tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  r = 128 + 100 * np.sin(0.2 * xx + 0.3 * tt) * np.cos(0.15 * yy)
  g = 128 + 90 * np.cos(0.1 * (xx + yy) - 0.2 * tt)
  b = 128 + 80 * np.sin(0.12 * yy + 0.1 * tt)
  return np.stack([r, g, b], -1).astype(np.uint8)


def _palette_clip(t=9, h=16, w=16, seed=0):
  """Random pixels drawn from black + the seven saturated colours."""
  idx = np.random.RandomState(seed).randint(0, len(PALETTE), (t, h, w))
  return PALETTE[idx]


# ----------------------------------------------------------------------------- mp4


def test_mp4_round_trip_is_close(tmp_path):
  clip = _smooth_clip()
  path = video_io.write_mp4(tmp_path / "sub" / "clip.mp4", clip, fps=8)
  frames, fps = video_io.read_video(path)
  assert frames.shape == clip.shape and frames.dtype == np.uint8
  assert fps == pytest.approx(8.0)
  assert _psnr(frames, clip) > 30.0
  assert not list(tmp_path.glob("sub/*.partial"))  # the temporary file was renamed


def test_mp4_scale_and_odd_sizes_are_padded_to_even(tmp_path):
  clip = _smooth_clip(t=5, h=15, w=9)
  frames, fps = video_io.read_video(video_io.write_mp4(tmp_path / "odd.mp4", clip, fps=7.5, scale=3))
  assert frames.shape == (5, 46, 28, 3)  # 45 -> 46, 27 -> 28
  assert fps == pytest.approx(7.5)
  # Undo the nearest upscale by sampling block centres: still close to the original.
  assert _psnr(frames[:, 1:45:3, 1:27:3], clip) > 28.0


def test_read_max_frames(tmp_path):
  path = video_io.write_mp4(tmp_path / "c.mp4", _smooth_clip(t=9), fps=8)
  frames, _ = video_io.read_video(path, max_frames=4)
  assert frames.shape[0] == 4


def test_write_rejects_bad_frames(tmp_path):
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    video_io.write_mp4(tmp_path / "x.mp4", np.zeros((4, 8, 8), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_gif(tmp_path / "x.gif", np.zeros((4, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="fps"):
    video_io.write_mp4(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.uint8), fps=0)
  with pytest.raises(ValueError, match="suffix"):
    video_io.write_video(tmp_path / "x.avi", np.zeros((4, 8, 8, 3), np.uint8))


# ----------------------------------------------------------------------------- gif


def test_gif_round_trip_is_exact_for_palette_colours(tmp_path):
  clip = _palette_clip()
  frames, fps = video_io.read_video(video_io.write_gif(tmp_path / "c.gif", clip, fps=8))
  np.testing.assert_array_equal(frames, clip)
  assert fps == pytest.approx(8.0)


def test_gif_with_many_colours_keeps_shape_colours_exact(tmp_path):
  clip = _smooth_clip(t=6, h=24, w=24)  # far more than 256 colours
  clip[:, :4, :4] = PALETTE[1]  # a red corner
  clip[:, -4:, -4:] = PALETTE[5]  # a cyan corner
  frames, _ = video_io.read_video(video_io.write_gif(tmp_path / "many.gif", clip, fps=8, scale=2))
  assert frames.shape == (6, 48, 48, 3)
  np.testing.assert_array_equal(frames[:, :8, :8], np.broadcast_to(PALETTE[1], (6, 8, 8, 3)))
  np.testing.assert_array_equal(frames[:, -8:, -8:], np.broadcast_to(PALETTE[5], (6, 8, 8, 3)))
  assert _psnr(frames[:, ::2, ::2], clip) > 25.0


def test_gif_still_clip_keeps_its_frame_count(tmp_path):
  # Pillow merges identical frames; read_video must repeat them back.
  clip = np.repeat(_palette_clip(t=1), 7, axis=0)
  clip[5:] = PALETTE[3]  # then two blue frames
  frames, _ = video_io.read_video(video_io.write_gif(tmp_path / "still.gif", clip, fps=8))
  np.testing.assert_array_equal(frames, clip)


def test_gif_is_looping_and_readable_by_pyav(tmp_path):
  import av

  clip = _palette_clip(t=5)
  path = video_io.write_gif(tmp_path / "c.gif", clip, fps=8)
  with Image.open(path) as image:
    assert image.info.get("loop") == 0  # loop forever
    assert image.n_frames == 5
  with av.open(str(path)) as container:
    decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
  np.testing.assert_array_equal(decoded, clip)


# ----------------------------------------------------------------------------- read errors


@pytest.mark.parametrize(
  "name,content",
  [
    ("garbage.mp4", b"this is not a video" * 50),
    ("empty.mp4", b""),
    ("garbage.gif", b"GIF89a" + b"\x00" * 30),
    ("garbage.webm", b"\x1a\x45\xdf\xa3" + b"\x00" * 40),
  ],
)
def test_corrupt_files_raise_video_read_error(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(video_io.VideoReadError) as info:
    video_io.read_video(path)
  assert info.value.path == str(path)
  assert isinstance(info.value, ValueError)
  assert str(path) in str(info.value)


def test_truncated_mp4_raises_or_returns_prefix(tmp_path):
  path = video_io.write_mp4(tmp_path / "c.mp4", _smooth_clip(), fps=8)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(video_io.VideoReadError):  # the moov atom sits at the end: unreadable
    video_io.read_video(path)


def test_missing_file_and_non_video(tmp_path):
  with pytest.raises(video_io.VideoReadError, match="does not exist"):
    video_io.read_video(tmp_path / "nope.mp4")
  not_a_video = tmp_path / "text.mov"
  not_a_video.write_text("hello")
  with pytest.raises(video_io.VideoReadError):
    video_io.read_video(not_a_video)


# ----------------------------------------------------------------------------- contact sheets


def _moving_square_clips(n=3, t=9, size=16):
  clips = np.zeros((n, t, size, size, 3), np.uint8)
  for i in range(n):
    for f in range(t):
      clips[i, f, 4:10, f : f + 6] = PALETTE[1 + i]
  return clips


def test_contact_sheet_layout(tmp_path):
  clips = _moving_square_clips()
  path = contact_sheet.save_contact_sheet(tmp_path / "s.png", clips, ["a", "b", "c"], max_frames=5, scale=2)
  sheet = np.asarray(Image.open(path).convert("RGB"))
  grid = contact_sheet.make_grid_image(clips, ["a", "b", "c"], max_frames=5, scale=2)
  np.testing.assert_array_equal(sheet, grid)
  # 5 frames of 32 px plus gaps and margins, rows stacked with caption lines.
  assert sheet.shape[1] > 5 * 32 and sheet.shape[0] > 3 * 32
  # Every clip colour appears, in row order top to bottom.
  first_rows = [np.argwhere(np.all(sheet == PALETTE[1 + i], axis=-1))[:, 0].min() for i in range(3)]
  assert first_rows == sorted(first_rows)
  # Background is dark gray and captions are drawn in white.
  assert tuple(sheet[0, 0]) == contact_sheet.BACKGROUND
  assert np.any(np.all(sheet == 255, axis=-1))


def test_contact_sheet_frames_are_placed_left_to_right(tmp_path):
  clips = _moving_square_clips(n=1, t=3)
  grid = contact_sheet.make_grid_image(clips, None, scale=1)
  red = np.all(grid == PALETTE[1], axis=-1)
  cols = np.argwhere(red)[:, 1]
  # Three separate red squares, each 6 px wide, in increasing x.
  runs = np.split(np.unique(cols), np.where(np.diff(np.unique(cols)) > 1)[0] + 1)
  assert len(runs) == 3 and all(len(r) == 6 for r in runs)


def test_select_frames_keeps_first_and_last():
  clip = np.arange(17)[:, None, None, None].repeat(3, -1).astype(np.uint8) * np.ones((1, 2, 2, 3), np.uint8)
  chosen = contact_sheet.select_frames(clip, 5)
  assert list(chosen[:, 0, 0, 0]) == [0, 4, 8, 12, 16]


def test_comparison_sheet_has_original_above_reconstruction(tmp_path):
  originals = _moving_square_clips(n=2, t=4)
  recons = originals.copy()
  recons[recons == 255] = 200  # reconstructions are dimmer
  path = contact_sheet.save_comparison_sheet(tmp_path / "c.png", originals, recons, ["x", "y"])
  sheet = np.asarray(Image.open(path).convert("RGB"))
  orig_rows = np.argwhere(np.all(sheet == PALETTE[1], axis=-1))[:, 0]
  recon_rows = np.argwhere(np.all(sheet == (200, 0, 0), axis=-1))[:, 0]
  assert orig_rows.max() < recon_rows.min()


def test_contact_sheet_errors():
  clips = _moving_square_clips(n=2)
  with pytest.raises(ValueError, match="2 clips"):
    contact_sheet.make_grid_image(clips, ["only one"])
  with pytest.raises(ValueError, match="list of strings"):
    contact_sheet.make_grid_image(clips, "a caption")
  with pytest.raises(ValueError, match="share H and W"):
    contact_sheet.make_grid_image([clips[0], clips[1][:, :8]])
  with pytest.raises(ValueError, match="originals"):
    contact_sheet.make_comparison_image(clips, clips[:1])


# ----------------------------------------------------------------------------- conversion


def test_uint8_float_round_trip():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  f = convert.to_float(x)
  assert f.min() == -1.0 and f.max() == 1.0 and f.dtype == np.float32
  np.testing.assert_array_equal(convert.to_uint8(f), x)
  np.testing.assert_array_equal(convert.to_uint8(np.array([-3.0, 0.0, 3.0])), [0, 128, 255])
  np.testing.assert_array_equal(convert.to_uint8(np.array([0.5]), value_range=(0, 1)), [128])


def test_to_uint8_on_jax_arrays_matches_numpy_and_works_under_jit():
  import jax
  import jax.numpy as jnp

  x = np.concatenate(
    [np.linspace(-1.2, 1.2, 4001, dtype=np.float32), (np.arange(256, dtype=np.float32) + 0.5) / 127.5 - 1.0]
  )  # exact .5 ties: half to even
  expected = convert.to_uint8(x)
  assert isinstance(expected, np.ndarray) and expected.dtype == np.uint8
  # What the sampler and the VAE evaluation computed before sharing this function: round((x + 1) * 127.5).
  np.testing.assert_array_equal(expected, np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8))
  eager = convert.to_uint8(jnp.asarray(x))
  jitted = jax.jit(convert.to_uint8)(jnp.asarray(x))
  for out in (eager, jitted):
    assert isinstance(out, jax.Array) and out.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(out), expected)
  np.testing.assert_array_equal(
    np.asarray(convert.to_uint8(jnp.asarray(x, jnp.bfloat16))),
    convert.to_uint8(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32)),
  )
  u = jnp.arange(256, dtype=jnp.uint8)
  assert convert.to_uint8(u) is u  # uint8 passes through
