# GPT-2 small (124M) on FineWeb as OpenAI built it and nanoGPT / llm.c train it: learned positions,
# LayerNorm, GELU, tied head, AdamW with a cosine schedule. The reproduction and interop config: its
# checkpoints load as GPT-2 (init_from=gpt2 fine-tunes OpenAI's weights with it) and export as
# GPT2LMHeadModel. config/train_fineweb.py trains the faster modern recipe.
# Sized for one 12 GB GPU (RTX 4070) and scaling to 8 GPUs unchanged.
#   model: 12 layers, 12 heads, n_embd 768, context 1024: 124.5M parameters
#          (38.6M token embedding shared with the output head, 0.8M positions, 85.1M in the blocks)
#   batch: 524,288 tokens per update = 8 sequences x 1024 tokens x 64 micro-steps on one GPU
#          (x 8 micro-steps per GPU under torchrun with 8 GPUs: same global batch, same curve)
#   memory: an estimate, not yet measured on a GPU: ~2.0 GB for weights, grads and AdamW (16 bytes/param),
#          ~2.6 GB of activations (34*B*T*C bytes per layer, Korthikanti et al. 2022, flash attention),
#          ~4.1 GB for the logits and loss (B*T*vocab*10 bytes): about 9 GB at batch_size=8.
#          Out of memory? Lower batch_size; the accumulation steps follow from total_batch_size.
#   tokens: 12,000 updates = 6.3B tokens; python bench.py config/train_gpt2.py measures your speed.
out_dir = "out-gpt2"
dataset = "fineweb"
eval_interval = 500
eval_iters = 40          # 40 x 8 x 1024 = 328k fixed val tokens
log_interval = 10

batch_size = 8
block_size = 1024
total_batch_size = 524288

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0

learning_rate = 6e-4
max_iters = 12000
warmup_iters = 700
min_lr = 6e-5
weight_decay = 0.1
