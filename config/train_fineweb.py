# GPT-2 small's shape on FineWeb with the modern recipe: the first run on one 12 GB GPU (RTX 4070),
# scaling to 8 GPUs unchanged. Rotary positions, RMSNorm, QK-norm, SwiGLU MLP, untied output head,
# zero-initialised residual projections, no biases, value embeddings (modded-nanogpt); Muon with Polar
# Express coefficients and NorMuon for the block matrices, AdamW for the rest; warmup, constant learning
# rate, then a linear cooldown (WSD). Attention stays inside each document, with a sliding window in
# three layers of four (FlexAttention on a GPU). The record line's options that won on CPU are on; those
# that did not are off (docs/benchmarks.md, "The record line"). Value embeddings are not a transformers
# architecture, so export.py writes the model with its own modeling code (trust_remote_code=True).
#   model: 12 layers, 12 heads, n_embd 768, context 1024: 278.1M parameters
#          (38.6M token embedding + 38.6M output head + 115.9M in 3 value-embedding tables + 85.0M in the
#          blocks; the head and the tables add parameters, not compute: FLOPs per token equal GPT-2 124M's)
#   batch: 524,288 tokens per update = micro-batch x 1024 tokens x micro-steps, e.g. 8 x 1024 x 64 on
#          one GPU; batch_size="auto" picks the largest micro-batch that fits and derives the micro-steps
#          (under torchrun with 8 GPUs: same global batch, same curve)
#   memory: an estimate, not yet measured on a GPU: ~2.3 GB for weights, gradients and optimizer state
#          (fp32 weights and grads, AdamW's two moments for the embedding and head, Muon's one for the
#          blocks) plus 1.85 GB for the value-embedding tables (16 bytes per parameter with AdamW: 0.62 GB
#          per table; value_embeds=1 or 2 saves 0.62 GB each), ~2.6 GB of activations (34*B*T*C bytes per layer, Korthikanti et al. 2022), ~0.6 GB
#          for the loss (1,024-row chunks of fp32 logits): about 7.4 GB at batch_size=8.
#          Out of memory with a fixed batch_size? Lower it, or --activation_checkpointing=True.
#   tokens: 5,000 updates = 2.6B tokens; python bench.py config/train_fineweb.py measures your speed.
out_dir = "out-fineweb"
dataset = "fineweb"
eval_interval = 500
eval_iters = 40
val_batch_size = 8       # the val set: 40 x 8 x 1024 = 328k tokens, the same whatever batch_size=auto picks
log_interval = 10

batch_size = "auto"      # the largest micro-batch that fits this GPU (probed at start, stored in the checkpoint)
block_size = 1024
total_batch_size = 524288

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
mlp = "swiglu"
tie_embeddings = False
logit_softcap = 0.0      # off: its effect on the loss is not measured here (the chunked loss applies it)
zero_init_proj = True
bias = False
value_embeds = 3         # value-embedding tables for the first and last 3 layers (modded-nanogpt's count at 12 layers)
doc_causal = True        # attention stays inside each document (end-of-text tokens separate them; modded-nanogpt)
attn_window = 512        # the short-window layers see the last 512 tokens: half the context (nanochat's ratio)
window_pattern = "SSSL"  # short, short, short, long, repeated over the layers; the last layer long (nanochat)
window_start = 128       # the short window grows from 128 tokens to attn_window over window_warmup_iters

optimizer = "muon"
learning_rate = 0.02     # Muon, the block matrices (nanochat's; per-matrix shape scaling is Muon's own)
embedding_lr = 0.3       # AdamW rates, stated at n_embd=768 and scaled by sqrt(768/n_embd)
head_lr = 0.004
scalar_lr = 0.02
weight_decay = 0.0
beta1 = 0.8
beta2 = 0.95
muon_ns = "polar_express"   # Polar Express's Newton-Schulz coefficients (Amsel et al. 2025)
muon_normuon = True        # NorMuon's per-neuron normalisation (Li et al. 2025)
lr_schedule = "wsd"
cooldown_frac = 0.4
warmup_iters = 100
max_iters = 5000
min_lr = 0.0
window_warmup_iters = max_iters  # the window grows over the whole run: counted in steps, so a --max_iters on the
                                 # command line does not move it and --time_budget does not shorten it; pass
                                 # --window_warmup_iters too (0 = the full window from the start)
