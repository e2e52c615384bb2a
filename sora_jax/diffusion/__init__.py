"""Diffusion processes, guidance and samplers, kept apart from the network (as facebookresearch/DiT's diffusion/).

The network is always called as `model_fn(x_t, t_model [B], cond) -> prediction`, with
`t_model` on the 0..1000 scale (flow: 1000 * t; DDPM: the integer timestep).

* `flow.FlowMatching` (default): rectified flow, velocity target, logit-normal t, timestep shift.
* `ddpm.DDPM`: linear / cosine betas, epsilon- or v-prediction, learned variance trained by ADM's
  hybrid loss (MSE + variational bound) for learn_sigma models (DiT-paper configurations).
* `guidance`: condition dropout for training, classifier-free guidance for sampling.
* `samplers.sample`: Euler, Heun, DDIM, DPM-Solver++(2M) and DDPM's ancestral sampler (with the
  learned variance), each one jit-compiled lax.scan.

    process = build_diffusion(config.diffusion)
    loss, aux = process.loss(model_fn, x0, cond, rng, num_tokens=n)
"""

from __future__ import annotations

from sora_jax.diffusion.ddpm import DDPM
from sora_jax.diffusion.flow import FlowMatching

PROCESSES = {"flow": FlowMatching, "ddpm": DDPM}


def build_diffusion(diffusion_cfg) -> FlowMatching | DDPM:
  """The process named by `diffusion_cfg.kind` ("flow" or "ddpm"), configured from `config.diffusion`."""
  if diffusion_cfg.kind not in PROCESSES:
    raise ValueError(f"config.diffusion.kind={diffusion_cfg.kind!r} is not one of {sorted(PROCESSES)}")
  return PROCESSES[diffusion_cfg.kind].from_config(diffusion_cfg)


__all__ = ["DDPM", "FlowMatching", "PROCESSES", "build_diffusion"]
