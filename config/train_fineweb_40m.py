# GPT-2 small's depth at half its width on FineWeb, with the modern recipe of config/train_fineweb.py.
# A GPT-2-recipe run of this shape (tied head: 41.0M in all) was reported to reach val loss 4.17
# after 6,000 steps at 524k tokens/step; this project has not reproduced that number yet, nor measured
# this recipe at this shape on a GPU (docs/benchmarks.md). That GPT-2-recipe run is config/train_gpt2.py
# with --n_head=6 --n_embd=384 --learning_rate=1.5e-3 --min_lr=1.5e-4 --warmup_iters=300 --max_iters=6000.
#   model: 12 layers, 6 heads (head size 64), n_embd 384, context 1024: 117.8M parameters
#          (19.3M token embedding + 19.3M output head + 58.0M in 3 value-embedding tables + 21.2M in the
#          blocks; the tables add parameters, not compute)
#   batch: 524,288 tokens per update = micro-batch x 1024 tokens x micro-steps (batch_size="auto")
#   memory: an estimate, not yet measured on a GPU: ~0.8 GB weights, gradients and optimizer state
#          + 0.93 GB for the value-embedding tables with AdamW,
#          ~1.3 GB activations, ~0.6 GB for the loss at batch_size=8: about 3.6 GB; fits a 12 GB card.
#   tokens: 6,000 updates = 3.1B tokens.
out_dir = "out-fineweb-40m"
dataset = "fineweb"
eval_interval = 500
eval_iters = 40
val_batch_size = 8       # the val set: 40 x 8 x 1024 = 328k tokens, the same whatever batch_size=auto picks
log_interval = 10

batch_size = "auto"      # the largest micro-batch that fits this GPU (probed at start, stored in the checkpoint)
block_size = 1024
total_batch_size = 524288

n_layer = 12
n_head = 6
n_embd = 384
dropout = 0.0
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
mlp = "swiglu"
tie_embeddings = False
logit_softcap = 0.0
zero_init_proj = True
bias = False
value_embeds = 3         # value-embedding tables for the first and last 3 layers (modded-nanogpt's count at 12 layers)
doc_causal = True        # attention stays inside each document (end-of-text tokens separate them; modded-nanogpt)
attn_window = 512        # the short-window layers see the last 512 tokens: half the context (nanochat's ratio)
window_pattern = "SSSL"  # short, short, short, long, repeated over the layers; the last layer long (nanochat)
window_start = 128       # the short window grows from 128 tokens to attn_window over window_warmup_iters

optimizer = "muon"
learning_rate = 0.02     # Muon; the AdamW rates below are stated at n_embd=768 and scaled to 384 by sqrt(2)
embedding_lr = 0.3
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
max_iters = 6000
min_lr = 0.0
window_warmup_iters = max_iters  # the window grows over the whole run: counted in steps, so a --max_iters on the
                                 # command line does not move it and --time_budget does not shorten it; pass
                                 # --window_warmup_iters too (0 = the full window from the start)
