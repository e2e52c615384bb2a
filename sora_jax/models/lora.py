"""LoRA: low-rank adapters on the attention and MLP projections of our DiT and of the Wan transformer.

    spec = LoraSpec.from_config(config.lora)                 # rank, alpha, dropout, targets
    model = LoraModel(dit, spec)                             # the same network, adapters switched on
    params = model.init(rng, x, t, cond)["params"]           # base params + lora_A / lora_B beside each target
    base, adapters = split_adapters(params)                  # what is frozen / what trains
    y = model.apply({"params": merge_trees(base, adapters)}, x, t, cond)
    fused = fuse(merge_trees(base, adapters), spec.scale)    # kernel + scale * A @ B: plain DiT params again

No module is forked. `LoraModel` runs the wrapped module's own `init` / `apply` inside
`nn.intercept_methods`: every `nn.Einsum` call whose module path is a target (a projection of a
transformer block: `blocks[_i]/<self_attention|cross_attention>/<query|key|value|out>` or
`blocks[_i]/mlp/<fc1|fc2>`) gets the low-rank path added to its output,

    y = einsum(x, kernel) + bias + scale * einsum(einsum(dropout(x), lora_A), lora_B),   scale = alpha / rank

with lora_A [*in_dims, rank] (PEFT's Kaiming-uniform init) and lora_B [rank, *out_dims] (zeros, so
at init the model is exactly the base model). The adapter params are created in the Einsum's own
scope, next to its kernel, so under `nn.scan` they are stacked on the "layers" axis like every
block weight; they carry the kernel's logical axis names on their in / out dims (rank: None), so
they shard like the base weight they adapt. The matmuls run in the module's compute dtype with
float32 accumulation, like the base projection, and never form the [in, out] product.

At apply time a projection is adapted when its `lora_A` / `lora_B` are present in the params
(their shapes give the rank), so one wrapped model runs any set of adapters: the training run's,
or several loaded LoRAs combined into one (`combine`, each with its own scale folded in).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LORA_A, LORA_B = "lora_A", "lora_B"
ADAPTER_LEAVES = (LORA_A, LORA_B)
DROPOUT_RNG = "lora_dropout"

# Every projection an adapter can sit on: "<parent>.<name>" inside a transformer block (ours and Wan's alike).
TARGETS = (
  "self_attention.query",
  "self_attention.key",
  "self_attention.value",
  "self_attention.out",
  "cross_attention.query",
  "cross_attention.key",
  "cross_attention.value",
  "cross_attention.out",
  "mlp.fc1",
  "mlp.fc2",
)
# Short names accepted in config.lora.targets, each standing for the full names it matches.
TARGET_GROUPS = {
  "attention": TARGETS[:8],
  "self_attention": TARGETS[:4],
  "cross_attention": TARGETS[4:8],
  "mlp": TARGETS[8:],
  **{short: tuple(t for t in TARGETS if t.endswith("." + short)) for short in ("query", "key", "value", "out")},
  **{short: (f"mlp.{short}",) for short in ("fc1", "fc2")},
  **{t: (t,) for t in TARGETS},
}
_BLOCK = re.compile(r"blocks(_\d+)?")
# How the adapted projection is computed (same function, other cost): "low_rank" never forms the
# [in, out] product (memory of big models); "merged" forms W + scale * A @ B per call, which is
# faster for small models on CPU (one matmul per projection; the weight gradient is then formed).
COMPUTE_MODES = ("low_rank", "merged")


def resolve_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
  """config.lora.targets (names of TARGET_GROUPS, a sequence or one comma-separated string) -> full names.

  Raises ValueError naming the unknown entries and every valid one.
  """
  if isinstance(targets, str):
    targets = [t.strip() for t in targets.split(",") if t.strip()]
  unknown = [t for t in targets if t not in TARGET_GROUPS]
  if unknown or not targets:
    raise ValueError(
      f"lora.targets: unknown {unknown or 'empty list'}; valid: {', '.join(TARGET_GROUPS)} (the projections of a "
      f"block's self-attention, cross-attention and MLP)"
    )
  full = {name for t in targets for name in TARGET_GROUPS[t]}
  return tuple(t for t in TARGETS if t in full)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """What the adapters of a run are: rank, alpha (scale = alpha / rank), dropout on their input, targets."""

  rank: int
  alpha: float
  dropout: float = 0.0
  targets: tuple[str, ...] = TARGETS
  compute: str = "low_rank"  # "low_rank": y + scale * (x @ A) @ B; "merged": x @ (W + scale * A @ B)

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"lora.rank={self.rank} must be >= 1 (0 turns LoRA off)")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")
    if self.compute not in COMPUTE_MODES:
      raise ValueError(f"lora.compute={self.compute!r} is not one of {', '.join(COMPUTE_MODES)}")
    if self.compute == "merged" and self.dropout > 0:
      raise ValueError("lora.compute='merged' has no separate adapter input to drop out: set lora.dropout=0")
    object.__setattr__(self, "targets", resolve_targets(self.targets))

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank

  @classmethod
  def from_config(cls, lora_cfg) -> LoraSpec:
    """config.lora -> LoraSpec; alpha <= 0 means alpha = rank (scale 1)."""
    alpha = lora_cfg.alpha if lora_cfg.alpha > 0 else lora_cfg.rank
    return cls(
      rank=int(lora_cfg.rank),
      alpha=float(alpha),
      dropout=float(lora_cfg.dropout),
      targets=lora_cfg.targets,
      compute=lora_cfg.get("compute", "low_rank"),
    )


def enabled(config) -> bool:
  """Whether the run config trains a LoRA (config.lora.rank > 0)."""
  return "lora" in config and config.lora.rank > 0


def target_of(path: Sequence[str]) -> str | None:
  """The target name of an Einsum at module path `path` ("blocks/self_attention/query" ->
  "self_attention.query"), or None when it is not a block projection."""
  if len(path) != 3 or not _BLOCK.fullmatch(path[0]):
    return None
  name = f"{path[1]}.{path[2]}"
  return name if name in TARGETS else None


def _einsum_parts(einsum_str: str) -> tuple[str, str, str, int]:
  """(input spec, kernel spec, output spec, number of contracted kernel dims) of an Einsum's equation."""
  lhs, out = einsum_str.replace(" ", "").split("->")
  x_spec, k_spec = lhs.split(",")
  contracted = [c for c in k_spec if c not in out]
  n_in = len(contracted)
  if "".join(contracted) != k_spec[:n_in] or any(c not in x_spec for c in contracted):
    raise ValueError(f"cannot put a LoRA on einsum {einsum_str!r}: the kernel's contracted dims must come first")
  return x_spec, k_spec, out, n_in


def _kernel_axes(module: nn.Einsum) -> tuple[Any, ...]:
  """The logical axis names of the module's kernel (from its partitioned initializer; None if unannotated)."""
  boxed = jax.eval_shape(lambda: module.kernel_init(jax.random.key(0), module.shape, module.param_dtype))
  if isinstance(boxed, nn.LogicallyPartitioned):
    return tuple(boxed.names)
  return (None,) * len(module.shape)


def _kaiming_uniform_a(fan_in: int):
  """PEFT's default lora_A init: kaiming_uniform(a=sqrt(5)) on [rank, in] = U(-1/sqrt(in), 1/sqrt(in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class LoraModel:
  """A linen module (our DiT or the Wan transformer) with LoRA adapters on its block projections.

  `init` / `apply` are the wrapped module's, run with the adapter interceptor; any other
  attribute (patch_size, conditioning, ...) is the wrapped module's, so code written for the
  DiT takes a LoraModel unchanged.

  Args:
    base: the linen module.
    spec: rank / alpha / dropout / targets. `init` creates adapters on `spec.targets`.
    dropout_rng: a key for lora dropout (training); None = no dropout. Under nn.scan every layer
      draws the same mask (the rng is broadcast over the stacked layers).
    scale: the multiplier of the low-rank path (default spec.scale = alpha / rank); 1.0 for a
      combination of loaded LoRAs whose scales are already folded into lora_B (`combine`).
  """

  def __init__(self, base: nn.Module, spec: LoraSpec, scale: float | None = None, dropout_rng: jax.Array | None = None):
    if isinstance(base, LoraModel):
      raise ValueError("this module already has LoRA adapters (LoraModel of a LoraModel)")
    self.base = base
    self.spec = spec
    self.scale = spec.scale if scale is None else float(scale)
    self.dropout_rng = dropout_rng

  def __getattr__(self, name):
    if name in ("base", "spec", "scale", "dropout_rng"):  # not set yet (during unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.base, name)

  def __repr__(self) -> str:
    return f"LoraModel({type(self.base).__name__}, {self.spec}, scale={self.scale})"

  def _intercept(self, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, nn.Einsum):
      return next_fun(*args, **kwargs)
    target = target_of(module.path)
    y = next_fun(*args, **kwargs)
    if target is None:
      return y
    if module.is_initializing():
      if target not in self.spec.targets:
        return y
    elif not module.has_variable("params", LORA_A):
      return y
    x = args[0] if args else kwargs["inputs"]
    if self.spec.compute == "merged" and not module.is_initializing():
      return self._merged(module, x)
    return y + self.scale * self._low_rank(module, x, y.dtype)

  def _merged(self, module: nn.Einsum, x: jax.Array) -> jax.Array:
    """nn.Einsum's own computation with kernel + scale * A @ B in place of the kernel."""
    kernel = nn.meta.unbox(module.get_variable("params", "kernel"))
    lora_a, lora_b = (nn.meta.unbox(module.get_variable("params", n)) for n in ADAPTER_LEAVES)
    kernel = kernel.astype(jnp.float32) + self.scale * delta(kernel.shape, lora_a, lora_b)
    einsum_str = module.einsum_str.replace(" ", "")
    bias = None
    if module.use_bias:
      _, bias_shape = module._get_bias_shape(einsum_str, x, kernel)
      bias = nn.meta.unbox(module.get_variable("params", "bias"))
    x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
    y = jnp.einsum(
      einsum_str, x, kernel, precision=module.precision, preferred_element_type=module.preferred_element_type
    )
    return y if bias is None else y + jnp.reshape(bias, bias_shape)

  def _low_rank(self, module: nn.Einsum, x: jax.Array, out_dtype) -> jax.Array:
    x_spec, k_spec, out_spec, n_in = _einsum_parts(module.einsum_str)
    in_shape, out_shape = tuple(module.shape[:n_in]), tuple(module.shape[n_in:])
    axes = _kernel_axes(module)
    rank = self.spec.rank
    if module.is_initializing():
      lora_a = module.param(
        LORA_A,
        nn.with_logical_partitioning(_kaiming_uniform_a(int(np.prod(in_shape))), axes[:n_in] + (None,)),
        in_shape + (rank,),
        jnp.float32,
      )
      lora_b = module.param(
        LORA_B, nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,) + axes[n_in:]), (rank,) + out_shape
      )
    else:  # any rank: the params given decide (a combination of LoRAs has the sum of their ranks)
      lora_a, lora_b = (nn.meta.unbox(module.get_variable("params", n)) for n in ADAPTER_LEAVES)
    if lora_a.shape[:-1] != in_shape or lora_b.shape[1:] != out_shape or lora_a.shape[-1] != lora_b.shape[0]:
      raise ValueError(
        f"LoRA of {'/'.join(module.path)} (kernel {tuple(module.shape)}): lora_A {lora_a.shape} / lora_B "
        f"{lora_b.shape} do not fit; expected [{in_shape}, rank] and [rank, {out_shape}]"
      )
    if self.spec.dropout > 0 and module.has_rng(DROPOUT_RNG):
      keep = jax.random.bernoulli(module.make_rng(DROPOUT_RNG), 1.0 - self.spec.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.spec.dropout), 0.0).astype(x.dtype)
    r = next(c for c in "rstuvwxyzabcdefghijklmnopq" if c not in x_spec + k_spec + out_spec)
    kept = "".join(c for c in x_spec if c not in k_spec[:n_in])
    dtype = module.dtype or jnp.float32
    h = jnp.einsum(
      f"{x_spec},{k_spec[:n_in]}{r}->{kept}{r}",
      x.astype(dtype),
      lora_a.astype(dtype),
      preferred_element_type=jnp.float32,
    )
    out = jnp.einsum(
      f"{kept}{r},{r}{k_spec[n_in:]}->{out_spec}",
      h.astype(dtype),
      lora_b.astype(dtype),
      preferred_element_type=jnp.float32,
    )
    return out.astype(out_dtype)

  def init(self, rngs, *args, **kwargs):
    with nn.intercept_methods(self._intercept):
      return self.base.init(rngs, *args, **kwargs)

  def apply(self, variables, *args, **kwargs):
    if self.dropout_rng is not None and self.spec.dropout > 0 and "rngs" not in kwargs:
      kwargs["rngs"] = {DROPOUT_RNG: self.dropout_rng}
    with nn.intercept_methods(self._intercept):
      return self.base.apply(variables, *args, **kwargs)


def unwrap(model) -> nn.Module:
  """The linen module under a LoraModel (the module itself otherwise)."""
  return model.base if isinstance(model, LoraModel) else model


# ------------------------------------------------------------------------------ param trees


def _is_adapter_dict(node: Any) -> bool:
  return isinstance(node, Mapping) and LORA_A in node and LORA_B in node


def split_adapters(params: Mapping[str, Any]) -> tuple[dict, dict]:
  """(base, adapters): the tree without lora_A / lora_B, and a tree holding only them (same paths)."""
  base, adapters = {}, {}
  for key, value in params.items():
    if key in ADAPTER_LEAVES:
      adapters[key] = value
    elif isinstance(value, Mapping):
      b, a = split_adapters(value)
      base[key] = b
      if a:
        adapters[key] = a
    else:
      base[key] = value
  return base, adapters


def merge_trees(base: Mapping[str, Any], adapters: Mapping[str, Any]) -> dict:
  """The base tree with the adapter leaves added at their paths (the inverse of `split_adapters`).

  Raises ValueError naming adapter paths the base tree has no module for.
  """
  out = dict(base)
  for key, value in adapters.items():
    if isinstance(value, Mapping) and key not in ADAPTER_LEAVES:
      if key not in base or not isinstance(base[key], Mapping):
        raise ValueError(f"adapter path {key!r} has no module in the base params (keys: {sorted(base)[:12]})")
      out[key] = merge_trees(base[key], value)
    else:
      out[key] = value
  return out


def adapter_paths(adapters: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  """Module paths (e.g. ("blocks", "self_attention", "query")) that hold a lora_A / lora_B pair."""
  out = []
  for key, value in adapters.items():
    if _is_adapter_dict(value):
      out.append(prefix + (key,))
    elif isinstance(value, Mapping):
      out.extend(adapter_paths(value, prefix + (key,)))
  return out


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def delta(kernel_shape: Sequence[int], lora_a: jax.Array, lora_b: jax.Array) -> jax.Array:
  """lora_A @ lora_B in the kernel's layout (float32): [*lead, *in, r] x [*lead, r, *out] -> kernel_shape."""
  n_lead = lora_a.ndim + lora_b.ndim - len(kernel_shape) - 2
  lead = tuple(lora_a.shape[:n_lead])
  rank = lora_a.shape[-1]
  a = jnp.asarray(lora_a, jnp.float32).reshape(*lead, -1, rank)
  b = jnp.asarray(lora_b, jnp.float32).reshape(*lead, rank, -1)
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST).reshape(tuple(kernel_shape))


def fuse(params: Mapping[str, Any], scale: float) -> dict:
  """Params with every adapter merged into its kernel (kernel + scale * A @ B) and removed.

  The result is a plain tree of the wrapped module (run it without LoraModel). Kernels keep
  their dtype (a bfloat16 base stays bfloat16; the sum is formed in float32).
  """
  base, adapters = split_adapters(params)
  out = jax.tree.map(lambda x: x, base)  # a copy of the dict structure; leaves shared
  for path in adapter_paths(adapters):
    pair = _get(adapters, path)
    module = _get(out, path)
    kernel = module["kernel"]
    merged = jnp.asarray(kernel, jnp.float32) + scale * delta(kernel.shape, pair[LORA_A], pair[LORA_B])
    _set(out, path + ("kernel",), merged.astype(kernel.dtype))
  return out


def combine(loras: Sequence[tuple[Mapping[str, Any], float]]) -> dict:
  """One adapter tree equal to the sum of several: [(adapters_i, scale_i)] -> adapters with
  lora_A = concat_i A_i and lora_B = concat_i scale_i * B_i along the rank, per module (a module
  only some LoRAs adapt gets theirs). Run it with LoraModel(scale=1.0):
  A_cat @ B_cat = sum_i scale_i * A_i @ B_i exactly (up to float rounding).
  """
  out: dict = {}
  paths = []
  for adapters, _ in loras:
    paths += [p for p in adapter_paths(adapters) if p not in paths]
  for path in paths:
    a_parts, b_parts = [], []
    for adapters, scale in loras:
      try:
        pair = _get(adapters, path)
      except KeyError:
        continue
      a, b = jnp.asarray(pair[LORA_A]), jnp.asarray(pair[LORA_B])
      a_parts.append(a)
      b_parts.append((b.astype(jnp.float32) * scale).astype(b.dtype))
    rank_axis_b = 1 if path[0] == "blocks" else 0  # stacked layers (nn.scan) lead lora_B's dims
    _set(out, path + (LORA_A,), jnp.concatenate(a_parts, axis=-1))
    _set(out, path + (LORA_B,), jnp.concatenate(b_parts, axis=rank_axis_b))
  return out


def count(adapters: Any) -> int:
  """Number of adapter parameters."""
  leaves = jax.tree.leaves(adapters, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return sum(int(np.prod(getattr(x, "value", x).shape)) for x in leaves)
