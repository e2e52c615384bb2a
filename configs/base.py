"""Every config field of sora_jax, documented once.

Variant configs (configs/vae/*.py, configs/dit/*.py, configs/image/*.py) start from
`base.get_config()` and override a few fields. Not run directly; for example:

  python tools/train_vae.py --config=configs/vae/demo.py --workdir=runs/demo/vae --config.train.steps=100

Sections: data, vae, vae_loss, text, dit, lora, diffusion, train, mesh, sample, distributed.
"""

import ml_collections

# Logical axis names -> mesh axes. Parameter names (left block) are kept apart from
# activation names (right block) as in MaxText, so weights and activations can be
# sharded independently. Mesh axes: data, fsdp, context (spacetime tokens), tensor.
# A mesh axis that does not divide a dimension is dropped for that array
# (sora_jax.sharding.partitioning), so small layers stay replicated.
LOGICAL_AXIS_RULES = (
  # --- parameters ---
  ("embed", "fsdp"),  # model width of DiT / text encoder weights
  ("mlp", "tensor"),  # MLP hidden dimension
  ("heads", "tensor"),  # attention heads
  ("kv", None),  # per-head dimension
  ("layers", None),  # stacked layer axis of nn.scan
  ("vocab", None),  # token embeddings
  ("cond", None),  # conditioning inputs (timestep / text pooled / class)
  ("patch", None),  # flattened patch values (pt*ph*pw*C)
  ("conv_in", None),  # VAE conv input channels
  ("conv_out", "fsdp"),  # VAE conv output channels
  ("conv_kernel", None),  # VAE conv kernel taps
  ("norm", None),  # norm scales / biases
  # --- activations ---
  ("activation_batch", ("data", "fsdp")),
  ("activation_length", "context"),  # spacetime tokens: sequence/context parallelism
  ("activation_text_length", None),
  ("activation_embed", None),
  ("activation_heads", "tensor"),
  ("activation_kv", None),
  ("activation_mlp", "tensor"),
  ("activation_time", None),  # VAE activations [B, T, H, W, C]
  ("activation_height", None),
  ("activation_width", None),
  ("activation_channels", None),
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed: init, noise, CFG dropout, data order.
  c.vae_workdir = ""  # DiT training / sampling: the trained VAE's workdir (or a diffusers Wan 2.1 folder).
  c.init_from = ""  # DiT training: start from these weights, a diffusers Wan 2.1 folder or a DiT workdir.

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "shapes"  # "shapes" (built-in synthetic) or "video_folder" (tools/import_videos.py).
  c.data.builder_config = ""  # video_folder: the name given to import_videos.py (--name).
  c.data.data_dir = ""  # TFDS data dir; "" = $SORA_JAX_DATA or ~/sora_jax_data.
  c.data.num_frames = 17  # frames per clip; 1+4k for the causal VAE with 4x time compression.
  c.data.height = 32  # pixels
  c.data.width = 32  # pixels
  c.data.dataset_seed = 0  # shapes: generation seed (same seed -> same bytes).
  c.data.num_train = 2048  # shapes: clips per split
  c.data.num_validation = 128
  c.data.num_test = 128
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.batch_size = 8  # global batch (all processes); divisible by mesh data*fsdp.
  c.data.random_flip = False  # horizontal flip (also swaps left/right in captions).
  c.data.random_temporal_crop = False  # crop num_frames from longer stored clips at a random offset.
  c.data.worker_count = 0  # grain worker processes (0 = in-process).
  c.data.prefetch = 2  # batches prefetched on a background thread.
  c.data.latent_cache_dir = ""  # DiT: cache of VAE latents + text embeddings; "" = <workdir>/latent_cache.
  c.data.batching = "single"  # DiT: "single" (every clip num_frames x height x width) or "buckets" (below).
  # DiT, batching="buckets": the bucket table "FRAMESxHEIGHTxWIDTH=PROBABILITY:BATCH,...", e.g.
  # "17x32x32=0.5:0,1x32x32=0.5:0" (configs write it as a dict {"17x32x32": (0.5, 0)} through
  # sora_jax.data.buckets.format_table); each batch is one size drawn with its probability; BATCH 0 =
  # data.batch_size scaled by tokens against num_frames x height x width. Clips of other sizes are skipped.
  c.data.buckets = ""

  # ---------------------------------------------------------------- VAE
  c.vae = ml_collections.ConfigDict()
  c.vae.architecture = "causal_vae"  # "causal_vae" (ours, models/vae.py) or "wan2.1" (models/wan/vae.py).
  c.vae.temporal_factor = 4  # 1, 2 or 4; clips of 1+tf*k frames -> 1+k latent frames.
  c.vae.spatial_factor = 8  # 4, 8 or 16.
  c.vae.patch_size = (1, 1, 1)  # (pt, ph, pw) causal time/space-to-depth at input and output; counts in the factors.
  c.vae.latent_channels = 16
  c.vae.base_channels = 64
  c.vae.channel_multipliers = (1, 2, 4, 4)  # one per resolution level (log2(spatial_factor)+1 levels).
  c.vae.num_res_blocks = 2  # residual blocks per level.
  c.vae.decoder_channel_multipliers = ()  # the decoder's widths per level (() = channel_multipliers).
  c.vae.encoder_time_kernels = ()  # time extent of the encoder's convs per level: 3 (causal 3D) or 1 (per-frame 2D;
  # a time patchify already puts each latent frame's pixel frames in its channels,
  # but 3D convs make each latent carry earlier frames' features); () = 3 everywhere.
  c.vae.decoder_time_kernels = ()  # time extent of the decoder's convs per level: 3 (causal 3D) or 1 (per-frame 2D,
  # 3x cheaper; time is then mixed at the coarser levels); () = 3 everywhere.
  c.vae.mid_attention = True  # spatial self-attention in the middle block.
  c.vae.norm = "rms"  # "rms" (per-position RMS norm, as Wan 2.1) or "none" (small CPU configs learn faster).
  c.vae.dtype = "float32"  # compute dtype: "float32", "bfloat16" or "auto" (bf16 iff native bf16 dots; hardware.py).
  c.vae.remat = False  # rematerialise residual blocks in the backward pass.
  c.vae.temporal_downsample = ()  # wan2.1: which of the downsamplings also halve time, e.g. (False, True, True).
  c.vae.decoder_base_channels = 0  # wan2.1: the decoder's base width (0 = base_channels).
  c.vae.latents_mean = ()  # wan2.1: the released per-channel latent mean / std (ours compute theirs after training).
  c.vae.latents_std = ()
  c.vae.encode_chunk_frames = 0  # chunked causal encode: latent frames per chunk (0 = whole clip).
  c.vae.tile_size = 0  # spatial tiling for decode/encode in pixels (0 = off).
  c.vae.tile_overlap = 0.25  # fraction of a tile blended with its neighbour.

  c.vae_loss = ml_collections.ConfigDict()
  c.vae_loss.l1_weight = 1.0
  c.vae_loss.l2_weight = 0.0
  c.vae_loss.kl_weight = 1e-6
  c.vae_loss.gan_weight = 0.0  # hinge GAN with a 3D patch discriminator; 0 = off.
  c.vae_loss.gan_start_step = 10_000
  c.vae_loss.disc_channels = 32
  c.vae_loss.latent_stats_batches = 16  # batches used to compute per-channel latent mean/std after training.

  # ---------------------------------------------------------------- text encoder
  c.text = ml_collections.ConfigDict()
  c.text.encoder = "small"  # "small" (trainable, byte-level), "minilm" (frozen all-MiniLM-L6-v2) or "umt5" (frozen).
  c.text.pretrained = ""  # "umt5": a diffusers Wan 2.1 folder (text_encoder/ + tokenizer/) or a umT5 folder.
  c.text.max_length = 32  # tokens; longer prompts are truncated with a warning.
  c.text.tokenizer = "byte"  # small encoder: "byte" (UTF-8 bytes) or "word" (hashed words, ~6x fewer tokens).
  c.text.width = 128  # small encoder width.
  c.text.depth = 2  # small encoder layers.
  c.text.num_heads = 4  # small encoder heads.
  c.text.dtype = "float32"  # compute dtype of the encoder ("float32" or "bfloat16"); params stay float32.

  # ---------------------------------------------------------------- DiT
  c.dit = ml_collections.ConfigDict()
  c.dit.architecture = "dit"  # "dit" (ours, models/dit.py) or "wan2.1" (diffusers' WanTransformer3DModel).
  c.dit.variant = ""  # a name from sora_jax.models.variants (e.g. "DiT-XL/2", "video-tiny"); a config
  # file calls variants.apply_variant(c.dit) to copy its sizes into the fields
  # below (so --config.dit.* overrides still win); "" = use the fields as given.
  c.dit.conditioning = "text"  # "text" (cross-attention + pooled text) or "class" (label embedding).
  c.dit.num_classes = 1000  # class mode; an extra null class is added for CFG.
  c.dit.patch_size = (1, 2, 2)  # (pt, ph, pw) over latent frames / height / width.
  c.dit.hidden_size = 384
  c.dit.depth = 12
  c.dit.num_heads = 6
  c.dit.mlp_dim = 0  # 0 = 4 * hidden_size.
  c.dit.pos_embedding = "rope3d"  # "rope3d" (video) or "sincos2d" (DiT-paper image mode).
  c.dit.abs_pos_embedding = "none"  # rope3d only: also add fixed 3D sin-cos positions to the tokens ("sincos3d"),
  # so each token knows its absolute place (layout), not only offsets.
  c.dit.qk_norm = True  # RMSNorm on queries and keys.
  c.dit.learn_sigma = False  # DDPM: also predict the variance (DiT paper: True).
  c.dit.modulation = (
    "per_block"  # adaLN: "per_block" (DiT: own Linear per block) or "shared" (Wan: one Linear + per-block offsets).
  )
  c.dit.attention_impl = (
    "xla"  # "xla" (einsum on CPU, jax.nn on GPU/TPU), "einsum", "jax_nn", "cudnn" (GPU), or "chunked" (query-chunked).
  )
  c.dit.query_chunk_size = 1024  # "chunked": queries per chunk.
  c.dit.scan_layers = True  # one compiled block under nn.scan, params stacked on a "layers" axis.
  c.dit.remat_policy = "none"  # "none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable".
  c.dit.dtype = "float32"  # compute dtype; "bfloat16" keeps f32 params/optimizer, f32 accumulation; "auto" =
  # bfloat16 only where the hardware has native bf16 dot products (sora_jax/hardware.py), else float32.
  c.dit.fused_ops = True  # LayerNorm+modulation, GELU and bf16 matmuls with hand-written backward passes
  # (sora_jax/models/fused.py; equal to the op-by-op form to float32 rounding). False = op by op (A/B).

  # ---------------------------------------------------------------- LoRA (sora_jax/models/lora.py)
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # > 0: train only low-rank adapters on the DiT in config.init_from (frozen base); 0 = off.
  c.lora.alpha = 0.0  # the adapters' output is scaled by alpha / rank; 0 = alpha = rank (scale 1).
  c.lora.dropout = 0.0  # dropout on the adapters' input while training.
  # Projections that get adapters: "attention" (self + cross: query, key, value, out), "mlp" (fc1, fc2),
  # "self_attention", "cross_attention", "query", "key", "value", "out", "fc1", "fc2" or e.g. "self_attention.query".
  c.lora.targets = "attention,mlp"
  c.lora.compute = "low_rank"  # "low_rank": + (x @ A) @ B (never forms A @ B; big models) or "merged":
  # x @ (W + A @ B) (one matmul; faster for small models on CPU). Same outputs.
  c.lora.base_dtype = "float32"  # the frozen base's weights: "float32" or "bfloat16" (half the memory).

  # ---------------------------------------------------------------- diffusion
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.kind = "flow"  # "flow" (rectified flow, velocity target) or "ddpm".
  c.diffusion.t_sampling = "logit_normal"  # "logit_normal" or "uniform".
  c.diffusion.logit_mean = 0.0
  c.diffusion.logit_std = 1.0
  c.diffusion.shift = 0.0  # timestep shift; 0 = automatic from the token count (SD3/Wan style).
  c.diffusion.base_shift_tokens = 256  # auto shift: shift=1 at this many tokens ...
  c.diffusion.max_shift_tokens = 4096  # ... and shift=max_shift at this many.
  c.diffusion.max_shift = 3.0
  c.diffusion.flow_prediction = (
    "velocity"  # flow: what the network outputs, "velocity" or "x0" (v derived as (x_t - x0) / t).
  )
  c.diffusion.flow_x0_min_t = (
    0.05  # flow + "x0": t is floored at this in v = (x_t - x0) / t (bounds the low-noise loss).
  )
  c.diffusion.loss_weighting = "none"  # "none" or "min_snr".
  c.diffusion.min_snr_gamma = 5.0  # "min_snr": clamp of the signal-to-noise ratio (Hang et al. 2023).
  c.diffusion.ddpm_schedule = "linear"  # "linear" or "cosine".
  c.diffusion.ddpm_prediction = "epsilon"  # "epsilon" or "v".
  c.diffusion.num_timesteps = 1000
  c.diffusion.learn_sigma_loss = (
    "hybrid"  # DDPM + dit.learn_sigma: "hybrid" (MSE + VLB, trains the variance; ADM/DiT) or "mse" (mean only).
  )
  c.diffusion.cfg_dropout = 0.1  # probability of training with the null condition.

  # ---------------------------------------------------------------- training
  c.train = ml_collections.ConfigDict()
  c.train.steps = 10_000
  c.train.max_minutes = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit.
  c.train.learning_rate = 1e-4
  c.train.lr_schedule = "cosine"  # "cosine" or "constant" (after warmup).
  c.train.warmup_steps = 500
  c.train.min_lr_ratio = 0.1  # cosine floor as a fraction of learning_rate.
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.grad_clip = 1.0  # global-norm clip; 0 = off.
  c.train.grad_accum_steps = 1  # micro-batches per optimizer step.
  c.train.fused_optimizer = True  # clip + AdamW as one elementwise update per tensor (training/optimizer.py;
  # same state and result as the optax chain); False = the optax chain (A/B).
  c.train.ema_decay = 0.999  # DiT EMA of params; 0 = off.
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.eval_batches = 4
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.nonfinite = "skip"  # a NaN/Inf loss or gradient: "skip" the update (counted, logged) or "stop" at once.
  c.train.max_nonfinite_in_a_row = 20  # "skip": stop with a clear error after this many skipped steps in a row.
  c.train.sample_every = 0  # 0 = only at the end.
  # Prompting with images and videos: per example, which latent frames are given (clean, from the clip's
  # own cached latents; the loss counts the others). Probabilities of the types (normalised;
  # sora_jax/training/frame_conditioning.py): none = text-to-video, first_frame = animate an image,
  # first_k / last_k = k ~ U{1, T'-1} first / last latent frames (extend forwards / backwards),
  # first_last = first and last latent frames (connect, loop). Needs diffusion.kind="flow".
  c.train.conditioning = ml_collections.ConfigDict()
  c.train.conditioning.none = 1.0
  c.train.conditioning.first_frame = 0.0
  c.train.conditioning.first_k = 0.0
  c.train.conditioning.last_k = 0.0
  c.train.conditioning.first_last = 0.0

  # ---------------------------------------------------------------- mesh
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1, 1)  # (data, fsdp, context, tensor); -1 = the rest of the devices.
  c.mesh.dcn_shape = (1, 1, 1, 1)  # multi-slice TPU: the part of each axis that crosses slices.
  c.mesh.logical_axis_rules = LOGICAL_AXIS_RULES

  # ---------------------------------------------------------------- sampling
  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = "euler"  # "euler", "heun", "unipc" (flow); "ddim", "dpmpp_2m" (both); "ddpm" (DDPM, ancestral).
  c.sample.num_steps = 30
  c.sample.guidance_scale = 4.0
  c.sample.negative_prompt = ""
  # Sampling that does less work (sora_jax/diffusion/block_cache.py); both off by default.
  c.sample.cache = ml_collections.ConfigDict()
  c.sample.cache.threshold = 0.0  # First-Block-Cache: reuse blocks 1..L-1's residual while the first block's
  # residual changed less than this (relative L1) since the last full call; 0 = off (the plain sampler).
  c.sample.cache.warmup_steps = 2  # model calls at the start that always run every block.
  c.sample.cache.max_cached = 3  # at most this many cached calls in a row.
  c.sample.cfg_window = ()  # (lo, hi): classifier-free guidance only while the noise level t is in [lo, hi]
  # (t = 1 pure noise, 0 clean); the conditional branch alone elsewhere (half the work); () = every step.
  c.sample.prompts = (
    "a red circle moving left",
    "a blue square moving up",
    "a green triangle staying still",
    "a yellow circle moving right",
  )

  # ---------------------------------------------------------------- multi-host
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # "host:port"; "" = auto-detect (TPU pod, SLURM) or single process.
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  # "auto" (start if SLURM/MPI/TPU-pod env vars say >1 process), "on" (always: JAX's cluster detection), "off".
  c.distributed.mode = "auto"
  return c
