"""sora_jax.training"""
