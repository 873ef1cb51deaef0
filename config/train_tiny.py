# A tiny GPT with the modern recipe of config/train_fineweb.py (the same options) that trains on CPU in
# minutes (docs/benchmarks.md):
# a smoke test of the whole pipeline, and the config the README's offline quickstart uses.
# config/train_tiny_gpt2.py is the same shape with GPT-2's recipe. 4 layers, 4 heads, n_embd 128,
# context 128: 26.6M parameters (6.4M token embedding + 6.4M output head + 12.9M in 2 value-embedding
# tables + 0.85M in the blocks),
# 1,024 tokens per step (8 sequences x 128 tokens).
out_dir = "out-tiny"
dataset = "fineweb"
eval_interval = 50
eval_iters = 10
log_interval = 10

batch_size = 8
block_size = 128
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
mlp = "swiglu"
tie_embeddings = False
zero_init_proj = True
bias = False
value_embeds = 2         # value-embedding tables: layers 0, 1 and 2, 3 share them (as measured in docs/benchmarks.md)
doc_causal = True        # attention stays inside each document (end-of-text tokens separate them; modded-nanogpt)
attn_window = 64         # the short-window layers see the last 64 tokens: half the context (nanochat's ratio)
window_pattern = "SSSL"  # short, short, short, long, repeated over the layers; the last layer long (nanochat)
window_start = 16        # the short window grows from 16 tokens to attn_window over window_warmup_iters

optimizer = "muon"
learning_rate = 0.02     # Muon; the AdamW rates are stated at n_embd=768 and scaled by sqrt(768/128)
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
warmup_iters = 20
max_iters = 200
min_lr = 0.0
window_warmup_iters = max_iters  # the window grows over the whole run: counted in steps, so a --max_iters on the
                                 # command line does not move it and --time_budget does not shorten it; pass
                                 # --window_warmup_iters too (0 = the full window from the start)

device = "cpu"
compile = False
