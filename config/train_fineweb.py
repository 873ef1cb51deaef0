# GPT-2 small's shape on FineWeb with the modern recipe: the first run on one 12 GB GPU (RTX 4070),
# scaling to 8 GPUs unchanged. Rotary positions, RMSNorm, QK-norm, SwiGLU MLP, untied output head,
# zero-initialised residual projections, no biases; Muon for the block matrices and AdamW for the rest;
# warmup, constant learning rate, then a linear cooldown (WSD). This option set is Qwen3's, so export.py
# writes a transformers Qwen3ForCausalLM (modded-nanogpt's ReLU² MLP scored no better at equal tokens). docs/benchmarks.md has the CPU
# comparison with config/train_gpt2.py (GPT-2's own recipe) behind this choice.
#   model: 12 layers, 12 heads, n_embd 768, context 1024: 162.2M parameters
#          (38.6M token embedding + 38.6M output head + 85.0M in the blocks; the untied head adds
#          parameters, not compute: FLOPs per token equal GPT-2 124M's)
#   batch: 524,288 tokens per update = micro-batch x 1024 tokens x micro-steps, e.g. 8 x 1024 x 64 on
#          one GPU; batch_size="auto" picks the largest micro-batch that fits and derives the micro-steps
#          (under torchrun with 8 GPUs: same global batch, same curve)
#   memory: an estimate, not yet measured on a GPU: ~2.3 GB for weights, gradients and optimizer state
#          (fp32 weights and grads, AdamW's two moments for the embedding and head, Muon's one for the
#          blocks), ~2.6 GB of activations (34*B*T*C bytes per layer, Korthikanti et al. 2022), ~0.6 GB
#          for the loss (1,024-row chunks of fp32 logits): about 5.5 GB at batch_size=8.
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

optimizer = "muon"
learning_rate = 0.02     # Muon, the block matrices (nanochat's; per-matrix shape scaling is Muon's own)
embedding_lr = 0.3       # AdamW rates, stated at n_embd=768 and scaled by sqrt(768/n_embd)
head_lr = 0.004
scalar_lr = 0.02
weight_decay = 0.0
beta1 = 0.8
beta2 = 0.95
lr_schedule = "wsd"
cooldown_frac = 0.4
warmup_iters = 100
max_iters = 5000
min_lr = 0.0
