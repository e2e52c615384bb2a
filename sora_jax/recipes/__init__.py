"""End-to-end runs the tools call: train a VAE run, train a DiT run (sampling included).

The top floor of the library: a recipe wires data, models, the training loop, restores and
the sampler together, so `tools/train_vae.py` and `tools/train_dit.py` only parse flags.
"""
