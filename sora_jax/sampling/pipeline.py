"""The Python API: a trained text-to-video system behind three calls.

    from sora_jax import Pipeline
    pipe = Pipeline.from_pretrained("runs/demo")
    videos = pipe(["a red circle moving left"], num_steps=30, guidance_scale=4.0, seed=0)  # uint8 [B,T,H,W,3]
    videos = pipe(prompts, latents=noise, output_type="float")   # given initial noise; floats in [0, 1]
    latents = pipe.encode(videos)    # uint8 [B,T,H,W,3] -> normalised latents [B,T',H',W',C]
    frames = pipe.decode(latents)    # -> uint8 [B,T,H,W,3]

Images and videos as prompts (one model; `sampling/conditioning.py`, `diffusion/conditioning.py`):

    v = pipe.animate(images, prompts, num_frames=17)                   # frame 0 is the image
    v = pipe.extend(videos, prompts, num_frames=33)                    # the first T0 frames are the input
    v = pipe.extend(videos, prompts, num_frames=33, backward=True)     # the last T0 frames are the input
    v = pipe.connect(starts, ends, prompts, num_frames=17)             # begins with starts, ends with ends
    v = pipe.loop(prompts, num_frames=17)                              # last frame leads back into the first
    v = pipe.edit(videos, prompts, strength=0.7)                       # SDEdit under the new prompt
    v = pipe(prompts, conditions=[Condition(frames, frame_index=0, strength=1.0)])   # the general form

`from_pretrained` accepts a demo-style workdir (holding `dit/` and `vae/`), a DiT workdir (its
config names the VAE workdir) or a diffusers Wan 2.1 folder: `sora_jax.restore.restore_text_to_video`
reads the text encoder, the DiT (EMA params by default, no optimizer state) and the VAE
from their Orbax checkpoints and saved configs, onto one device or onto a mesh given by
the caller. The whole text -> frames path
is one jitted function per (shape, sampler, steps), with prompt batches padded to a
power of two, so calling with a new batch size rarely recompiles.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import restore
from sora_jax.diffusion import block_cache
from sora_jax.errors import InputError
from sora_jax.models import lora as lora_lib
from sora_jax.models import lora_format
from sora_jax.models import vae as vae_lib
from sora_jax.models.text import fields
from sora_jax.monitoring.progress import progress_bar
from sora_jax.sampling import conditioning as conditioning_lib
from sora_jax.sampling import generate as gen
from sora_jax.sampling import prompt_expander as expanders
from sora_jax.sampling import sizes
from sora_jax.sampling.conditioning import Condition

OUTPUT_TYPES = ("uint8", "float", "latent")


def _padded_noise(latents, batch: int, padded: int, latent_shape) -> jax.Array:
  """The caller's initial noise [B, *latent_shape], padded with zeros to the compiled batch size."""
  latents = np.asarray(latents, np.float32)
  if latents.shape != (batch, *latent_shape):
    raise InputError(
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
    self._base_dit_params = params["dit"]  # LoRAs are applied on top of these (load_lora / fuse_lora)
    self._base_model = lora_lib.unwrap(components.denoiser.dit)
    self._lora_model = lora_lib.LoraModel(self._base_model, lora_lib.LoraSpec(rank=1, alpha=1.0), scale=1.0)
    self._loras: dict[str, list] = {}  # name -> [adapters (alpha / rank folded in), scale]
    self._lora_fused = False
    self.last_stats: dict = {}  # of the last __call__: forwards per video, model calls, cached calls

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
    pipe = cls(
      components=components,
      params=dict(restored.params, vae=restored.vae.params),
      text_params=restored.text_params,
      config=config,
      vae_config=restored.vae.config,
      mesh=restored.mesh,
      prompt_expander=prompt_expander,
    )
    if restored.lora is not None:  # a LoRA run: its base with the trained adapters applied (unfused)
      adapters, scale = restored.lora
      pipe._add_lora(os.path.basename(os.path.normpath(restored.workdir)), adapters["dit"], scale, 1.0)
    return pipe

  # ------------------------------------------------------------------ LoRA
  def load_lora(self, path: str, scale: float = 1.0, name: str | None = None) -> str:
    """Loads a PEFT/diffusers-format LoRA (a .safetensors file or a folder holding one, e.g. written by
    `WanPipeline.save_lora_weights`, PEFT, or `tools/train_dit.py --config.lora.rank=...`'s export) on
    top of the current model, with its own `scale` (the adapter's output x scale x alpha / rank).

    Several LoRAs can be loaded; they add up. Returns the LoRA's name (default: the file name).
    Raises ValueError listing the keys that do not fit this model (unknown modules, shapes, ranks).
    """
    adapters, info = lora_format.load_lora(path, self._base_dit_params)
    name = name or os.path.splitext(os.path.basename(os.path.normpath(info["file"])))[0]
    if name in self._loras:
      raise ValueError(f"a LoRA named {name!r} is loaded already ({sorted(self._loras)}); pass another name=")
    return self._add_lora(name, adapters, 1.0, scale)

  def _add_lora(self, name: str, adapters, unit_scale: float, scale: float) -> str:
    self._loras[name] = [adapters, unit_scale, float(scale)]
    self._apply_loras()
    return name

  @property
  def loras(self) -> dict[str, float]:
    """The loaded LoRAs and their scales."""
    return {name: entry[2] for name, entry in self._loras.items()}

  def set_lora_scale(self, scale: float, name: str | None = None) -> None:
    """Sets the scale of the LoRA `name` (default: every loaded LoRA); 0 = the base model."""
    names = list(self._loras) if name is None else [name]
    unknown = [n for n in names if n not in self._loras]
    if unknown or not self._loras:
      raise ValueError(f"no LoRA named {unknown or name!r} is loaded; loaded: {sorted(self._loras) or 'none'}")
    for n in names:
      self._loras[n][2] = float(scale)
    self._apply_loras()

  def unload_lora(self, name: str | None = None) -> None:
    """Removes the LoRA `name` (default: all of them)."""
    if name is not None and name not in self._loras:
      raise ValueError(f"no LoRA named {name!r} is loaded; loaded: {sorted(self._loras) or 'none'}")
    for n in list(self._loras) if name is None else [name]:
      del self._loras[n]
    self._apply_loras()

  def fuse_lora(self) -> None:
    """Merges the loaded LoRAs into the weights (kernel + sum of scale x A @ B): sampling then costs what
    the base model costs. `unfuse_lora` restores the separate adapters (exactly: the base is kept)."""
    if not self._loras:
      raise ValueError("no LoRA is loaded: load_lora(path) first")
    self._lora_fused = True
    self._apply_loras()

  def unfuse_lora(self) -> None:
    self._lora_fused = False
    self._apply_loras()

  def _apply_loras(self) -> None:
    """Rebuilds params["dit"] and the DiT module from the base and the loaded LoRAs."""
    active = [(adapters, unit * scale) for adapters, unit, scale in self._loras.values()]
    base = self._base_dit_params
    if not active:
      model, dit_params = self._base_model, base
    else:
      combined = lora_lib.combine(active)
      if self._lora_fused:
        model, dit_params = self._base_model, lora_lib.fuse(lora_lib.merge_trees(base, combined), 1.0)
      else:
        model, dit_params = self._lora_model, lora_lib.merge_trees(base, combined)
    self.params = dict(self.params, dit=dit_params)
    denoiser = self.components.denoiser
    if denoiser.dit is not model:  # compiled samplers hold the module; new params alone reuse them
      self.components = dataclasses.replace(self.components, denoiser=dataclasses.replace(denoiser, dit=model))
      self._compiled = {}

  # ------------------------------------------------------------------ shapes
  @property
  def temporal_factor(self) -> int:
    return self.vae_config.vae.temporal_factor

  @property
  def pixel_multiple(self) -> int:
    """Heights/widths must be multiples of this (VAE spatial factor x DiT patch)."""
    return self.vae_config.vae.spatial_factor * self.components.denoiser.dit.patch_size[1]

  def _latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(T', H', W', C) of a clip size; a size the VAE and patching cannot produce is a ValueError naming the
    nearest valid sizes (sampling/sizes.py), raised before any work."""
    vae_cfg = self.vae_config.vae
    sizes.check_size(
      num_frames,
      height,
      width,
      temporal_factor=vae_cfg.temporal_factor,
      spatial_factor=vae_cfg.spatial_factor,
      patch_size=self.components.denoiser.dit.patch_size,
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
    conditions: Sequence[Condition] = (),
    cache: dict | block_cache.CacheConfig | None = None,
    cfg_window: Sequence[float] | None = None,
  ) -> np.ndarray:
    """Generates one video per prompt -> np.uint8 [B, T, H, W, 3] (see `output_type`).

    `conditions`: frames the clip must contain (`Condition(frames, frame_index, strength)`), the
    general form of animate / extend / connect / loop: painted into one canvas, encoded once by
    the VAE and held at every sampler step (in both classifier-free guidance branches:
    guidance is on the text only; there is no separate image-guidance scale, since clean given
    frames are kept exactly; a Condition's strength < 1 is how to loosen them).

    Defaults come from the trained config (data.num_frames/height/width, sample.*).
    Example i uses noise from seed + i, so a prompt's video does not depend on the
    other prompts in the batch; `latents` [B, T', H', W', C] (the initial noise in the DiT's
    normalised latent space, like diffusers' `latents=` but channels last) replaces it.
    Prompts are rewritten by the prompt expander first (`expand_prompts=False` to skip).
    `progress=True` shows a bar over denoising steps. `output_type`: "uint8" (frames),
    "float" (frames as float32 in [0, 1], diffusers' "np") or "latent" (the sampled
    normalised latents [B, T', H', W', C], what `decode` takes).
    `cache` (default: config sample.cache): the block cache, {"threshold": 0.1, "warmup_steps": 2,
    "max_cached": 3} or a `block_cache.CacheConfig` (threshold 0 = off); `cfg_window` (default: config
    sample.cfg_window): (lo, hi), guidance only while the noise level t is in [lo, hi], () = always.
    After the call, `self.last_stats` holds the work done: "forwards_per_video" (full-network
    forwards, cond + uncond), "model_calls" and "cached_calls".
    """
    return self._generate(
      prompts,
      num_frames=num_frames,
      height=height,
      width=width,
      num_steps=num_steps,
      guidance_scale=guidance_scale,
      seed=seed,
      negative_prompt=negative_prompt,
      sampler=sampler,
      expand_prompts=expand_prompts,
      progress=progress,
      latents=latents,
      output_type=output_type,
      conditions=conditions,
      cache=cache,
      cfg_window=cfg_window,
    )

  def _generate(
    self,
    prompts,
    *,
    num_frames=None,
    height=None,
    width=None,
    num_steps=None,
    guidance_scale=None,
    seed=0,
    negative_prompt=None,
    sampler=None,
    expand_prompts=True,
    progress=False,
    latents=None,
    output_type="uint8",
    conditions=(),
    source=None,
    edit_strength=None,
    cache=None,
    cfg_window=None,
  ) -> np.ndarray:
    """`__call__` with given frames (`conditions`) or an SDEdit `source` clip re-noised to `edit_strength`."""
    if isinstance(prompts, str):
      prompts = [prompts]
    if not prompts:
      raise InputError("prompts is empty: pass a list of at least one string, e.g. ['a red circle moving left']")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
      raise InputError(f"prompts must be strings; got {bad[0]!r} ({type(bad[0]).__name__})")
    cfg = self.config
    num_frames = _positive_int("num_frames", num_frames, cfg.data.num_frames)
    height = _positive_int("height", height, cfg.data.height)
    width = _positive_int("width", width, cfg.data.width)
    num_steps = _positive_int("num_steps", num_steps, cfg.sample.num_steps)
    guidance_scale = cfg.sample.guidance_scale if guidance_scale is None else guidance_scale
    sampler = sampler or cfg.sample.sampler
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.number)):
      raise InputError(f"guidance_scale={guidance_scale!r} must be a number >= 0 (1 = no guidance; 3-7 is typical)")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
      raise InputError(f"guidance_scale={guidance_scale} must be >= 0 and finite (1 = no guidance; 3-7 is typical)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise InputError(f"seed={seed!r} must be an integer")
    if output_type not in OUTPUT_TYPES:
      raise InputError(f"output_type={output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
    cache_cfg = cfg.sample.get("cache") if cache is None else cache
    if not isinstance(cache_cfg, block_cache.CacheConfig):
      cache_cfg = block_cache.CacheConfig.from_config(cache_cfg)
    window = block_cache.check_cfg_window(cfg.sample.get("cfg_window", ()) if cfg_window is None else cfg_window)
    if expand_prompts:
      self.check_prompts(prompts)
    latent_shape = self._latent_shape(num_frames, height, width)
    conditions = list(conditions or ())
    canvas = None
    if conditions:
      self._check_conditioning_supported()
      canvas = conditioning_lib.build_canvas(conditions, len(prompts), num_frames, height, width, self.temporal_factor)
      if self.components.process.kind != "flow" and np.any((canvas.strength > 0) & (canvas.strength < 1)):
        raise InputError("Condition strength < 1 needs a flow-matching model (diffusion.kind='flow'); use 1.0")
    first_step = 0
    if source is not None:
      first_step = num_steps - max(1, int(num_steps * edit_strength))  # at least one step runs
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
    extra = {}
    if canvas is not None:
      pad = padded - batch
      given = self._encode_canvas(canvas.pixels, batch)
      extra["given"] = jnp.asarray(np.concatenate([given, np.zeros((pad, *latent_shape), np.float32)]))
      strength = np.concatenate([canvas.strength, np.zeros((pad, latent_shape[0]), np.float32)])
      extra["strength"] = jnp.asarray(strength)
    if source is not None:
      src = self._encode_canvas(np.broadcast_to(source, (batch, *source.shape[1:])), batch)
      extra["source"] = jnp.asarray(np.concatenate([src, np.zeros((padded - batch, *latent_shape), np.float32)]))
    mode = "frames" if canvas is not None else ("edit" if source is not None else "text")
    key = (sampler, num_steps, latent_shape, output_type, mode, first_step, cache_cfg, window)
    if key not in self._compiled:
      self._compiled[key] = gen.make_generate_fn(
        self.components,
        sampler=sampler,
        num_steps=num_steps,
        latent_shape=latent_shape,
        ticker=self._ticker,
        return_latents=output_type == "latent",
        frames="float" if output_type == "float" else "uint8",
        first_step=first_step,
        cache=cache_cfg,
        cfg_window=window,
        return_stats=True,
      )
    evals = gen.model_evals(sampler, num_steps - first_step)
    self._ticker.bar = progress_bar(total=evals, desc=f"sampling {batch} x {sampler}") if progress else None
    try:
      with jax.set_mesh(self.mesh):
        out = jax.device_get(
          self._compiled[key](self.params, prompt_fields, null, seeds, jnp.float32(guidance_scale), noise, **extra)
        )
    finally:
      if self._ticker.bar is not None:
        self._ticker.bar.close()
      self._ticker.bar = None
    *out, stats = out
    self.last_stats = {
      "forwards_per_video": float(np.mean(np.asarray(stats["forwards"])[:batch])),
      "model_calls": int(stats["model_calls"]),
      "cached_calls": int(stats["cached_calls"]),
    }
    return np.asarray(out[1] if output_type == "latent" else out[0])[:batch]

  # ------------------------------------------------------------------ images and videos as prompts
  def animate(
    self,
    images: np.ndarray,
    prompts: Sequence[str],
    num_frames: int | None = None,
    *,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    negative_prompt: str | None = None,
    sampler: str | None = None,
    **kwargs,
  ) -> np.ndarray:
    """Image -> video: images uint8 [B, H, W, 3] (or [B, 1, H, W, 3]) -> uint8 [B, T, H, W, 3], frame 0 the image.

    The image is latent frame 0 of the clip (exactly, with the causal VAE), held at every step;
    the prompt says what happens next. Other keyword arguments as `__call__` (expand_prompts,
    progress, output_type).
    """
    images = conditioning_lib.as_clip(images, "images")
    if images.shape[1] != 1:
      raise InputError(f"images must be frames [B, H, W, 3]; got {images.shape[1]} frames each (extend takes clips)")
    sampling = _sampling_args(num_steps, guidance_scale, seed, negative_prompt, sampler, kwargs)
    return self._with_frames(
      prompts, images, "frames", sampling, num_frames=num_frames, conditions=[Condition(images, 0)]
    )

  def extend(
    self,
    videos: np.ndarray,
    prompts: Sequence[str],
    num_frames: int | None = None,
    backward: bool = False,
    *,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    negative_prompt: str | None = None,
    sampler: str | None = None,
    **kwargs,
  ) -> np.ndarray:
    """Continues clips: videos uint8 [B, T0, H, W, 3] -> [B, num_frames, H, W, 3].

    Forwards (default) the first T0 frames are the input (T0 = 1 + 4k with the 4x causal VAE);
    `backward=True` makes the input the last T0 frames (T0 a multiple of 4) and generates what
    came before.
    """
    videos = conditioning_lib.as_clip(videos, "videos")
    t0 = videos.shape[1]
    num_frames = num_frames or self.config.data.num_frames
    if num_frames <= t0:
      raise InputError(f"num_frames={num_frames} must exceed the {t0} input frames to extend them")
    tf = self.temporal_factor
    if not backward and (t0 - 1) % tf:
      raise InputError(
        f"extend forwards takes 1+{tf}k input frames (whole latent frames from frame 0: "
        f"1, {1 + tf}, {1 + 2 * tf}, ...); got {t0}"
      )
    if backward and t0 % tf:
      raise InputError(f"extend backward takes a multiple of {tf} input frames ({tf}, {2 * tf}, ...); got {t0}")
    condition = Condition(videos, num_frames - t0 if backward else 0)
    sampling = _sampling_args(num_steps, guidance_scale, seed, negative_prompt, sampler, kwargs)
    return self._with_frames(prompts, videos, "frames", sampling, num_frames=num_frames, conditions=[condition])

  def connect(
    self,
    starts: np.ndarray,
    ends: np.ndarray,
    prompts: Sequence[str],
    num_frames: int | None = None,
    *,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    negative_prompt: str | None = None,
    sampler: str | None = None,
    **kwargs,
  ) -> np.ndarray:
    """A transition: begins with `starts` and ends with `ends` (uint8 frames [B, H, W, 3] or clips [B, T, H, W, 3]).

    A start clip has 1 + 4k frames, an end clip a multiple of 4; a single end frame fills the
    last latent frame (it is held for the last 4 frames of the clip, the temporal factor).
    """
    starts = conditioning_lib.as_clip(starts, "starts")
    ends = conditioning_lib.as_clip(ends, "ends")
    tf = self.temporal_factor
    if ends.shape[1] == 1 and tf > 1:
      ends = np.repeat(ends, tf, axis=1)
    num_frames = num_frames or self.config.data.num_frames
    if starts.shape[1] + ends.shape[1] >= num_frames:
      raise InputError(
        f"num_frames={num_frames} leaves nothing to generate between {starts.shape[1]} start and "
        f"{ends.shape[1]} end frames (a single end frame counts {tf})"
      )
    conditions = [Condition(starts, 0), Condition(ends, num_frames - ends.shape[1])]
    sampling = _sampling_args(num_steps, guidance_scale, seed, negative_prompt, sampler, kwargs)
    return self._with_frames(prompts, starts, "frames", sampling, num_frames=num_frames, conditions=conditions)

  def loop(
    self,
    prompts: Sequence[str],
    num_frames: int | None = None,
    *,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    negative_prompt: str | None = None,
    sampler: str | None = None,
    **kwargs,
  ) -> np.ndarray:
    """A seamless loop: the last frame leads back into the first, so the clip plays on repeat without a jump.

    Two passes: text-to-video gives the first frame; then `connect` from that frame back to it
    (the end frame held for the last latent frame), so the clip starts and ends on the same frame.
    """
    sampling = _sampling_args(num_steps, guidance_scale, seed, negative_prompt, sampler, kwargs)
    # The first pass takes the sampling choices only (no output_type, progress, cache, ... of the clip itself).
    first_pass = {k: v for k, v in sampling.items() if k in _SAMPLING_KEYS or k == "expand_prompts"}
    first = self._generate(prompts, num_frames=num_frames, **first_pass)[:, 0]
    return self.connect(first, first, prompts, num_frames, **sampling)

  def edit(
    self,
    videos: np.ndarray,
    prompts: Sequence[str],
    strength: float = 0.7,
    *,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    negative_prompt: str | None = None,
    sampler: str | None = None,
    **kwargs,
  ) -> np.ndarray:
    """SDEdit: re-noise clips uint8 [B, T, H, W, 3] to `strength` and denoise them under the new prompts.

    As diffusers' video-to-video: `strength` in (0, 1] is the fraction of the num_steps-step
    trajectory that runs (the last max(1, int(strength x num_steps)) steps), starting from the clip's
    latents noised to that point (1 = ignore the clip). Lower keeps more of the source (layout,
    motion); higher follows the prompt more.
    """
    videos = conditioning_lib.as_clip(videos, "videos")
    if not 0.0 < float(strength) <= 1.0:
      raise InputError(f"strength={strength} must be in (0, 1] (the fraction of the denoising trajectory re-run)")
    num_steps = num_steps or self.config.sample.num_steps
    sampling = _sampling_args(num_steps, guidance_scale, seed, negative_prompt, sampler, kwargs)
    return self._with_frames(
      prompts, videos, "videos", sampling, num_frames=videos.shape[1], source=videos, edit_strength=float(strength)
    )

  def _with_frames(self, prompts, frames: np.ndarray, what: str, sampling: dict, **given) -> np.ndarray:
    """The modes with given frames: `frames` (batch 1 or one per prompt) set the clip's height and width;
    `given` is how they enter (conditions=, or SDEdit's source= and edit_strength=), `sampling` the rest."""
    if isinstance(prompts, str):
      prompts = [prompts]
    self._check_frames_batch(frames, prompts, what)
    return self._generate(prompts, height=frames.shape[2], width=frames.shape[3], **given, **sampling)

  @staticmethod
  def _check_frames_batch(frames: np.ndarray, prompts, what: str) -> None:
    if isinstance(prompts, str) or not prompts:
      return  # _generate reports prompts
    if frames.shape[0] not in (1, len(prompts)):
      raise InputError(f"{what} has a batch of {frames.shape[0]}; give 1 (for every prompt) or {len(prompts)}")

  def _check_conditioning_supported(self) -> None:
    if self.config.dit.get("architecture", "dit") != "dit":
      raise InputError(
        f"images and videos as prompts need our DiT (per-frame timesteps in adaLN); this model is "
        f"dit.architecture={self.config.dit.architecture!r}"
      )

  def _encode_canvas(self, pixels: np.ndarray, batch: int) -> np.ndarray:
    """uint8 [b, T, H, W, 3] (b = 1 or batch) -> normalised latents [batch, T', H', W', C], one jitted encode."""
    if "encode" not in self._compiled:
      stats = self.components.latent_stats
      vae = self.components.vae

      @jax.jit
      def encode(params, video):
        mean, _ = vae_lib.encode_video(vae, params, video.astype(jnp.float32) / 127.5 - 1.0)
        return (mean - stats["mean"]) / stats["std"]

      self._compiled["encode"] = encode
    with jax.set_mesh(self.mesh):
      latents = np.asarray(jax.device_get(self._compiled["encode"](self.params["vae"], jnp.asarray(pixels))))
    return np.broadcast_to(latents, (batch, *latents.shape[1:])).astype(np.float32)

  # ------------------------------------------------------------------ VAE
  def check_prompts(self, prompts: Sequence[str]) -> None:
    """A prompt the expander cannot read (empty, or naming nothing it knows) is an error, not replaced."""
    parse = getattr(self.prompt_expander, "parse", None)
    for prompt in prompts:
      if not prompt.strip():
        raise InputError(
          "a prompt is empty: say what to show (e.g. 'a red circle moving left'), or pass expand_prompts=False "
          "(--noexpand_prompts) to sample unconditionally from ''"
        )
      if parse is not None and parse(prompt) == (None, None, None):
        raise InputError(
          f"prompt {prompt!r} names nothing the prompt expander knows (no colour, shape or motion of this "
          f"domain, e.g. 'a red circle moving left'); rephrase it, or pass expand_prompts=False "
          f"(--noexpand_prompts) to use it as written"
        )

  def encode(self, videos: np.ndarray) -> np.ndarray:
    """uint8 [B, T, H, W, 3] -> normalised latents float32 [B, T', H', W', C] (what the DiT sees).

    Only uint8 frames (0-255) are taken: float frames are ambiguous ([0, 1] or [-1, 1]), so convert
    them first, e.g. `(frames * 255).round().astype(np.uint8)`. T must be 1+tf*k, H and W multiples
    of the VAE's spatial factor.
    """
    videos = np.asarray(videos)
    if videos.dtype != np.uint8:
      raise InputError(
        f"videos must be uint8 frames (0-255) [B, T, H, W, 3]; got dtype {videos.dtype}. Convert float frames "
        f"in [0, 1] with (videos * 255).round().astype(np.uint8)"
      )
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise InputError(f"videos must be uint8 [B, T, H, W, 3]; got shape {videos.shape}")
    vae_cfg = self.vae_config.vae
    tf, sf = vae_cfg.temporal_factor, vae_cfg.spatial_factor
    _, t, h, w, _ = videos.shape
    if (t - 1) % tf or h % sf or w % sf or min(t, h, w) < 1:
      raise InputError(
        f"videos of shape {videos.shape} cannot be encoded: T must be 1+{tf}k frames and H, W multiples of {sf} "
        f"(e.g. [B, {1 + tf * max(1, (t - 1) // tf)}, {sf * max(1, h // sf)}, {sf * max(1, w // sf)}, 3])"
      )
    x = jnp.asarray(videos, jnp.float32) / 127.5 - 1.0
    mean, _ = vae_lib.encode_video(self.components.vae, self.params["vae"], x)
    stats = self.components.latent_stats
    return np.asarray((mean - stats["mean"]) / stats["std"])

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Normalised latents [B, T', H', W', C] (finite; C = the VAE's latent channels) -> uint8 [B, T, H, W, 3]."""
    latents = np.asarray(latents)
    channels = self.vae_config.vae.latent_channels
    if latents.ndim != 5 or latents.shape[-1] != channels or latents.dtype.kind not in "fiu":
      raise InputError(
        f"latents must be numbers [B, T', H', W', {channels}] (what encode or output_type='latent' return); "
        f"got {latents.dtype} of shape {latents.shape}"
      )
    if not np.all(np.isfinite(latents)):
      raise InputError(f"latents hold {int(np.sum(~np.isfinite(latents)))} NaN/Inf values; decode needs finite ones")
    stats = self.components.latent_stats
    z = jnp.asarray(latents, jnp.float32) * stats["std"] + stats["mean"]
    return np.asarray(gen.to_uint8(vae_lib.decode_latents(self.components.vae, self.params["vae"], z)))


_SAMPLING_KEYS = ("num_steps", "guidance_scale", "seed", "negative_prompt", "sampler")


def _sampling_args(num_steps, guidance_scale, seed, negative_prompt, sampler, kwargs: dict) -> dict:
  """The sampling keywords every mode method names (as `__call__`), with its other keywords, for `_generate`."""
  named = dict(zip(_SAMPLING_KEYS, (num_steps, guidance_scale, seed, negative_prompt, sampler), strict=True))
  return {**named, **kwargs}


def _positive_int(name: str, value, default) -> int:
  """`value` (None = `default`) as a positive int; 0, negatives, floats like 2.5 and bools are errors."""
  if value is None:
    return default
  if isinstance(value, bool) or not (
    isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
  ):
    raise InputError(f"{name}={value!r} must be a positive integer (or None for the trained config's {default})")
  if value < 1:
    raise InputError(f"{name}={value} must be >= 1 (or None for the trained config's {default})")
  return int(value)
