"""Tiny random Wan 2.1 models built with the peers' own classes, saved in the real on-disk layout.

Used by the Wan parity tests (tests/test_wan_*.py, test_umt5.py). Needs the [peers] extra; the
callers skip when it is missing. Sizes are the smallest that keep every code path (two blocks,
two heads, three VAE resolution changes, one of them spatial only) and run in a few seconds.
"""

from __future__ import annotations

import os

import numpy as np

PEERS_REASON = "needs the [peers] extra: pip install torch==2.13.0 diffusers transformers"

TRANSFORMER = dict(
  patch_size=(1, 2, 2),
  num_attention_heads=2,
  attention_head_dim=16,
  in_channels=4,
  out_channels=4,
  text_dim=32,
  freq_dim=256,
  ffn_dim=48,
  num_layers=2,
  cross_attn_norm=True,
  qk_norm="rms_norm_across_heads",
  eps=1e-6,
  rope_max_seq_len=64,
)
VAE = dict(
  base_dim=8,
  z_dim=4,
  dim_mult=[1, 2, 2, 2],
  num_res_blocks=1,
  temperal_downsample=[False, True, True],
  latents_mean=[0.1, -0.2, 0.3, 0.0],
  latents_std=[1.5, 0.8, 1.2, 2.0],
)
WORDS = "a red blue green circle square triangle moving left right up down staying still the cat dog".split()
UMT5 = dict(
  vocab_size=len(WORDS) + 8,
  d_model=32,
  d_kv=8,
  d_ff=48,
  num_layers=2,
  num_heads=4,
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
  feed_forward_proj="gated-gelu",
)


def perturb(model, seed: int, scale: float = 0.05):
  """Adds noise to every weight (diffusers zero-inits some and sets norms to ones: make all count)."""
  import torch

  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=generator))
  return model.eval()


def torch_transformer(seed: int = 0, **overrides):
  import torch
  from diffusers import WanTransformer3DModel

  torch.manual_seed(seed)
  return perturb(WanTransformer3DModel(**{**TRANSFORMER, **overrides}), seed + 100)


def torch_vae(seed: int = 0):
  import torch
  from diffusers import AutoencoderKLWan

  torch.manual_seed(seed)
  return perturb(AutoencoderKLWan(**VAE), seed + 100, scale=0.1)


def torch_umt5(seed: int = 0):
  import torch
  from transformers import UMT5Config, UMT5EncoderModel

  torch.manual_seed(seed)
  return perturb(UMT5EncoderModel(UMT5Config(**UMT5)), seed + 100)


def save_tokenizer(folder: str):
  """A small T5-style tokenizer (word level, "<prompt> </s>", pad "<pad>" = 0) saved by transformers:
  tokenizer.json + tokenizer_config.json, loadable by AutoTokenizer and by `tokenizers` alone."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
  hf.save_pretrained(folder)
  return hf


def save_wan_folder(
  folder: str, *, flow_shift: float = 3.0, seed: int = 0, text_encoder=None, vae=None, transformer=None
):
  """A complete diffusers Wan 2.1 T2V folder (WanPipeline.save_pretrained) with the small tokenizer and UniPC;
  returns the pipeline. The models are the tiny random ones (from `seed`) unless given (e.g. larger ones for
  tools/benchmarks/vs_wan_pipeline.py --preset=1.3b)."""
  from diffusers import UniPCMultistepScheduler, WanPipeline
  from transformers import AutoTokenizer

  tokenizer_dir = os.path.join(folder, "_tokenizer_src")
  save_tokenizer(tokenizer_dir)
  scheduler = UniPCMultistepScheduler(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000
  )
  pipe = WanPipeline(
    tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir),
    text_encoder=torch_umt5(seed) if text_encoder is None else text_encoder,
    vae=torch_vae(seed) if vae is None else vae,
    transformer=torch_transformer(seed) if transformer is None else transformer,
    scheduler=scheduler,
  )
  pipe.save_pretrained(folder)
  import shutil

  shutil.rmtree(tokenizer_dir)
  return pipe


def to_torch(x):
  """[B, T, H, W, C] numpy -> torch [B, C, T, H, W]."""
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def from_torch(t) -> np.ndarray:
  """torch [B, C, T, H, W] -> numpy [B, T, H, W, C]."""
  return np.moveaxis(t.detach().float().numpy(), 1, -1)
