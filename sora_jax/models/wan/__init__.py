"""The Wan 2.1 family beside our own models: transformer, causal VAE, weight tables.

* `transformer.WanTransformer`: diffusers' `WanTransformer3DModel` (config `dit.architecture="wan2.1"`).
* `vae.WanVAE`: diffusers' `AutoencoderKLWan` (config `vae.architecture="wan2.1"`).
* `weights`: one mapping table per module between our parameter trees and the diffusers /
  transformers safetensors keys, for loading (sharded onto a mesh) and exporting.

The umT5 text encoder Wan conditions on lives with the other text encoders (`models/text/umt5.py`).
"""
