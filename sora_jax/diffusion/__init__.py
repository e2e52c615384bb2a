"""sora_jax.diffusion"""
