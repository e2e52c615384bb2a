"""The Python API: a trained text-to-video system behind three calls.

    from sora_jax import Pipeline
    pipe = Pipeline.from_pretrained("runs/demo")
    videos = pipe(["a red circle moving left"], num_steps=30, guidance_scale=4.0, seed=0)  # uint8 [B,T,H,W,3]
    videos = pipe(prompts, latents=noise, output_type="float")   # given initial noise; floats in [0, 1]
    latents = pipe.encode(videos)    # uint8 [B,T,H,W,3] -> normalised latents [B,T',H',W',C]
    frames = pipe.decode(latents)    # -> uint8 [B,T,H,W,3]

`from_pretrained` accepts a demo-style workdir (holding `dit/` and `vae/`), a DiT workdir (its
config names the VAE workdir) or a diffusers Wan 2.1 folder: `sora_jax.restore.restore_text_to_video`
reads the text encoder, the DiT (EMA params by default, no optimizer state) and the VAE
from their Orbax checkpoints and saved configs, onto one device or onto a mesh given by
the caller. The whole text -> frames path
is one jitted function per (shape, sampler, steps), with prompt batches padded to a
power of two, so calling with a new batch size rarely recompiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import restore
from sora_jax.models import vae as vae_lib
from sora_jax.models.text import fields
from sora_jax.monitoring.progress import progress_bar
from sora_jax.sampling import generate as gen
from sora_jax.sampling import prompt_expander as expanders

OUTPUT_TYPES = ("uint8", "float", "latent")


def _padded_noise(latents, batch: int, padded: int, latent_shape) -> jax.Array:
  """The caller's initial noise [B, *latent_shape], padded with zeros to the compiled batch size."""
  latents = np.asarray(latents, np.float32)
  if latents.shape != (batch, *latent_shape):
    raise ValueError(
      f"latents must be the initial noise [B={batch}, T', H', W', C] = {(batch, *latent_shape)} for this clip size "
      f"(channels last, in the normalised latent space); got shape {latents.shape}"
    )
  return jnp.asarray(np.concatenate([latents, np.zeros((padded - batch, *latent_shape), np.float32)]))


class Pipeline:
  """A trained text-to-video system: text encoder + DiT + VAE, and how to sample it."""

  def __init__(
    self,
    *,
    components: gen.Components,
    params: dict,
    text_params,
    config,
    vae_config,
    mesh: jax.sharding.Mesh | None = None,
    prompt_expander: Callable[[str], str] | None = None,
  ):
    """Prefer `from_pretrained`. params: {"dit", "vae", "text" (trainable encoder)}; text_params: a
    frozen encoder's params (or None); config / vae_config: the DiT and VAE runs' full configs."""
    self.components = components
    self.params = params
    self.text_params = text_params
    self.config = config
    self.vae_config = vae_config
    self.mesh = mesh
    self.prompt_expander = prompt_expander or expanders.IdentityExpander()
    self._compiled: dict = {}
    self._ticker = gen.StepTicker()

  # ------------------------------------------------------------------ loading
  @classmethod
  def from_pretrained(
    cls,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh | None = None,
    use_ema: bool = True,
    prompt_expander: str | Callable[[str], str] = "auto",
    step: int | None = None,
    dtype: str | None = None,
  ) -> Pipeline:
    """Restores a trained system from `workdir` (see module docstring).

    Args:
      workdir: demo workdir (dit/ + vae/), DiT workdir, or diffusers Wan 2.1 folder.
      mesh: restore the parameters sharded onto this mesh (default: one device).
      use_ema: sample with the EMA parameters (recommended) instead of the raw ones.
      prompt_expander: "auto" (the shapes expander for the shapes dataset, none otherwise),
        "shapes", "none", or any callable str -> str (e.g. an LLM rewrite).
      step: the DiT checkpoint step to restore (default: the latest).
      dtype: for a diffusers Wan 2.1 folder, "float32" (default) or "bfloat16" weights and compute.
    """
    restored = restore.restore_text_to_video(workdir, mesh=mesh, step=step, use_ema=use_ema, dtype=dtype)
    config = restored.config
    components = gen.Components(
      denoiser=restored.denoiser,
      vae=restored.vae.module,
      process=restored.process,
      latent_stats=restored.vae.latent_stats,
    )
    if prompt_expander == "auto":
      prompt_expander = "shapes" if config.data.dataset == "shapes" else "none"
    if isinstance(prompt_expander, str):
      prompt_expander = expanders.get_expander(prompt_expander)
    return cls(
      components=components,
      params=dict(restored.params, vae=restored.vae.params),
      text_params=restored.text_params,
      config=config,
      vae_config=restored.vae.config,
      mesh=restored.mesh,
      prompt_expander=prompt_expander,
    )

  # ------------------------------------------------------------------ shapes
  @property
  def temporal_factor(self) -> int:
    return self.vae_config.vae.temporal_factor

  @property
  def pixel_multiple(self) -> int:
    """Heights/widths must be multiples of this (VAE spatial factor x DiT patch)."""
    return self.vae_config.vae.spatial_factor * self.components.denoiser.dit.patch_size[1]

  def _latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    tf, pt = self.temporal_factor, self.components.denoiser.dit.patch_size[0]
    if num_frames < 1 or (num_frames - 1) % tf or ((num_frames - 1) // tf + 1) % pt:
      valid = [n for n in range(1, 8 * tf + 2) if (n - 1) % tf == 0 and ((n - 1) // tf + 1) % pt == 0][:6]
      raise ValueError(
        f"num_frames={num_frames} cannot be produced: the causal VAE makes 1+{tf}k frames"
        f"{f' with 1+k divisible by the patch {pt}' if pt > 1 else ''}; valid: {valid}, ..."
      )
    m = self.pixel_multiple
    if height < m or width < m or height % m or width % m:
      raise ValueError(
        f"height={height}, width={width} cannot be produced: both must be positive multiples "
        f"of {m} (VAE spatial factor {self.vae_config.vae.spatial_factor} x DiT patch "
        f"{self.components.denoiser.dit.patch_size[1]}), e.g. {m * max(1, height // m)}"
      )
    return vae_lib.latent_shape(self.vae_config.vae, num_frames, height, width)

  # ------------------------------------------------------------------ sampling
  def __call__(
    self,
    prompts: Sequence[str],
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    negative_prompt: str | None = None,
    sampler: str | None = None,
    expand_prompts: bool = True,
    progress: bool = False,
    latents: np.ndarray | None = None,
    output_type: str = "uint8",
  ) -> np.ndarray:
    """Generates one video per prompt -> np.uint8 [B, T, H, W, 3] (see `output_type`).

    Defaults come from the trained config (data.num_frames/height/width, sample.*).
    Example i uses noise from seed + i, so a prompt's video does not depend on the
    other prompts in the batch; `latents` [B, T', H', W', C] (the initial noise in the DiT's
    normalised latent space, like diffusers' `latents=` but channels last) replaces it.
    Prompts are rewritten by the prompt expander first (`expand_prompts=False` to skip).
    `progress=True` shows a bar over denoising steps. `output_type`: "uint8" (frames),
    "float" (frames as float32 in [0, 1], diffusers' "np") or "latent" (the sampled
    normalised latents [B, T', H', W', C], what `decode` takes).
    """
    if isinstance(prompts, str):
      prompts = [prompts]
    if not prompts:
      raise ValueError("prompts is empty: pass a list of at least one string, e.g. ['a red circle moving left']")
    cfg = self.config
    num_frames = num_frames or cfg.data.num_frames
    height, width = height or cfg.data.height, width or cfg.data.width
    num_steps = num_steps or cfg.sample.num_steps
    guidance_scale = cfg.sample.guidance_scale if guidance_scale is None else guidance_scale
    sampler = sampler or cfg.sample.sampler
    if guidance_scale < 0:
      raise ValueError(f"guidance_scale={guidance_scale} must be >= 0 (1 = no guidance; 3-7 is typical)")
    if num_steps < 1:
      raise ValueError(f"num_steps={num_steps} must be >= 1")
    if output_type not in OUTPUT_TYPES:
      raise ValueError(f"output_type={output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
    latent_shape = self._latent_shape(num_frames, height, width)
    if expand_prompts:
      prompts = [self.prompt_expander(p) for p in prompts]
    negative = cfg.sample.negative_prompt if negative_prompt is None else negative_prompt

    batch = len(prompts)
    padded = gen.bucket_size(batch)
    text_encoder = self.components.denoiser.text_encoder
    prompt_fields = fields.text_fields(text_encoder, self.text_params, list(prompts) + [""] * (padded - batch))
    null = fields.text_fields(text_encoder, self.text_params, [negative])
    seeds = jnp.arange(padded, dtype=jnp.int32) + jnp.int32(seed)
    noise = None if latents is None else _padded_noise(latents, batch, padded, latent_shape)
    key = (sampler, num_steps, latent_shape, output_type)
    if key not in self._compiled:
      self._compiled[key] = gen.make_generate_fn(
        self.components,
        sampler=sampler,
        num_steps=num_steps,
        latent_shape=latent_shape,
        ticker=self._ticker,
        return_latents=output_type == "latent",
        frames="float" if output_type == "float" else "uint8",
      )
    evals = gen.model_evals(sampler, num_steps)
    self._ticker.bar = progress_bar(total=evals, desc=f"sampling {batch} x {sampler}") if progress else None
    try:
      with jax.set_mesh(self.mesh):
        out = jax.device_get(
          self._compiled[key](self.params, prompt_fields, null, seeds, jnp.float32(guidance_scale), noise)
        )
    finally:
      if self._ticker.bar is not None:
        self._ticker.bar.close()
      self._ticker.bar = None
    return np.asarray(out[1] if output_type == "latent" else out)[:batch]

  # ------------------------------------------------------------------ VAE
  def encode(self, videos: np.ndarray) -> np.ndarray:
    """uint8 [B, T, H, W, 3] -> normalised latents float32 [B, T', H', W', C] (what the DiT sees)."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise ValueError(f"videos must be uint8 [B, T, H, W, 3]; got shape {videos.shape}")
    x = jnp.asarray(videos, jnp.float32) / 127.5 - 1.0
    mean, _ = vae_lib.encode_video(self.components.vae, self.params["vae"], x)
    stats = self.components.latent_stats
    return np.asarray((mean - stats["mean"]) / stats["std"])

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Normalised latents [B, T', H', W', C] -> uint8 [B, T, H, W, 3]."""
    stats = self.components.latent_stats
    z = jnp.asarray(latents, jnp.float32) * stats["std"] + stats["mean"]
    return np.asarray(gen.to_uint8(vae_lib.decode_latents(self.components.vae, self.params["vae"], z)))
