"""The chunked training loss in the autocast dtype agrees with fp32; evaluation stays fp32."""
import torch

from conftest import tiny_model


def head_loss_and_grads(model, x, targets, dtype):
    """The chunked loss and the gradients of its inputs (hidden states, head weight), under autocast in dtype."""
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = model.chunked_cross_entropy(x, targets)
    loss.backward()
    return loss, x.grad, model.lm_head.weight.grad.clone()


def test_bf16_chunked_loss_matches_fp32_within_bf16_rounding():
    model = tiny_model(vocab_size=4096, n_embd=64, tie_embeddings=False).train()
    torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    torch.manual_seed(0)
    x = torch.randn(4, 512, 64)  # 2,048 rows: two chunks of LOSS_CHUNK_ROWS
    targets = torch.randint(4096, (4, 512))
    targets[0, :7] = -1  # ignored positions stay ignored
    ref, ref_dx, ref_dw = head_loss_and_grads(model, x, targets, torch.float32)
    loss, dx, dw = head_loss_and_grads(model, x, targets, torch.bfloat16)
    assert loss.dtype == torch.float32 and ref.dtype == torch.float32
    # ln(4096) = 8.3: bf16 values there are 1/32 apart; the sum is rounded at each of the two chunks
    assert abs(loss.item() - ref.item()) < 0.02
    for got, want in ((dx, ref_dx), (dw, ref_dw)):  # gradients: bf16 inputs, fp32 accumulation
        assert got.dtype == torch.float32
        assert (got.float() - want).norm() / want.norm() < 0.02


def test_evaluation_loss_is_fp32_under_autocast():
    model = tiny_model().eval()
    x = torch.randint(256, (2, 32))
    with torch.no_grad():
        ref = model(x, x)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = model.transformer.ln_f(torch.randn(2, 32, 32))
            low = model.chunked_cross_entropy(h, x)
        fp32 = model.chunked_cross_entropy(h.float(), x)
    assert ref.dtype == low.dtype == torch.float32
    assert low.item() == fp32.item()  # no gradients: the head ran in fp32 despite autocast
