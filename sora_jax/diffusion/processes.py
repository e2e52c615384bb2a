"""The diffusion processes by `config.diffusion.kind`."""

from __future__ import annotations

from sora_jax.diffusion.ddpm import DDPM
from sora_jax.diffusion.flow import FlowMatching

PROCESSES = {"flow": FlowMatching, "ddpm": DDPM}


def build_diffusion(diffusion_cfg) -> FlowMatching | DDPM:
  """The process named by `diffusion_cfg.kind` ("flow" or "ddpm"), configured from `config.diffusion`."""
  if diffusion_cfg.kind not in PROCESSES:
    raise ValueError(f"config.diffusion.kind={diffusion_cfg.kind!r} is not one of {sorted(PROCESSES)}")
  return PROCESSES[diffusion_cfg.kind].from_config(diffusion_cfg)
