"""sora_jax.sampling"""
