"""TrainState: everything a training run updates, as one pytree (checkpointed as a whole).

    step        int32 []    optimizer steps taken (micro-batch steps with grad accumulation)
    params      pytree      float32 master parameters
    opt_state   pytree      optax state (float32), sharded like params
    ema_params  pytree | None   exponential moving average of params (None = EMA off)

`create_train_state` accepts parameters still wrapped in `nn.LogicallyPartitioned`
boxes (straight from `model.init`); the optimizer state and EMA inherit those boxes,
so `sora_jax.sharding.partitioning.init_sharded_state` shards all three alike.

The EMA uses a warm-up (as in diffusers / timm): the decay at step s is
min(ema_decay, (1 + s) / (10 + s)), so a short run's EMA is not dominated by the
random initialisation.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Step, params, optimizer state and (optional) EMA params; a pytree."""

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None

  def apply_gradients(self, grads: Any, tx: optax.GradientTransformation, ema_decay: float = 0.0) -> TrainState:
    """One optimizer update: returns the new state (step + 1, params, opt_state, EMA).

    Args:
      grads: same structure as params.
      tx: the optimizer `params`/`opt_state` were made with (`make_optimizer`).
      ema_decay: the EMA decay (e.g. 0.999); ignored when `ema_params` is None.
    """
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema_params = self.ema_params
    if ema_params is not None:
      ema_params = ema_update(ema_params, params, ema_decay, self.step)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)


def ema_decay_at(step: jax.Array, ema_decay: float) -> jax.Array:
  """min(ema_decay, (1 + step) / (10 + step)): the warmed-up decay at `step`."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, ema_decay: float, step: jax.Array) -> Any:
  """ema <- d * ema + (1 - d) * params with d = ema_decay_at(step, ema_decay), in float32."""
  d = ema_decay_at(step, ema_decay)
  return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema_params, params)


def create_train_state(params: Any, tx: optax.GradientTransformation, ema: bool = True) -> TrainState:
  """A fresh TrainState at step 0 (params may be logically boxed; the boxes are kept).

  Args:
    params: the model parameters (e.g. `model.init(rng, ...)["params"]`).
    tx: from `make_optimizer(config.train)`.
    ema: keep an EMA copy of the params (DiT); False for the VAE.
  """
  ema_params = jax.tree.map(jnp.copy, params) if ema else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=ema_params)


def inference_params_key(ema_kept: bool, use_ema: bool = True) -> str:
  """Which params a trained run is evaluated and sampled with: "ema_params" when the run kept an
  EMA (they sample better) and `use_ema`, else "params". The one rule restores and training share."""
  return "ema_params" if (ema_kept and use_ema) else "params"


def inference_params(state: TrainState, use_ema: bool = True) -> Any:
  """The params to evaluate / sample `state` with (`inference_params_key`)."""
  return getattr(state, inference_params_key(state.ema_params is not None, use_ema))
