"""ViT profiles: strict loading of DINOv2 and GastroNet files in timm, Meta and DINO v1 layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed

from services.embedding import load_embedder
from services.settings import ModelSettings


@pytest.fixture(scope="module")
def three_images(real_images):
    return real_images[:3]


def embed_with(settings: ModelSettings, images) -> np.ndarray:
    return load_embedder(settings).embed(images)


def test_dinov2_timm_file_loads_strictly(vit_weight_files, dinov2_state, three_images):
    embedder = load_embedder(ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_timm"]))
    loaded = embedder.model.backbones[0].state_dict()
    vectors = embedder.embed(three_images)
    assert embedder.dim == 384
    assert vectors.shape == (3, 384)
    torch.testing.assert_close(loaded["blocks.11.ls2.gamma"], dinov2_state["blocks.11.ls2.gamma"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_dinov2_meta_layout_matches_timm_layout(vit_weight_files, three_images):
    timm_layout = embed_with(
        ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_timm"]), three_images
    )
    meta_layout = embed_with(
        ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_meta"]), three_images
    )
    np.testing.assert_allclose(meta_layout, timm_layout, atol=1e-5)


def test_dinov2_518_checkpoint_is_resampled_to_16x16(vit_weight_files):
    embedder = load_embedder(ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_timm_518"]))
    source = torch.load(vit_weight_files["dinov2_timm_518"], weights_only=True)["pos_embed"]
    expected = resample_abs_pos_embed(source, new_size=[16, 16], old_size=[37, 37], num_prefix_tokens=0)
    loaded = embedder.model.backbones[0].pos_embed
    assert tuple(source.shape) == (1, 37 * 37, 384)
    assert tuple(loaded.shape) == (1, 16 * 16, 384)
    torch.testing.assert_close(loaded.detach(), expected)


def test_dinov2_meta_518_matches_timm_518(vit_weight_files, three_images):
    timm_layout = embed_with(
        ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_timm_518"]), three_images
    )
    meta_layout = embed_with(
        ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_meta_518"]), three_images
    )
    np.testing.assert_allclose(meta_layout, timm_layout, atol=1e-5)


def test_gastronet_timm_file_loads_strictly(vit_weight_files, three_images):
    embedder = load_embedder(ModelSettings(profile="gastronet", gastronet_weights=vit_weight_files["gastronet_timm"]))
    vectors = embedder.embed(three_images)
    assert embedder.dim == 384
    assert vectors.shape == (3, 384)


def test_gastronet_dino_checkpoint_matches_timm_layout(vit_weight_files, three_images):
    timm_layout = embed_with(
        ModelSettings(profile="gastronet", gastronet_weights=vit_weight_files["gastronet_timm"]), three_images
    )
    dino_layout = embed_with(
        ModelSettings(profile="gastronet", gastronet_weights=vit_weight_files["gastronet_dino"]), three_images
    )
    np.testing.assert_allclose(dino_layout, timm_layout, atol=1e-5)


def test_dinov2_gastronet_concatenates_branches(vit_weight_files, three_images):
    settings = ModelSettings(
        dinov2_weights=vit_weight_files["dinov2_meta"], gastronet_weights=vit_weight_files["gastronet_dino"]
    )
    embedder = load_embedder(settings)
    dual = embedder.embed(three_images)
    dinov2 = embed_with(ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_timm"]), three_images)
    gastronet = embed_with(
        ModelSettings(profile="gastronet", gastronet_weights=vit_weight_files["gastronet_timm"]), three_images
    )
    assert embedder.profile == "dinov2-gastronet"
    assert embedder.dim == 768
    assert dual.shape == (3, 768)
    np.testing.assert_allclose(dual, np.concatenate([dinov2, gastronet], axis=1) / np.sqrt(2), atol=1e-5)


def test_model_version_is_stable_across_loads(vit_weight_files):
    settings = ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_timm"])
    assert load_embedder(settings).model_version == load_embedder(settings).model_version


def test_model_version_names_profile_and_weights(vit_weight_files, lite_embedder):
    timm_file = load_embedder(ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_timm"]))
    meta_file = load_embedder(ModelSettings(profile="dinov2", dinov2_weights=vit_weight_files["dinov2_meta"]))
    random = load_embedder(ModelSettings(profile="dinov2", random_weights=True))
    random_again = load_embedder(ModelSettings(profile="dinov2", random_weights=True))
    versions = {timm_file.model_version, meta_file.model_version, random.model_version, lite_embedder.model_version}
    assert len(versions) == 4
    assert timm_file.model_version.startswith("dinov2-")
    assert len(timm_file.model_version) == len("dinov2-") + 12
    assert random.model_version.startswith("dinov2-random-")
    assert random.model_version == random_again.model_version


def test_random_weights_are_reproducible(three_images):
    first = embed_with(ModelSettings(profile="dinov2", random_weights=True), three_images)
    second = embed_with(ModelSettings(profile="dinov2", random_weights=True), three_images)
    np.testing.assert_array_equal(first, second)
