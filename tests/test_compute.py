"""FLOP counting of attention: every scaled-dot-product-attention kernel is counted."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from clplatform.compute import FlopCount, flop_formula

ATTENTION_WORDS = ("attention", "scaled_dot")


def _set_fused_attention(model: torch.nn.Module, fused: bool) -> None:
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            switched += 1
    assert switched > 0


def _count(model, x, fused: bool, train: bool) -> FlopCount:
    _set_fused_attention(model, fused)
    with FlopCount() as counter:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter


def test_fused_attention_of_a_224px_vit_is_counted_like_the_explicit_one():
    """vit_tiny_patch16_224 (random init): timm's fused attention (one SDPA kernel) against
    its explicit q @ k^T, softmax, @ v (two bmm's per block)."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    x = torch.rand(1, 3, 224, 224)
    depth, heads, tokens, head_dim = 12, 3, 197, 64

    fused, explicit = (_count(model, x, fused, train=False) for fused in (True, False))
    assert fused.total == explicit.total == 2_507_366_400  # 2.149 G with attention missed
    # the fused path runs no operator without a formula that the explicit one counts
    assert fused.uncounted <= explicit.uncounted, fused.uncounted - explicit.uncounted

    fused, explicit = (_count(model, x, fused, train=True) for fused in (True, False))
    # forward + backward; the fused backward recomputes the scores q @ k^T once per block
    recompute = depth * 2 * heads * tokens * tokens * head_dim
    assert fused.total - explicit.total == recompute
    assert not [op for op in fused.uncounted
                if any(w in str(op) for w in ATTENTION_WORDS)], fused.uncounted


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION",
                                     "CUDNN_ATTENTION", "OVERRIDEABLE", "MATH"])
def test_every_sdpa_backend_is_counted_forward_and_backward(backend):
    """F.scaled_dot_product_attention under each backend this machine can run (CPU: the
    CPU flash kernel and the math path; CUDA: flash, memory-efficient, cuDNN too)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)), FlopCount() as forward:
            out = F.scaled_dot_product_attention(q, k, v)
    except RuntimeError as exc:  # no kernel of that backend for these inputs/device
        pytest.skip(f"{backend} on {device}: {exc}".splitlines()[0])
    with FlopCount() as backward:
        out.backward(torch.ones_like(out))
    assert forward.total == sdpa_flop_count(q.shape, k.shape, v.shape) > 0
    fused_backward = sdpa_backward_flop_count(out.shape, q.shape, k.shape, v.shape)
    scores = sdpa_flop_count(q.shape, k.shape, v.shape) // 2
    # the math path is explicit products; a fused kernel recomputes the scores
    expected = fused_backward - scores if backend == "MATH" else fused_backward
    assert backward.total == expected


def test_every_sdpa_operator_of_this_torch_has_a_formula_or_decomposes():
    """A torch upgrade that adds an SDPA kernel without a formula fails here, not silently."""
    from clplatform.compute import _decomposes
    missing = []
    for name in torch._C._dispatch_get_all_op_names():
        namespace, _, rest = name.partition("::")
        packet_name, _, overload = rest.partition(".")
        if namespace != "aten" or "scaled_dot_product" not in packet_name:
            continue
        op = getattr(getattr(torch.ops.aten, packet_name), overload or "default")
        if flop_formula(op) is None and not _decomposes(op):
            missing.append(name)
    assert not missing


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_fused_inference_paths_of_torch_attention_modules_count_like_the_slow_ones():
    """nn.MultiheadAttention and nn.TransformerEncoderLayer run one fused kernel in
    inference (no grad, eval); it must count what their step-by-step path counts."""
    from torch import nn
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()
    x = torch.randn(2, 10, 64)
    for module, call in ((attention, lambda: attention(x, x, x, need_weights=False)),
                         (layer, lambda: layer(x))):
        with torch.no_grad(), FlopCount() as fused:
            call()
        with FlopCount() as slow:  # gradients enabled: the step-by-step path
            call()
        assert fused.total == slow.total > 0, type(module).__name__
        assert not fused.uncounted & {torch.ops.aten._native_multi_head_attention.default,
                                      torch.ops.aten._transformer_encoder_layer_fwd.default}
    # 2-layer encoder with padding: the fast path drops the padded tokens (nested tensors);
    # its count is that of each sequence alone, without padding
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    lengths = [10, 6]
    padding = torch.arange(10)[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad(), FlopCount() as fused:
        encoder(x, src_key_padding_mask=padding)
    per_sequence = 0
    for i, n in enumerate(lengths):
        with FlopCount() as slow:
            encoder(x[i:i + 1, :n])
        per_sequence += slow.total
    assert fused.total == per_sequence
