"""Images and videos as prompts through the Pipeline, on the tiny trained workdir (conftest.py `pipe`).

The tiny model is barely trained, so these check the contract, not quality: shapes and dtypes,
the given frames reproduced (exactly, in latent space; through the VAE in pixels), determinism
by seed, batching, the clear errors, and that tools/sample.py writes every mode.
"""

import numpy as np
import pytest

from sora_jax.sampling.conditioning import Condition, build_canvas

PROMPTS = ["a red circle moving left", "a blue square moving up"]
FAST = dict(num_steps=2, expand_prompts=False)


@pytest.fixture(scope="module")
def clips():
  """Two 9-frame 32x32 clips with an object on black (what the tiny model was trained on)."""
  from sora_jax.data import shapes

  rng = np.random.default_rng(0)
  specs = [shapes.sample_clip_spec(rng, color="red", motion="left"), shapes.sample_clip_spec(rng, motion="up")]
  return np.stack([shapes.render_clip(s, 9, 32, 32) for s in specs])


def _close(a, b):
  """uint8 frames equal up to one level: jitted encode/decode vs the eager path, or another batch size's kernels."""
  np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)


def test_general_form_holds_the_given_latent_frames_exactly(pipe, clips):
  canvas = np.zeros_like(clips)
  canvas[:, :5] = clips[:, :5]
  given = pipe._encode_canvas(canvas, 2)  # the canvas the pipeline encodes: first 5 frames, black after
  latents = pipe(PROMPTS, conditions=[Condition(clips[:, :5])], output_type="latent", **FAST)
  np.testing.assert_array_equal(latents[:, :2], given[:, :2])  # latent frames 0-1 = pixel frames 0-4
  free = pipe(PROMPTS, output_type="latent", **FAST)
  assert np.abs(latents[:, 2] - free[:, 2]).max() > 0  # the rest is generated (and steered)


@pytest.mark.parametrize("sampler", ["heun", "unipc", "dpmpp_2m"])
def test_every_scan_sampler_keeps_the_image(pipe, clips, sampler):
  canvas = build_canvas([Condition(clips[:, 0])], 2, 9, 32, 32, 4).pixels  # the image, black after
  image_latent = pipe._encode_canvas(canvas, 2)  # the same encode the pipeline runs (the same shapes, the same bits)
  out = pipe.animate(clips[:, 0], PROMPTS, num_frames=9, sampler=sampler, output_type="latent", **FAST)
  np.testing.assert_array_equal(out[:, 0], image_latent[:, 0])


def test_animate_shapes_dtype_frame0_and_determinism(pipe, clips):
  videos = pipe.animate(clips[:, 0], PROMPTS, num_frames=9, seed=3, **FAST)
  assert videos.shape == (2, 9, 32, 32, 3) and videos.dtype == np.uint8
  recon = pipe.decode(pipe.encode(clips[:, :1]))[:, 0]  # frame 0 decodes from latent frame 0 alone (causal)
  _close(videos[:, 0], recon)
  np.testing.assert_array_equal(pipe.animate(clips[:, 0], PROMPTS, num_frames=9, seed=3, **FAST), videos)
  assert not np.array_equal(pipe.animate(clips[:, 0], PROMPTS, num_frames=9, seed=4, **FAST), videos)
  one = pipe.animate(clips[:1, 0], PROMPTS[:1], num_frames=9, seed=3, **FAST)  # batch of 1 = row 0 of the batch
  _close(one[0], videos[0])
  shared = pipe.animate(clips[:1, :1], PROMPTS, num_frames=9, seed=3, **FAST)  # [1, 1, H, W, 3] for every prompt
  _close(shared[:, 0], np.repeat(recon[:1], 2, axis=0))


def test_extend_forwards_and_backwards_keep_the_input_latents(pipe, clips):
  forward = pipe.extend(clips[:, :5], PROMPTS, num_frames=9, output_type="latent", **FAST)
  np.testing.assert_array_equal(forward[:, :2], pipe._encode_canvas(np.pad(clips[:, :5], _pad(4)), 2)[:, :2])
  backward = pipe.extend(clips[:, 5:], PROMPTS, num_frames=9, backward=True, **FAST)
  assert backward.shape == (2, 9, 32, 32, 3) and backward.dtype == np.uint8
  latents = pipe.extend(clips[:, 5:], PROMPTS, num_frames=9, backward=True, output_type="latent", **FAST)
  canvas = build_canvas([Condition(clips[:, 5:], 5)], 2, 9, 32, 32, 4).pixels
  np.testing.assert_array_equal(latents[:, 2], pipe._encode_canvas(canvas, 2)[:, 2])


def _pad(after: int):
  return ((0, 0), (0, after), (0, 0), (0, 0), (0, 0))


def test_connect_loop_and_edit(pipe, clips):
  connected = pipe.connect(clips[:, 0], clips[:, -1], PROMPTS, num_frames=9, output_type="latent", **FAST)
  end = np.repeat(clips[:, -1:], 4, axis=1)  # a single end frame fills the last latent frame
  canvas = build_canvas([Condition(clips[:, :1]), Condition(end, 5)], 2, 9, 32, 32, 4).pixels
  given = pipe._encode_canvas(canvas, 2)
  np.testing.assert_array_equal(connected[:, [0, 2]], given[:, [0, 2]])
  looped = pipe.loop(PROMPTS, num_frames=9, seed=1, **FAST)
  assert looped.shape == (2, 9, 32, 32, 3)
  np.testing.assert_array_equal(looped, pipe.loop(PROMPTS, num_frames=9, seed=1, **FAST))
  edited = pipe.edit(clips, PROMPTS, strength=0.5, seed=2, **FAST)
  assert edited.shape == clips.shape and edited.dtype == np.uint8
  np.testing.assert_array_equal(edited, pipe.edit(clips, PROMPTS, strength=0.5, seed=2, **FAST))
  full = pipe.edit(clips, PROMPTS, strength=1.0, seed=2, **FAST)  # strength 1 ignores the source: text-to-video
  _close(full, pipe(PROMPTS, num_frames=9, seed=2, **FAST))


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda p, c: p(PROMPTS, conditions=[Condition(c[:, :2], 0)], **FAST), r"valid frame_index for 2 frames in 9"),
    (lambda p, c: p(PROMPTS, conditions=[Condition(c[:, :1], 8)], **FAST), r"repeat it 4 times"),
    (lambda p, c: p.animate(c[:, 0].astype(np.float32), PROMPTS, **FAST), "uint8"),
    (lambda p, c: p.animate(c[:, 0, :24], PROMPTS, **FAST), r"x24x32 .*cannot be produced"),
    (lambda p, c: p.animate(c[:, :2], PROMPTS, **FAST), "frames"),
    (lambda p, c: p.animate(np.concatenate([c[:, 0]] * 3), PROMPTS, **FAST), "batch of 6"),
    (lambda p, c: p.extend(c[:, :4], PROMPTS, num_frames=9, **FAST), r"extend forwards takes 1\+4k input frames"),
    (lambda p, c: p.extend(c[:, :5], PROMPTS, num_frames=9, backward=True, **FAST), r"multiple of 4 input frames"),
    (lambda p, c: p(PROMPTS, conditions=[Condition(c[:, :4], 0)], **FAST), r"for 4 frames in 9: \[1, 5\]"),
    (lambda p, c: p.extend(c[:, :5], PROMPTS, num_frames=5, **FAST), "must exceed"),
    (lambda p, c: p.edit(c, PROMPTS, strength=0.0, **FAST), r"strength=0.0 must be in \(0, 1\]"),
    (lambda p, c: p(PROMPTS, conditions=[Condition(c[:, :1], 0, strength=1.5)], **FAST), r"strength"),
  ],
)
def test_clear_errors(pipe, clips, call, match):
  with pytest.raises(ValueError, match=match):
    call(pipe, clips)


def test_sample_tool_writes_every_mode_with_given_frames_marked(workdir, tmp_path, run_tool, clips):
  from PIL import Image

  from sora_jax.media import video_io

  image, video = tmp_path / "first.png", tmp_path / "clip.gif"
  Image.fromarray(clips[0, 0]).save(image)
  video_io.write_gif(video, clips[0, :5])
  for mode, files in (("animate", [f"--image={image}"]), ("extend", [f"--video={video}"])):
    out = tmp_path / mode
    run_tool(
      "tools/sample.py",
      f"--workdir={workdir}",
      f"--mode={mode}",
      *files,
      "--prompt=a red circle moving left",
      "--num_steps=1",
      "--num_frames=9",
      f"--out={out}",
    )
    assert len(list(out.glob("*.mp4"))) == 1 and (out / "contact_sheet.png").exists()
