"""The logit softcap inside the chunked training loss: the loss and gradients of the plain path (softcap on
the full logits, then cross-entropy), one chunk of logits at a time, and the choice of a fused kernel."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import model
from conftest import tiny_model
from model import fused_softcapped_loss, softcapped_cross_entropy

CAP = 15.0
CHUNK = 64  # rows per chunk in these tests: several chunks at a small size


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(model, "LOSS_CHUNK_ROWS", CHUNK)


def rows(n: int = 2 * CHUNK + 30, width: int = 32, vocab: int = 512):
    """(hidden states (n, C), head weight (V, C), targets with some ignored): n spans three chunks, the last
    one partial. Weights large enough that many logits sit in tanh's curved part."""
    torch.manual_seed(0)
    x = torch.randn(n, width, requires_grad=True)
    weight = (0.6 * torch.randn(vocab, width)).requires_grad_()
    targets = torch.randint(vocab, (n,))
    targets[:50] = -1
    targets[CHUNK + 7:CHUNK + 8] = -1  # one more inside the second chunk, when there is one
    return x, weight, targets


def plain_loss(x, weight, targets):
    logits = CAP * torch.tanh(x @ weight.t() / CAP)  # the (n, V) logits, whole
    return F.cross_entropy(logits.float(), targets, ignore_index=-1)


def loss_and_grads(loss_fn, x, weight, targets, upstream: float = 1.0):
    x.grad = weight.grad = None
    loss = loss_fn(x, weight, targets)
    (upstream * loss).backward()
    return loss.detach(), x.grad.clone(), weight.grad.clone()


def test_softcapped_chunks_equal_the_plain_loss_and_gradients_in_fp32():
    x, weight, targets = rows()
    assert (CAP * torch.tanh(x @ weight.t() / CAP)).abs().max() > 0.75 * CAP  # the softcap bends these logits
    ours = lambda *a: softcapped_cross_entropy(*a, dtype=torch.float32, cap=CAP)  # noqa: E731
    want = loss_and_grads(plain_loss, x, weight, targets, upstream=3.0)  # a scaled loss (GradScaler, accumulation)
    got = loss_and_grads(ours, x, weight, targets, upstream=3.0)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    for name, g, w in zip(("loss", "x", "weight"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7, msg=name)
    assert got[1][:50].abs().max() == 0  # ignored rows get no gradient


def test_model_chunked_softcap_loss_equals_the_plain_path_under_bf16_autocast():
    # bf16 matmuls (logits and gradients rounded to 8 bits of mantissa), softcap/softmax/sums in fp32: within
    # 0.01 of the fp32 loss (ln 512 = 6.2, where bf16 values are 1/32 apart) and 2% of each gradient's norm
    m = tiny_model(vocab_size=512, logit_softcap=CAP, tie_embeddings=False).train()
    x, weight, targets = rows()
    with torch.no_grad():
        m.lm_head.weight.copy_(weight)

    def chunked(h, _, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m.chunked_cross_entropy(h, t)

    def plain(h, _, t):
        m.set_chunked_loss(False)
        loss = m.loss(h, t)[1]
        m.set_chunked_loss(True)
        return loss

    want = loss_and_grads(plain, x, m.lm_head.weight, targets)
    got = loss_and_grads(chunked, x, m.lm_head.weight, targets)
    assert got[0].dtype == torch.float32 and abs(got[0].item() - want[0].item()) < 0.01
    for g, w in zip(got[1:], want[1:]):
        assert g.dtype == torch.float32 and (g - w).norm() / w.norm() < 0.02


def test_evaluation_without_gradients_is_fp32_and_equals_the_training_loss():
    m = tiny_model(vocab_size=512, logit_softcap=CAP).train()
    x, _, targets = rows()
    trained = m.chunked_cross_entropy(x, targets)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        evaluated = m.chunked_cross_entropy(x, targets)
    assert evaluated.dtype == torch.float32
    torch.testing.assert_close(evaluated, trained.detach(), rtol=1e-6, atol=0)


class LargestTensor(TorchDispatchMode):
    """The largest number of elements any op's output holds while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_larger_than_one_chunk_of_logits():
    x, weight, targets = rows(n=4 * CHUNK, vocab=256)
    with LargestTensor() as chunked:
        softcapped_cross_entropy(x, weight, targets, torch.float32, CAP).backward()
    with LargestTensor() as plain:
        plain_loss(x, weight, targets).backward()
    assert plain.largest == x.size(0) * weight.size(0)  # the plain path builds all (n, V) logits
    assert chunked.largest == CHUNK * weight.size(0)


def test_a_second_backward_through_the_same_graph_is_refused():
    # the gradients computed in forward are scaled in place: a second pass would read scaled ones
    x, weight, targets = rows(n=40)
    loss = softcapped_cross_entropy(x, weight, targets, torch.float32, CAP)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_set_chunked_loss_keeps_chunks_with_a_softcap():
    m = tiny_model(logit_softcap=CAP)
    assert m.set_chunked_loss(True) and m.loss_kind == "softcapped, ours"  # on CPU: ours
    assert not m.set_chunked_loss(False) and m.loss_kind == "full logits"
    assert tiny_model().loss_kind == "torch's linear_cross_entropy"  # no softcap: torch's op, as before


def fake_kernel_module(monkeypatch, name: str, attribute: str, calls: list) -> None:
    """Installs a stand-in for a fused kernel's package that records its calls."""
    def kernel(x, weight, targets, **options):
        calls.append((x.dtype, weight.dtype, options))
        return softcapped_cross_entropy(x, weight, targets, x.dtype, options["softcap"])
    module = types.ModuleType(name)
    setattr(module, attribute, kernel)
    monkeypatch.setitem(sys.modules, name, module)


def test_cuda_picks_cut_cross_entropy_then_liger_kernel_then_ours(monkeypatch):
    calls = []
    fake_kernel_module(monkeypatch, "cut_cross_entropy", "linear_cross_entropy", calls)
    fake_kernel_module(monkeypatch, "liger_kernel.transformers.functional", "liger_fused_linear_cross_entropy", calls)
    assert fused_softcapped_loss("cpu", CAP)[0] == "softcapped, ours"  # Triton kernels: CUDA only
    name, loss = fused_softcapped_loss("cuda", CAP)
    assert name == "softcapped, cut-cross-entropy"
    x, weight, targets = rows(n=40)
    loss(x, weight, targets, torch.bfloat16)
    assert calls == [(torch.bfloat16, torch.bfloat16, dict(ignore_index=-1, softcap=CAP, filter_eps=None))]
    with torch.no_grad():
        loss(x, weight, targets, torch.float32)  # evaluation: ours, not the kernel
    assert len(calls) == 1

    monkeypatch.setitem(sys.modules, "cut_cross_entropy", None)  # not installed: import fails
    name, loss = fused_softcapped_loss("cuda", CAP)
    assert name == "softcapped, liger-kernel"
    loss(x, weight, targets, torch.bfloat16)
    assert calls[-1][2] == dict(ignore_index=-1, softcap=CAP, accum_dtype=torch.float32)

    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", None)
    assert fused_softcapped_loss("cuda", CAP)[0] == "softcapped, ours"


def test_the_model_takes_the_kernel_of_its_device(monkeypatch):
    monkeypatch.setattr(model, "fused_softcapped_loss", lambda device, cap: (f"kernel for {device}", None))
    m = tiny_model(logit_softcap=CAP)
    m.set_chunked_loss(True)
    assert m.loss_kind == "kernel for cpu"


@pytest.mark.slow
def test_cut_cross_entropys_torch_path_equals_ours_on_cpu():
    # cut-cross-entropy is optional (its package imports Triton); its torch.compile path runs on CPU, with the
    # full logits. Its CUDA kernel is what a CUDA run uses; this checks the softcap's meaning is the same
    cce = pytest.importorskip("cut_cross_entropy", reason="optional: pip install cut-cross-entropy")
    x, weight, targets = rows()
    ours = loss_and_grads(lambda *a: softcapped_cross_entropy(*a, dtype=torch.float32, cap=CAP), x, weight, targets)
    theirs = loss_and_grads(lambda *a: cce.linear_cross_entropy(*a, ignore_index=-1, softcap=CAP, impl="torch_compile"),
                            x, weight, targets)
    for name, got, want in zip(("loss", "x", "weight"), ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
