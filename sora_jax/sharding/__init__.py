"""sora_jax.sharding"""
