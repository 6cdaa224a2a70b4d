import pytest

from services.embedding.errors import WeightsError
from services.embedding.lora import LoraSettings, add_lora, adapted_modules
from services.embedding.model import create_backbone
from services.embedding.profiles import EFFICIENTNET_LITE0
from tiny_models import TINY_VIT16


def test_lora_adapts_vit_block_layers_only():
    backbone = create_backbone(TINY_VIT16)
    adapted = add_lora(backbone, TINY_VIT16, LoraSettings())
    assert len(adapted) == 2 * 4
    assert "patch_embed.proj" not in adapted
    assert "blocks.0.attn.proj" in adapted
    assert "blocks.1.mlp.fc2" in adapted


def test_lora_leaves_only_adapters_trainable():
    backbone = create_backbone(TINY_VIT16)
    add_lora(backbone, TINY_VIT16, LoraSettings(r=4))
    trainable = [name for name, parameter in backbone.named_parameters() if parameter.requires_grad]
    assert trainable
    assert all("lora_" in name for name in trainable)


def test_lora_adapts_pointwise_convolutions_of_lite():
    backbone = create_backbone(EFFICIENTNET_LITE0)
    adapted = add_lora(backbone, EFFICIENTNET_LITE0, LoraSettings())
    assert len(adapted) == 31
    assert all(name.endswith(("conv_pw", "conv_pwl")) for name in adapted)
    assert not any("conv_dw" in name for name in adapted)


def test_lora_targets_are_configurable():
    backbone = create_backbone(TINY_VIT16)
    adapted = add_lora(backbone, TINY_VIT16, LoraSettings(targets={"tiny_vit16": ("qkv",)}))
    assert adapted == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]


def test_lora_without_matching_module_is_rejected():
    backbone = create_backbone(TINY_VIT16)
    with pytest.raises(WeightsError, match="tiny_vit16"):
        add_lora(backbone, TINY_VIT16, LoraSettings(targets={"tiny_vit16": ("no_such_layer",)}))
    assert adapted_modules(backbone) == []
