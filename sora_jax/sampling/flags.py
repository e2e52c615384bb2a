"""The sampling flags shared by the tools that generate (tools/sample.py, tools/evaluate.py).

    from sora_jax.sampling import flags as sampling_flags
    SAMPLING = sampling_flags.define_sampling_flags()  # at import, next to the tool's own flags
    ...
    videos = pipe(prompts, **SAMPLING.overrides())      # None = the trained config's value
    used = SAMPLING.resolved(pipe.config)                # what was used, for reports

Import-light (absl only, no JAX): tools define flags before anything initialises JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import flags

# Which sampler fits the trained process is checked when sampling: "euler" / "heun" need flow, "ddpm" DDPM.
from sora_jax.diffusion.sampler_names import SAMPLERS


@dataclasses.dataclass(frozen=True)
class SamplingFlags:
  """The flag holders of `define_sampling_flags`; a None value means the config's."""

  num_steps: flags.FlagHolder
  guidance_scale: flags.FlagHolder
  sampler: flags.FlagHolder

  def overrides(self) -> dict[str, Any]:
    """{num_steps, guidance_scale, sampler} as given (None where not given): `Pipeline.__call__` kwargs."""
    return {
      "num_steps": self.num_steps.value,
      "guidance_scale": self.guidance_scale.value,
      "sampler": self.sampler.value,
    }

  def resolved(self, config) -> dict[str, Any]:
    """The values `Pipeline.__call__` uses: the flags where given, else config.sample's (its rules:
    num_steps 0 and an empty sampler also mean the config's; guidance_scale 0 is a value)."""
    given = self.overrides()
    return {
      "num_steps": given["num_steps"] or config.sample.num_steps,
      "guidance_scale": config.sample.guidance_scale if given["guidance_scale"] is None else given["guidance_scale"],
      "sampler": given["sampler"] or config.sample.sampler,
    }


def define_sampling_flags(flag_values: flags.FlagValues = flags.FLAGS) -> SamplingFlags:
  """Defines --num_steps, --guidance_scale and --sampler (each defaulting to the trained config's)."""
  return SamplingFlags(
    num_steps=flags.DEFINE_integer(
      "num_steps", None, "Denoising steps; default: config.sample.num_steps.", flag_values=flag_values
    ),
    guidance_scale=flags.DEFINE_float(
      "guidance_scale",
      None,
      "Classifier-free guidance scale (1 = off); default: config.sample.guidance_scale.",
      flag_values=flag_values,
    ),
    sampler=flags.DEFINE_enum(
      "sampler",
      None,
      list(SAMPLERS),
      "Default: config.sample.sampler. 'euler' and 'heun' need a flow model, "
      "'ddpm' (stochastic ancestral sampling) a DDPM one.",
      flag_values=flag_values,
    ),
  )
