# config/train_tiny.py with GPT-2's recipe (learned positions, LayerNorm, GELU, tied head, AdamW,
# cosine): trains on CPU in 2 min 20 s (2 cores, docs/benchmarks.md). 4 layers, 4 heads, n_embd 128, context 128:
# 7.2M parameters (6.4M of them the GPT-2 token embedding), 1,024 tokens per step
# (8 sequences x 128 tokens), 0.78 GiB peak RSS on CPU (docs/benchmarks.md, 2026-12-01).
out_dir = "out-tiny-gpt2"
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

learning_rate = 2e-3
max_iters = 200
warmup_iters = 20
min_lr = 2e-4

device = "cpu"
compile = False
