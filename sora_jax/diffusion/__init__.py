"""Diffusion processes, guidance and samplers, kept apart from the network (as facebookresearch/DiT's diffusion/).

The network is always called as `model_fn(x_t, t_model [B], cond) -> prediction`, with
`t_model` on the 0..1000 scale (flow: 1000 * t; DDPM: the integer timestep).

* `flow.FlowMatching` (default): rectified flow, velocity target, logit-normal t, timestep shift.
* `ddpm.DDPM`: linear / cosine betas, epsilon- or v-prediction, learned variance trained by ADM's
  hybrid loss (MSE + variational bound) for learn_sigma models (DiT-paper configurations).
* `guidance`: condition dropout for training, classifier-free guidance for sampling.
* `samplers.sample`: Euler, Heun, DDIM, DPM-Solver++(2M) and DDPM's ancestral sampler (with the
  learned variance), each one jit-compiled lax.scan; `sampler_names.SAMPLERS` lists them.

    process = build_diffusion(config.diffusion)
    loss, aux = process.loss(model_fn, x0, cond, rng, num_tokens=n)

The package attributes load lazily, so `sora_jax.diffusion.sampler_names` imports without JAX.
"""

from __future__ import annotations

import importlib

_LAZY = {
  "DDPM": "sora_jax.diffusion.ddpm",
  "FlowMatching": "sora_jax.diffusion.flow",
  "PROCESSES": "sora_jax.diffusion.processes",
  "build_diffusion": "sora_jax.diffusion.processes",
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'sora_jax.diffusion' has no attribute {name!r}")


__all__ = ["DDPM", "FlowMatching", "PROCESSES", "build_diffusion"]
