"""sora_jax.media"""
