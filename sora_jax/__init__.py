"""sora_jax: the Sora recipe (causal 3D VAE, spacetime-patch DiT, flow matching) in JAX/Flax.

from sora_jax import Pipeline
pipe = Pipeline.from_pretrained("runs/demo")
videos = pipe(["a red circle moving left"])   # np.uint8 [B, T, H, W, 3]
videos = pipe.animate(images, ["a red circle moving left"])   # images as prompts (also extend, connect, loop, edit)
"""

__version__ = "0.1.0"


def __getattr__(name):
  # Lazy: importing sora_jax must not initialise JAX (tests set device counts first).
  if name == "Pipeline":
    from sora_jax.sampling.pipeline import Pipeline

    return Pipeline
  if name == "Condition":
    from sora_jax.sampling.conditioning import Condition

    return Condition
  raise AttributeError(f"module 'sora_jax' has no attribute {name!r}")
