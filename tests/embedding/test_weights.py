"""Strict weight loading: mismatched, missing and unconfigured weight files are rejected with a clear message."""

from __future__ import annotations

import pytest
import torch
from structlog.testing import capture_logs

from services.embedding import WeightsError, load_embedder
from services.embedding.profiles import DINOV2_VITS14_REG4, EFFICIENTNET_LITE0, GASTRONET_VITS16
from services.embedding.weights import load_branch_file, packaged_weights_path
from services.settings import ModelSettings


def packaged_lite_state() -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights_path(EFFICIENTNET_LITE0), map_location="cpu", weights_only=True)


def save(state: object, path):
    torch.save(state, path)
    return path


def test_lite_file_with_renamed_key_is_rejected(tmp_path):
    state = packaged_lite_state()
    state["_blocks.3._expand_conv.kernel"] = state.pop("_blocks.3._expand_conv.weight")
    path = save(state, tmp_path / "renamed.pth")

    with pytest.raises(WeightsError) as error:
        load_branch_file(EFFICIENTNET_LITE0, path)
    message = str(error.value)
    assert str(path) in message
    assert "Missing keys (1): blocks.2.0.conv_pw.weight" in message
    assert "_blocks.3._expand_conv.kernel" in message


def test_lite_file_with_wrong_shape_is_rejected(tmp_path):
    state = packaged_lite_state()
    state["_conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    path = save(state, tmp_path / "wrong_shape.pth")

    with pytest.raises(WeightsError) as error:
        load_branch_file(EFFICIENTNET_LITE0, path)
    message = str(error.value)
    assert "conv_head.weight (file key _conv_head.weight)" in message
    assert "expected [1280, 320, 1, 1] got [1280, 320, 3, 3]" in message


def test_lite_file_with_classifier_only_missing_loads(tmp_path):
    state = packaged_lite_state()
    del state["_fc.weight"], state["_fc.bias"]
    branch = load_branch_file(EFFICIENTNET_LITE0, save(state, tmp_path / "no_classifier.pth"))
    assert branch.kind == "file"


def test_vit_file_with_renamed_key_is_rejected(tmp_path, dinov2_state):
    state = dict(dinov2_state)
    state["blocks.0.attn.qkv.w"] = state.pop("blocks.0.attn.qkv.weight")
    path = save(state, tmp_path / "renamed_vit.pth")

    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="dinov2", dinov2_weights=path))
    message = str(error.value)
    assert "Missing keys (1): blocks.0.attn.qkv.weight" in message
    assert "Unexpected keys (1): blocks.0.attn.qkv.w" in message


def test_vit_file_with_wrong_shape_is_rejected(tmp_path, gastronet_state):
    state = dict(gastronet_state)
    state["blocks.2.mlp.fc1.weight"] = torch.zeros(1000, 384)
    path = save(state, tmp_path / "wrong_shape_vit.pth")

    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="gastronet", gastronet_weights=path))
    message = str(error.value)
    assert "blocks.2.mlp.fc1.weight expected [1536, 384] got [1000, 384]" in message


def test_patch16_weights_are_rejected_for_dinov2(vit_weight_files):
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["gastronet_timm"]))
    message = str(error.value)
    assert "Missing keys (25): blocks.0.ls1.gamma, blocks.0.ls2.gamma, blocks.1.ls1.gamma" in message
    assert "patch_embed.proj.weight expected [384, 3, 14, 14] got [384, 3, 16, 16]" in message


def test_missing_weight_file_names_path_and_setting(tmp_path):
    path = tmp_path / "absent" / "dinov2_vits14_reg4_pretrain.pth"
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="dinov2", dinov2_weights=path))
    message = str(error.value)
    assert str(path) in message
    assert "ENDODOC_MODEL__DINOV2_WEIGHTS" in message


def test_unreadable_weight_file_is_rejected(tmp_path):
    path = tmp_path / "not_a_checkpoint.pth"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="gastronet", gastronet_weights=path))
    message = str(error.value)
    assert str(path) in message
    assert "ENDODOC_MODEL__GASTRONET_WEIGHTS" in message


def test_checkpoint_without_state_dict_is_rejected(tmp_path):
    checkpoint = {"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}, "config": {"depth": 12}}
    path = save(checkpoint, tmp_path / "no_state.pth")
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="gastronet", gastronet_weights=path))
    assert "No state dict found" in str(error.value)


def test_vit_profile_without_weights_is_rejected():
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="dinov2"))
    message = str(error.value)
    assert "ENDODOC_MODEL__DINOV2_WEIGHTS" in message
    assert "ENDODOC_MODEL__HUB_DOWNLOAD=true" in message
    assert "ENDODOC_MODEL__RANDOM_WEIGHTS=true" in message


def test_gastronet_without_weights_does_not_offer_hub():
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="gastronet", hub_download=True))
    message = str(error.value)
    assert "ENDODOC_MODEL__GASTRONET_WEIGHTS" in message
    assert "HUB_DOWNLOAD" not in message


def test_random_weights_log_a_warning():
    with capture_logs() as events:
        embedder = load_embedder(ModelSettings(profile="gastronet", random_weights=True))
    warnings = [event for event in events if event["log_level"] == "warning"]
    assert embedder.model_version.startswith("gastronet-random-")
    assert len(warnings) == 1
    assert warnings[0]["event"] == "random_weights_used"
    assert warnings[0]["branch"] == "gastronet"


def test_configured_file_wins_over_random_weights(vit_weight_files):
    embedder = load_embedder(
        ModelSettings(profile="gastronet", gastronet_weights=vit_weight_files["gastronet_timm"], random_weights=True)
    )
    assert "random" not in embedder.model_version


def test_checkpoint_that_is_not_safetensors_is_rejected(tmp_path):
    checkpoint = tmp_path / "fusion.safetensors"
    checkpoint.write_bytes(b"adapters")
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="lite", checkpoint=checkpoint))
    assert str(checkpoint) in str(error.value)
    assert "ENDODOC_MODEL__CHECKPOINT" in str(error.value)


def test_missing_checkpoint_file_is_rejected(tmp_path):
    checkpoint = tmp_path / "absent.safetensors"
    with pytest.raises(WeightsError) as error:
        load_embedder(ModelSettings(profile="lite", checkpoint=checkpoint))
    assert str(checkpoint) in str(error.value)


def test_safetensors_file_loads(tmp_path, dinov2_state):
    from safetensors.torch import save_file

    path = tmp_path / "dinov2.safetensors"
    save_file({key: value.contiguous() for key, value in dinov2_state.items()}, path)
    branch = load_branch_file(DINOV2_VITS14_REG4, path)
    assert branch.sha256 is not None


def test_gastronet_branch_keeps_class_position(gastronet_state, tmp_path):
    branch = load_branch_file(GASTRONET_VITS16, save(gastronet_state, tmp_path / "gastronet.pth"))
    torch.testing.assert_close(branch.backbone.pos_embed, gastronet_state["pos_embed"])


def test_resnet50_wrapped_file_loads(tmp_path):
    from services.embedding.model import create_backbone
    from services.embedding.profiles import GASTRONET_RESNET50

    state = create_backbone(GASTRONET_RESNET50).state_dict()
    wrapped = {f"module.backbone.{key}": value for key, value in state.items()}
    wrapped["module.fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "gastronet_resnet50.pth"
    torch.save({"state_dict": wrapped}, path)
    branch = load_branch_file(GASTRONET_RESNET50, path)
    assert torch.equal(branch.backbone.state_dict()["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])


def test_resnet50_wrong_shape_is_rejected(tmp_path):
    from services.embedding.model import create_backbone
    from services.embedding.profiles import GASTRONET_RESNET50

    state = create_backbone(GASTRONET_RESNET50).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 1, 1)
    path = tmp_path / "gastronet_resnet50.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight expected \[64, 64, 1, 1\] got \[32, 64, 1, 1\]"):
        load_branch_file(GASTRONET_RESNET50, path)
