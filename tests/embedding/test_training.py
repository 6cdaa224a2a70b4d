"""Training on real images: LoRA on a tiny dual ViT, head-only on `lite`, and the checkpoints they write."""

from __future__ import annotations

import pytest
import torch

from services.embedding import load_embedder
from services.embedding.checkpoint import apply_checkpoint, read_checkpoint
from services.embedding.dataset import DatasetError
from services.embedding.embedder import load_model
from services.embedding.errors import WeightsError
from services.embedding.features import DecodedImages
from services.embedding.head import FusionHead
from services.embedding.losses import MetricLoss
from services.embedding.model import EmbeddingModel
from services.embedding.preprocess import Transform
from services.embedding.train import Trainer, TrainSettings, prepare_data, seed_everything
from services.settings import ModelSettings
from tiny_models import TINY_PROFILE, fresh_copy, link_class_folders, tiny_loaded_model

CLASSES = {"bbps-0-1": 8, "normal-cecum": 8, "polyp": 8}


@pytest.fixture(scope="module")
def small_folder(labeled_images, tmp_path_factory):
    return link_class_folders(labeled_images, tmp_path_factory.mktemp("small") / "images", CLASSES)


@pytest.fixture(scope="module")
def tiny_run(small_folder, tmp_path_factory):
    """Train LoRA plus head on the tiny dual ViT for a few steps; keep an untrained copy to compare."""
    settings = TrainSettings(mode="lora", epochs=3, batch_size=12, per_class=4, lr=3e-3, seed=3, val_fraction=0.25)
    loaded = tiny_loaded_model()
    untrained = fresh_copy(loaded)
    data = prepare_data(small_folder, val_images=None, val_fraction=settings.val_fraction, seed=settings.seed)
    out = tmp_path_factory.mktemp("tiny_checkpoint") / "tiny.safetensors"
    result = Trainer(loaded, data, settings, out=out, device="cpu", progress=False).run()
    return settings, loaded, untrained, data, result


def embed_all(model: EmbeddingModel, images: DecodedImages) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images.inputs(range(len(images)), torch.device("cpu")))


def unmined_loss(model: EmbeddingModel, images: DecodedImages, labels: torch.Tensor) -> float:
    return float(MetricLoss("triplet").unmined(embed_all(model, images), labels))


def test_lora_training_lowers_the_loss(tiny_run):
    settings, loaded, untrained, data, _ = tiny_run
    images = DecodedImages(data.train, [Transform.for_branch(spec) for spec in loaded.model.specs])
    labels = data.labels(data.train)
    # The run creates its head right after seeding, so this is the head it started from.
    seed_everything(settings.seed)
    start_head = FusionHead([spec.feature_dim for spec in loaded.model.specs], settings.out_dim)
    start = EmbeddingModel(untrained.model.specs, list(untrained.model.backbones), start_head)
    assert unmined_loss(loaded.model, images, labels) < unmined_loss(start, images, labels)


def test_lora_training_changes_only_adapters_and_head(tiny_run):
    _, loaded, untrained, _, result = tiny_run
    assert result.adapted_modules == {"tiny_reg_vit": 8, "tiny_vit16": 8}
    for trained, original in zip(loaded.model.backbones, untrained.model.backbones, strict=True):
        trained_state = trained.state_dict()
        adapter_keys = [key for key in trained_state if "lora_" in key]
        assert adapter_keys
        for key, value in original.state_dict().items():
            base_key = key if key in trained_state else key.rpartition(".")[0] + ".base_layer." + key.rpartition(".")[2]
            assert torch.equal(trained_state[base_key], value), key
        assert any(trained_state[key].abs().sum() > 0 for key in adapter_keys if "lora_B" in key)


def test_lora_checkpoint_reloads_to_identical_embeddings(tiny_run):
    _, loaded, untrained, data, result = tiny_run
    images = DecodedImages(data.val, [Transform.for_branch(spec) for spec in loaded.model.specs])
    reloaded = fresh_copy(untrained)
    apply_checkpoint(reloaded.model, reloaded.branches, TINY_PROFILE, result.checkpoint)
    assert torch.equal(embed_all(reloaded.model, images), embed_all(loaded.model, images))


def test_lora_checkpoint_card_records_the_run(tiny_run):
    _, _, _, data, result = tiny_run
    card = read_checkpoint(result.checkpoint).card
    assert card["profile"] == TINY_PROFILE
    assert card["lora"]["r"] == 8
    assert card["lora"]["adapted_modules"] == {"tiny_reg_vit": 8, "tiny_vit16": 8}
    assert card["training"]["mode"] == "lora"
    assert card["data"]["train_counts"] == {"bbps-0-1": 6, "normal-cecum": 6, "polyp": 6}
    assert card["validation"]["best_epoch"] == result.best_epoch
    assert len(card["validation"]["history"]) == 3
    assert result.checkpoint.with_suffix(".json").is_file()


def run_command(argv: list[str]) -> int:
    """Run an endodoc subcommand's handler without `main`, which would reconfigure logging for later tests."""
    from services.cli import build_parser
    from services.settings import Settings

    args = build_parser().parse_args(argv)
    return args.handler(args, Settings())


@pytest.fixture(scope="module")
def lite_checkpoint(small_folder, tmp_path_factory):
    settings = TrainSettings(mode="head", epochs=3, batch_size=12, lr=1e-3, seed=0, val_fraction=0.25)
    loaded = load_model(ModelSettings(profile="lite"))
    data = prepare_data(small_folder, val_images=None, val_fraction=settings.val_fraction, seed=settings.seed)
    out = tmp_path_factory.mktemp("lite_checkpoint") / "lite-head.safetensors"
    cache = tmp_path_factory.mktemp("features")
    return Trainer(loaded, data, settings, out=out, device="cpu", cache_dir=cache, progress=False).run()


def test_head_checkpoint_embeds_in_512_dims(lite_checkpoint, lite_embedder, real_images):
    embedder = load_embedder(ModelSettings(profile="lite", checkpoint=lite_checkpoint.checkpoint, batch_size=4))
    vectors = embedder.embed(real_images)
    assert embedder.dim == 512
    assert vectors.shape == (len(real_images), 512)
    assert abs(float((vectors**2).sum(axis=1).min()) - 1.0) < 1e-4
    assert embedder.model_version != lite_embedder.model_version
    assert embedder.model_version.startswith("lite-")


def test_head_checkpoint_version_follows_its_hash(lite_checkpoint, tmp_path):
    first = load_embedder(ModelSettings(profile="lite", checkpoint=lite_checkpoint.checkpoint))
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(lite_checkpoint.checkpoint.read_bytes())
    assert load_embedder(ModelSettings(profile="lite", checkpoint=copy)).model_version == first.model_version


def test_checkpoint_of_another_profile_is_rejected(lite_checkpoint):
    settings = ModelSettings(profile="gastronet", random_weights=True, checkpoint=lite_checkpoint.checkpoint)
    with pytest.raises(WeightsError, match="trained for the 'lite' profile"):
        load_embedder(settings)


def test_checkpoint_of_other_backbone_weights_is_rejected(tiny_run):
    _, _, untrained, _, result = tiny_run
    other = tiny_loaded_model(seed=5)
    other.branches[0] = type(other.branches[0])(
        spec=other.branches[0].spec, backbone=other.branches[0].backbone, kind="file", sha256="0" * 64
    )
    with pytest.raises(WeightsError, match="other tiny_reg_vit backbone weights"):
        apply_checkpoint(other.model, other.branches, TINY_PROFILE, result.checkpoint)
    assert other.model.head is None


def test_corrupted_checkpoint_is_rejected(lite_checkpoint, tmp_path):
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(lite_checkpoint.checkpoint.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load_embedder(ModelSettings(profile="lite", checkpoint=corrupted))


def test_missing_checkpoint_is_rejected(tmp_path):
    with pytest.raises(WeightsError, match="Checkpoint file not found"):
        load_embedder(ModelSettings(profile="lite", checkpoint=tmp_path / "absent.safetensors"))


def test_class_folder_with_one_image_is_rejected(labeled_images, tmp_path):
    folder = link_class_folders(labeled_images, tmp_path / "images", {"polyp": 4, "normal-cecum": 1})
    with pytest.raises(DatasetError, match=r"normal-cecum \(1\)"):
        prepare_data(folder, val_images=None, val_fraction=0.2, seed=0)


def test_empty_folder_is_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="No images found"):
        prepare_data(tmp_path / "images", val_images=None, val_fraction=0.2, seed=0)


def test_train_command_rejects_empty_folder_without_output(tmp_path, capsys):
    (tmp_path / "images" / "polyp").mkdir(parents=True)
    out = tmp_path / "model.safetensors"
    assert run_command(["train", "--images", str(tmp_path / "images"), "--out", str(out), "--no-progress"]) == 2
    assert "No images found" in capsys.readouterr().err
    assert not out.exists()
    assert not out.with_suffix(".json").exists()


def test_evaluate_command_writes_report_and_confusion_matrix(lite_checkpoint, small_folder, tmp_path, capsys):
    import json

    out = tmp_path / "report"
    code = run_command(["evaluate", "--gallery", str(small_folder), "--queries", str(small_folder),
                 "--checkpoint", str(lite_checkpoint.checkpoint), "--ablation", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    names = [result["name"] for result in report["results"]]
    assert names == ["trained head", "efficientnet_lite0 only"]
    assert report["results"][0]["dim"] == 512
    assert set(report["results"][0]["per_class"]) == set(CLASSES)
    assert sum(map(sum, report["results"][0]["confusion_matrix"])) == sum(CLASSES.values())
    assert (out / report["results"][0]["confusion_matrix_image"]).is_file()
    assert "R@1" in capsys.readouterr().out


def test_evaluate_command_rejects_corrupted_checkpoint(small_folder, tmp_path, capsys):
    corrupted = tmp_path / "broken.safetensors"
    corrupted.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    out = tmp_path / "report"
    code = run_command(["evaluate", "--gallery", str(small_folder), "--queries", str(small_folder),
                 "--checkpoint", str(corrupted), "--out", str(out), "--no-progress"])
    assert code == 2
    assert "not a valid safetensors file" in capsys.readouterr().err
    assert not out.exists()


def test_lora_run_starts_from_head_checkpoint(small_folder, tmp_path):
    head_settings = TrainSettings(mode="head", epochs=2, batch_size=12, lr=1e-3, seed=1, val_fraction=0.25)
    data = prepare_data(small_folder, val_images=None, val_fraction=0.25, seed=1)
    head_run = Trainer(tiny_loaded_model(), data, head_settings, out=tmp_path / "head.safetensors",
                       device="cpu", progress=False).run()

    lora_settings = TrainSettings(mode="lora", epochs=1, batch_size=12, lr=1e-3, seed=1, val_fraction=0.25)
    lora_run = Trainer(tiny_loaded_model(), data, lora_settings, out=tmp_path / "lora.safetensors", device="cpu",
                       progress=False, init_head=head_run.checkpoint).run()

    start = lora_run.history[0]
    assert start.epoch == 0
    assert start.loss is None
    assert start.mean_average_precision == pytest.approx(head_run.best.mean_average_precision)
    assert start.recall_at_1 == pytest.approx(head_run.best.recall_at_1)
    card = read_checkpoint(lora_run.checkpoint).card
    assert card["validation"]["history"][0]["loss"] is None


def test_init_head_from_lora_checkpoint_is_rejected(tiny_run, small_folder, tmp_path):
    _, _, _, data, result = tiny_run
    settings = TrainSettings(mode="lora", epochs=1, batch_size=12, seed=3, val_fraction=0.25)
    trainer = Trainer(tiny_loaded_model(), data, settings, out=tmp_path / "again.safetensors", device="cpu",
                      progress=False, init_head=result.checkpoint)
    with pytest.raises(WeightsError, match="needs a head-only checkpoint"):
        trainer.run()
    assert not (tmp_path / "again.safetensors").exists()
