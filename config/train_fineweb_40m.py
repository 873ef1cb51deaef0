# A 41M-parameter GPT on FineWeb: GPT-2 small's depth at half its width. A run of this shape was
# reported to reach val loss 4.17 after 6,000 steps at 524k tokens/step; that number has not been
# reproduced by this project yet (no GPU run recorded in docs/benchmarks.md).
#   model: 12 layers, 6 heads (head size 64), n_embd 384, context 1024: 41.0M parameters
#          (19.3M token embedding shared with the output head, 0.4M positions, 21.3M in the blocks)
#   batch: 524,288 tokens per update = 8 sequences x 1024 tokens x 64 micro-steps on one GPU
#   memory: an estimate, not yet measured on a GPU: ~0.7 GB weights, grads and AdamW, ~1.3 GB
#          activations, ~4.1 GB logits and loss at batch_size=8: about 6 GB; fits a 12 GB card.
#   tokens: 6,000 updates = 3.1B tokens.
out_dir = "out-fineweb-40m"
dataset = "fineweb"
eval_interval = 500
eval_iters = 40
log_interval = 10

batch_size = 8
block_size = 1024
total_batch_size = 524288

n_layer = 12
n_head = 6
n_embd = 384
dropout = 0.0

learning_rate = 1.5e-3
max_iters = 6000
warmup_iters = 300
min_lr = 1.5e-4
weight_decay = 0.1
