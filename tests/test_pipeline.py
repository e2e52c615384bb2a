"""Pipeline API and the sample / evaluate tools on a tiny workdir trained by the real tools.

The workdir is made once per session by tools/train_vae.py and tools/train_dit.py (a few
steps each, 9-frame 32x32 clips), laid out like `make demo`'s runs/demo (vae/ + dit/).
"""

import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny trained workdir (`workdir`) and its Pipeline (`pipe`) are session fixtures in conftest.py.


def test_training_wrote_a_restorable_workdir(workdir):
  for sub in ("vae", "dit"):
    assert (workdir / sub / "config.json").exists()
    assert any((workdir / sub / "checkpoints").iterdir())
  assert list((workdir / "dit" / "samples").glob("*.gif")), "end-of-training samples"
  assert (workdir / "dit" / "latent_cache" / "train.array_record").exists()


def test_generates_uint8_videos_of_the_trained_shape(pipe):
  videos = pipe(
    ["a red circle moving left", "a blue square moving up", "a green triangle staying still"], num_steps=2, seed=0
  )
  assert videos.dtype == np.uint8 and videos.shape == (3, 9, 32, 32, 3)


def test_deterministic_by_seed_and_seeds_differ(pipe):
  a = pipe(["a red circle moving left"], num_steps=2, seed=5)
  b = pipe(["a red circle moving left"], num_steps=2, seed=5)
  c = pipe(["a red circle moving left"], num_steps=2, seed=6)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).max() > 0


def test_cache_and_cfg_window_do_less_work_and_are_counted(pipe):
  prompt = ["a red circle moving left"]
  plain = pipe(prompt, num_steps=6, seed=1, output_type="latent")
  assert pipe.last_stats == {"forwards_per_video": 12.0, "model_calls": 6, "cached_calls": 0}
  # threshold 0 / the full window: the plain sampler, exactly.
  same = pipe(prompt, num_steps=6, seed=1, output_type="latent", cache={"threshold": 0.0}, cfg_window=(0.0, 1.0))
  # Not bit-exact: the program with the cache compiled in (threshold 0: never taken) fuses differently; rounding only.
  np.testing.assert_allclose(same, plain, rtol=1e-5, atol=1e-5)
  # A threshold no change reaches: reuse whenever the guards allow (calls 2-4), then the window halves the rest.
  fewer = pipe(prompt, num_steps=6, seed=1, output_type="latent", cache={"threshold": 1e9, "max_cached": 3})
  depth = pipe.components.denoiser.dit.depth
  assert pipe.last_stats["cached_calls"] == 3
  assert pipe.last_stats["forwards_per_video"] == pytest.approx(2 * (3 + 3 / depth))
  # (the tiny model's adaLN-Zero blocks add almost nothing yet, so reusing their residual barely changes the video)
  assert fewer.shape == plain.shape and np.isfinite(fewer).all()
  pipe(prompt, num_steps=6, seed=1, cfg_window=(0.5, 1.0))
  assert 6 < pipe.last_stats["forwards_per_video"] < 12
  with pytest.raises(ValueError, match="cfg_window"):
    pipe(prompt, num_steps=2, cfg_window=(0.9, 0.1))


def test_a_prompt_does_not_depend_on_its_batch(pipe):
  alone = pipe(["a white square moving down"], num_steps=2, seed=3)
  batched = pipe(["a white square moving down", "a cyan circle moving up", "a green triangle"], num_steps=2, seed=3)
  np.testing.assert_allclose(alone[0].astype(int), batched[0].astype(int), atol=1)  # same noise, same text


def test_guidance_and_other_sizes(pipe):
  videos = pipe(["a red circle"], num_frames=5, height=64, width=32, num_steps=2, guidance_scale=1.0)
  assert videos.shape == (1, 5, 64, 32, 3)


def test_restores_onto_a_callers_mesh_with_the_same_result(workdir, pipe):
  import jax

  from sora_jax import Pipeline
  from sora_jax.sharding import mesh as mesh_lib

  mesh = mesh_lib.make_mesh((2, 1, 1, 1), devices=jax.devices()[:2])
  sharded = Pipeline.from_pretrained(str(workdir), mesh=mesh)
  leaf = jax.tree.leaves(sharded.params["dit"])[0]
  assert leaf.sharding.mesh.devices.size == 2
  prompts = ["a red circle moving left", "a blue square moving up"]
  np.testing.assert_allclose(
    sharded(prompts, num_steps=2, seed=1).astype(int), pipe(prompts, num_steps=2, seed=1).astype(int), atol=2
  )


def test_restores_a_chosen_checkpoint_step(workdir, pipe):
  from sora_jax import Pipeline
  from sora_jax.training.checkpointing import CheckpointNotFoundError

  chosen = Pipeline.from_pretrained(str(workdir), step=3)  # the tiny run's only (and last) step
  prompts = ["a red circle moving left"]
  np.testing.assert_array_equal(chosen(prompts, num_steps=2, seed=1), pipe(prompts, num_steps=2, seed=1))
  with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint for step 2 .*available steps: \[3\]"):
    Pipeline.from_pretrained(str(workdir), step=2)


def test_encode_decode_shapes(pipe):
  videos = pipe(["a yellow triangle moving right"], num_steps=2)
  latents = pipe.encode(videos)
  assert latents.ndim == 5 and latents.shape[0] == 1 and latents.shape[1] == 3  # 1 + (9-1)/4
  frames = pipe.decode(latents)
  assert frames.shape == videos.shape and frames.dtype == np.uint8


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (
      dict(num_frames=8),
      r"8x32x32 .* cannot be produced: frames must be 1\+4k.*Nearest valid sizes: 5x32x32, 9x32x32$",
    ),
    (dict(height=30), r"multiple of 16.*Nearest valid sizes: 9x16x32, 9x32x32$"),
    (dict(guidance_scale=-1.0), r"guidance_scale=-1.0 must be >= 0"),
  ],
)
def test_clear_errors_for_bad_requests(pipe, kwargs, match):
  with pytest.raises(ValueError, match=match):
    pipe(["a red circle moving left"], num_steps=2, **kwargs)


def test_ddpm_sampler_on_a_flow_model_is_a_clear_error(pipe):
  assert pipe.config.diffusion.kind == "flow"
  with pytest.raises(ValueError, match="needs diffusion.kind='ddpm'"):
    pipe(["a red circle moving left"], num_steps=2, sampler="ddpm")


def test_every_sampler_is_counted_and_selectable():
  from absl import flags

  from sora_jax.diffusion import samplers
  from sora_jax.diffusion.sampler_names import SAMPLERS
  from sora_jax.sampling import flags as sampling_flags
  from sora_jax.sampling import generate

  assert set(samplers.STEPS) == set(SAMPLERS)  # one step function per named sampler
  assert sampling_flags.SAMPLERS is SAMPLERS
  assert generate.model_evals("heun", 10) == 20 and generate.model_evals("euler", 10) == 10
  with pytest.raises(ValueError, match="sampler='rk4' is not one of"):
    generate.model_evals("rk4", 10)
  fv = flags.FlagValues()
  holders = sampling_flags.define_sampling_flags(fv)
  fv(["tool", "--sampler=ddpm", "--num_steps=7"])
  assert holders.overrides() == {"num_steps": 7, "guidance_scale": None, "sampler": "ddpm"}
  config = type("C", (), {"sample": type("S", (), {"num_steps": 30, "guidance_scale": 4.0, "sampler": "euler"})})
  assert holders.resolved(config) == {"num_steps": 7, "guidance_scale": 4.0, "sampler": "ddpm"}
  with pytest.raises(flags.IllegalFlagValueError):
    fv(["tool", "--sampler=rk4"])


def test_empty_prompt_list_is_an_error_but_empty_prompt_works(pipe):
  with pytest.raises(ValueError, match="prompts is empty"):
    pipe([])
  with pytest.raises(ValueError, match="a prompt is empty"):  # reported, not replaced by the expander's defaults
    pipe([""], num_steps=2)
  assert pipe([""], num_steps=2, expand_prompts=False).shape[0] == 1  # unconditional, when asked for


def test_workdir_without_checkpoints_is_a_clear_error(tmp_path):
  from sora_jax import Pipeline

  with pytest.raises(FileNotFoundError, match="holds no DiT run"):
    Pipeline.from_pretrained(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Pipeline.from_pretrained(str(tmp_path / "nope"))


def test_sample_tool_writes_playable_files(workdir, tmp_path, run_tool):
  from sora_jax.media import video_io

  out = tmp_path / "samples"
  run_tool(
    "tools/sample.py",
    f"--workdir={workdir}",
    "--prompt=blue box going up",
    "--prompt=a red ball",
    f"--out={out}",
    "--num_steps=2",
    "--scale=2",
  )
  mp4s = sorted(out.glob("*.mp4"))
  assert len(mp4s) == 2 and len(list(out.glob("*.gif"))) == 2 and (out / "contact_sheet.png").exists()
  frames, fps = video_io.read_video(mp4s[0])
  assert frames.shape == (9, 64, 64, 3) and fps == pytest.approx(8.0)
  prompts = json.loads((out / "prompts.json").read_text())
  assert prompts[0]["expanded"] == "a blue square moving up"  # the shapes prompt expander ran


def test_evaluate_tool_reports_adherence_and_vae_metrics(workdir, tmp_path, run_tool):
  out = tmp_path / "eval"
  run_tool(
    "tools/evaluate.py",
    f"--workdir={workdir}",
    f"--out={out}",
    "--num_steps=1",
    "--vae_clips=2",
    "--batch_size=128",
    "--mode_clips=2",
    "--step=3",  # the tiny run's last (and only) checkpoint, named: the flag reaches the restore
  )
  result = json.loads((out / "eval.json").read_text())
  assert result["num_videos"] == 105 and result["dit_step"] == 3
  assert result["sampling"] == {"num_steps": 1, "guidance_scale": 4.0, "sampler": "euler"}  # flag, then config's
  for key in ("accuracy_color", "accuracy_shape", "accuracy_motion", "accuracy_all"):
    assert 0.0 <= result[key] <= 1.0
  assert np.isfinite(result["vae_psnr"]) and "eval/loss" in result["dit_eval"]
  assert (out / "summary.png").exists() and (out / "samples.png").exists()
  modes = result["modes"]  # one section per image/video prompting mode, with the criteria's means
  assert set(modes) == {"animate", "animate_against", "extend", "extend_backward", "connect", "loop", "edit"}
  assert all(section["num_clips"] == 2 and 0.0 <= section["pass_rate"] <= 1.0 for section in modes.values())
  assert modes["animate"]["psnr_frame0"] > 0 and (out / "modes.png").exists()
