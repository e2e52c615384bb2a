"""The scan samplers by name and what each one needs: the one list every other place reads.

JAX-free (a table of names), so tools can list the samplers in `--help` before JAX loads.
`sora_jax.diffusion.samplers` implements each of them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
  """model_evals_per_step: network calls per step (with CFG, each is one forward over 2B);
  processes: the `diffusion.kind`s it can sample; stochastic: draws fresh noise at each step."""

  model_evals_per_step: int
  processes: tuple[str, ...]
  stochastic: bool = False


SAMPLERS: dict[str, SamplerInfo] = {
  "euler": SamplerInfo(1, ("flow",)),
  "heun": SamplerInfo(2, ("flow",)),
  "ddim": SamplerInfo(1, ("flow", "ddpm")),
  "dpmpp_2m": SamplerInfo(1, ("flow", "ddpm")),
  "unipc": SamplerInfo(1, ("flow",)),
  "ddpm": SamplerInfo(1, ("ddpm",), stochastic=True),
}
