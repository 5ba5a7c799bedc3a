import pytest
import torch

from clplatform.backbones import Backbone, build_glyph_vit, load_weights
from clplatform.errors import UserError
from clplatform import create_backbone


def test_vit_glyphs_is_a_timm_vision_transformer_with_conv_stem():
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    model = build_glyph_vit()
    assert isinstance(model, VisionTransformer) and isinstance(model.patch_embed, HybridEmbed)
    assert model.patch_embed.num_patches == 16 and len(model.blocks) == 6
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 96)


def test_pretrained_weights_load_and_differ_from_random(pretrained_backbone):
    path, accuracy = pretrained_backbone
    assert accuracy > 0.7  # on held-out glyphs-pretrain images
    pre = create_backbone("vit-glyphs")
    rand = create_backbone("vit-glyphs", pretrained=False)
    x = torch.rand(4, 1, 32, 32)
    pre.eval(), rand.eval()
    assert not torch.allclose(pre(x), rand(x))
    again = create_backbone("vit-glyphs", weights=str(path))
    again.eval()
    assert torch.equal(pre(x), again(x))


def test_backbone_adapts_channels_and_size():
    bb = Backbone(build_glyph_vit(), name="t", in_chans=1, img_size=32, mean=(0.5,), std=(0.5,))
    bb.eval()
    rgb_small = torch.rand(3, 3, 16, 16)
    assert bb(rgb_small).shape == (3, 96)
    gray = rgb_small.mean(1, keepdim=True)
    expected = bb(torch.nn.functional.interpolate(gray, size=(32, 32), mode="bilinear"))
    assert torch.allclose(bb(rgb_small), expected, atol=1e-5)


def test_conv_inputs_are_channels_last_on_cpu_and_weights_stay_contiguous():
    """Channels-last inputs speed up oneDNN convolutions; the result is the same, and the
    parameters and their gradients keep the layout code like A-GEM flattens with .view."""
    torch.manual_seed(0)
    bb = Backbone(build_glyph_vit(), name="t", in_chans=1, img_size=32, mean=(0.5,), std=(0.5,))
    x = torch.rand(4, 1, 32, 32)
    assert bb.channels_last
    assert bb.prepare(x).is_contiguous(memory_format=torch.channels_last)
    bb.eval()
    plain = bb.model((x - 0.5) / 0.5)  # the timm model on an ordinary (NCHW) tensor
    assert torch.allclose(bb(x), plain, atol=1e-5)
    bb.train()
    bb(x).sum().backward()
    for p in bb.parameters():
        assert p.is_contiguous() and p.grad.is_contiguous()
        p.grad.view(-1)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 8))
    mlp.num_features = 8
    linear_only = Backbone(mlp, name="mlp", in_chans=1, img_size=32, mean=(0.5,), std=(0.5,))
    assert not linear_only.channels_last


def test_timm_backbone_from_a_local_weights_file(tmp_path):
    import timm
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                               img_size=32)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)  # a checkpoint with a classifier head
    bb = create_backbone("timm", model_name="vit_tiny_patch16_224", weights=str(path),
                         img_size=32)
    assert bb.in_chans == 3 and bb.img_size == 32 and bb.num_features == 192
    # the weights are the file's (head dropped): features equal the source's pre-logits
    x = torch.rand(2, 1, 32, 32)
    bb.eval(), source.eval()
    assert torch.allclose(bb(x), source.forward_head(source.forward_features(bb.prepare(x)),
                                                     pre_logits=True), atol=1e-5)


def test_bad_weights_files_are_user_errors(tmp_path):
    model = build_glyph_vit()
    with pytest.raises(UserError, match="not found"):
        load_weights(model, tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="cannot read backbone weights .*corrupt.pt"):
        load_weights(model, corrupt)
    other = tmp_path / "other.pt"
    torch.save({"blocks.0.norm1.weight": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="do not fit the model"):
        load_weights(model, other)
    with pytest.raises(UserError, match="unknown timm model"):
        create_backbone("timm", model_name="no_such_model_xyz", weights=str(other))
