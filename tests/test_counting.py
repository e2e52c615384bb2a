"""Parameter and FLOP counting: the DiT paper's table, eval_shape of the real init, XLA's cost analysis, estimate.py."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sora_jax.models import counting, dit, variants

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Peebles & Xie 2023, Table 4: forward Gflops (multiply-adds) at 256x256 (latent 32x32x4).
PAPER_GFLOPS = {
  "DiT-S/8": 0.36,
  "DiT-S/4": 1.41,
  "DiT-S/2": 6.06,
  "DiT-B/8": 1.42,
  "DiT-B/4": 5.56,
  "DiT-B/2": 23.01,
  "DiT-L/8": 5.44,
  "DiT-L/4": 19.70,
  "DiT-L/2": 80.71,
  "DiT-XL/8": 7.39,
  "DiT-XL/4": 29.05,
  "DiT-XL/2": 118.64,
}
# The paper's L/8 entry is out of line with its own table: every other row, and any consistent
# count, gives L/8 ~ L/4 / 3.9 (S, B, XL: 3.92, 3.92, 3.93; L: 19.70 / 5.44 = 3.62). A direct
# count of the DiT-L/8 network (24 layers x 1024 wide, 16 tokens) is 5.01 Gflops.
PAPER_ERRATA = {"DiT-L/8": 5.01}
PAPER_PARAMS_MILLIONS = {"S": 33, "B": 130, "L": 458, "XL": 675}


def _paper_model(name):
  return dit.DiT(in_channels=4, **variants.variant_fields(name))


def _cond(model, batch=1, length=3):
  if model.conditioning == "class":
    return {"label": jnp.zeros((batch,), jnp.int32)}
  return dict(
    text=jnp.zeros((batch, length, model.text_dim)),
    text_mask=jnp.ones((batch, length), bool),
    pooled=jnp.zeros((batch, model.text_dim)),
  )


def _abstract_param_count(model, latent=(1, 8, 8)):
  x = jnp.zeros((1, *latent, model.in_channels))
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), x, jnp.zeros(1), _cond(model))))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", sorted(PAPER_GFLOPS))
def test_paper_variants_match_the_paper_table(name):
  model = _paper_model(name)
  gflops = counting.count_flops(model, (1, 32, 32))["gflops"]
  expected = PAPER_ERRATA.get(name, PAPER_GFLOPS[name])
  assert gflops == pytest.approx(expected, abs=0.02), f"{name}: {gflops:.3f} vs {expected}"
  params = counting.count_params(model)["total"]
  size, patch = name[4:].split("/")
  if patch == "2":  # the paper quotes params of the /2 models
    assert round(params / 1e6) == PAPER_PARAMS_MILLIONS[size]
  assert params == _abstract_param_count(model)  # analytic == the real init (abstractly)


def test_dit_xl2_headline_numbers():
  model = _paper_model("DiT-XL/2")
  assert round(counting.count_params(model)["total"] / 1e6) == 675
  assert round(counting.count_flops(model, (1, 32, 32))["gflops"], 1) == 118.6


@pytest.mark.parametrize(
  "name,text_dim", [("video-tiny", 128), ("video-S", 384), ("wan-small", 384), ("wan-1.3b", 4096), ("wan-14b", 4096)]
)
def test_video_variant_params_match_init(name, text_dim):
  model = dit.DiT(in_channels=16, text_dim=text_dim, **variants.variant_fields(name))
  assert counting.count_params(model)["total"] == _abstract_param_count(model, latent=(2, 4, 4))


def test_wan_shapes_are_in_the_expected_range():
  params = {
    name: counting.count_params(dit.DiT(in_channels=16, text_dim=4096, **variants.variant_fields(name)))["total"]
    for name in ("wan-1.3b", "wan-14b")
  }
  assert 1.3e9 < params["wan-1.3b"] < 1.5e9 and 13.5e9 < params["wan-14b"] < 15e9, params


def test_video_flops_agree_with_xla_cost_analysis():
  """Our matmul count vs XLA's count of the compiled forward (which adds norms, softmax, ...)."""
  model = dit.DiT(in_channels=4, text_dim=16, hidden_size=64, depth=2, num_heads=2, mlp_dim=128, scan_layers=False)
  x = jnp.zeros((2, 3, 8, 8, 4))
  cond = _cond(model, batch=2, length=5)
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), x, jnp.zeros(2), cond)))
  cost = jax.jit(model.apply).lower(params, x, jnp.zeros(2), cond).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = 2 * counting.count_flops(model, (3, 8, 8), text_length=5)["forward_flops"]  # batch of 2
  assert ours <= cost["flops"] <= 1.15 * ours, (ours, cost["flops"])
  # Attention scores are part of it: doubling the text length adds cross-attention work.
  longer = counting.count_flops(model, (3, 8, 8), text_length=10)
  assert (
    longer["blocks.cross_attention_scores"]
    == 2 * counting.count_flops(model, (3, 8, 8), text_length=5)["blocks.cross_attention_scores"]
  )


@pytest.mark.parametrize("size", ["tiny", "1.3b", "14b"])
def test_wan_counts_match_init(size):
  """Analytic Wan 2.1 counts == the init's shapes (diffusers' own count is in test_wan_transformer.py)."""
  from configs.dit import wan21
  from sora_jax.models.wan.transformer import WanTransformer, num_params

  cfg = wan21.get_config(size)
  model = WanTransformer.from_config(cfg.dit, in_channels=16, text_dim=4096)
  assert counting.count_params(cfg.dit, in_channels=16, text_dim=4096)["total"] == num_params(model)
  assert counting.count_params(model)["total"] == {"tiny": 176_000, "1.3b": 1_418_996_800, "14b": 14_288_491_584}[size]


def test_wan_flops_agree_with_xla_cost_analysis():
  from sora_jax.models.wan.transformer import WanTransformer

  model = WanTransformer(
    in_channels=4, text_dim=16, hidden_size=64, depth=2, num_heads=2, mlp_dim=128, scan_layers=False
  )
  x, cond = jnp.zeros((2, 3, 8, 8, 4)), {"text": jnp.zeros((2, 5, 16))}
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), x, jnp.zeros(2), cond)))
  cost = jax.jit(model.apply).lower(params, x, jnp.zeros(2), cond).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = 2 * counting.count_flops(model, (3, 8, 8), text_length=5)["forward_flops"]  # batch of 2
  assert ours <= cost["flops"] <= 1.15 * ours, (ours, cost["flops"])  # XLA also counts norms, softmax, RoPE


def test_counting_from_a_config_and_errors():
  cfg = base.get_config()
  cfg.dit.variant = "video-tiny"
  cfg.dit = variants.apply_variant(cfg.dit)
  assert (
    counting.count_params(cfg.dit, in_channels=16, text_dim=128)["total"]
    == counting.count_params(dit.DiT(in_channels=16, text_dim=128, **variants.variant_fields("video-tiny")))["total"]
  )
  with pytest.raises(ValueError, match="needs in_channels"):
    counting.count_params(cfg.dit)
  with pytest.raises(ValueError, match=r"H \(latent height\) = 5 is not divisible"):
    counting.count_flops(cfg.dit, (1, 5, 8), in_channels=16, text_dim=128)


def _estimate(*args):
  result = subprocess.run(
    [sys.executable, os.path.join(REPO, "tools", "estimate.py"), *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  return result


@pytest.mark.parametrize("size,params", [("1.3b", 1_418_996_800), ("14b", 14_288_491_584)])
def test_estimate_tool_counts_wan_configs_like_diffusers(size, params):
  """tools/estimate.py on configs/dit/wan21.py: diffusers' count of the published config (see test_wan_transformer)."""
  result = _estimate(f"--config=configs/dit/wan21.py:{size}", "--json")
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout)
  assert out["model"] == "wan2.1" and out["params"] == params
  assert out["latent"] == [21, 60, 104, 16] and out["tokens"] == 32760 and out["text_length"] == 512


def test_estimate_tool_json():
  result = _estimate("--model=DiT-XL/2", "--height=256", "--width=256", "--json")
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout)
  assert round(out["params"] / 1e6) == 675 and round(out["gflops"], 1) == 118.6
  assert out["latent"] == [1, 32, 32, 4] and out["tokens"] == 256
  bad = _estimate("--model=wan-1.3b", "--frames=80", "--json")
  assert bad.returncode != 0 and "frames=80 must be 1 + 4*k" in bad.stderr
  config = _estimate("--config=configs/image/dit_paper.py:DiT-B/4", "--config.dit.depth=6", "--json")
  assert config.returncode == 0, config.stderr
  assert json.loads(config.stdout)["params"] < out["params"] and json.loads(config.stdout)["tokens"] == 64
