"""The `endodoc` command line on the embedded stack."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from services.cli import main
from tests.conftest import class_images
from tests.logging_state import command_logging  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def restored_logging(command_logging):  # noqa: F811
    """Every command here configures logging; later tests get the logging they started with."""
    return command_logging


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    directory = tmp_path / "data"
    monkeypatch.setenv("ENDODOC_DATA_DIR", str(directory))
    for name in ("ENDODOC_DATABASE_URL", "ENDODOC_QDRANT_URL", "ENDODOC_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return directory


def test_gallery_ingest_and_coverage(data_dir, tmp_path, labeled_images, capsys):
    gallery = tmp_path / "gallery"
    for label in ("normal-cecum", "polyp"):
        (gallery / label).mkdir(parents=True)
        for path in class_images(labeled_images, label, 8):
            shutil.copy(path, gallery / label / path.name)

    assert main(["db", "upgrade"]) == 0
    assert main(["gallery", "add", str(gallery), "--site", "cli-site"]) == 0
    assert "added 16 reference images" in capsys.readouterr().out

    images = [str(path) for path in class_images(labeled_images, "normal-cecum", 10)[8:10]]
    assert main(["ingest", *images, "--site", "cli-site", "--procedure", "COL-7",
                 "--landmark-set", "hyperkvasir-lower-gi"]) == 0
    output = capsys.readouterr().out
    assert output.count(" embedded as ") == 2
    procedure_id = re.search(r"procedure ([0-9a-f-]{36})", output).group(1)

    assert main(["coverage", procedure_id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["external_id"] == "COL-7"
    assert report["landmarks"][0]["code"] == "normal-cecum"
    assert report["landmarks"][0]["status"] == "documented"
    assert report["images"]["embedded"] == 2

    assert main(["coverage", "COL-7", "--site", "cli-site"]) == 0
    assert "normal-cecum" in capsys.readouterr().out


def test_coverage_of_unknown_procedure_fails(data_dir, capsys):
    assert main(["coverage", "00000000-0000-0000-0000-000000000000"]) == 2
    assert "procedure 00000000-0000-0000-0000-000000000000 not found" in capsys.readouterr().err


def test_malformed_procedure_id_names_value(data_dir, capsys):
    assert main(["coverage", "abc"]) == 2
    assert "invalid procedure id 'abc'" in capsys.readouterr().err


def test_unknown_gallery_label_fails(data_dir, labeled_images, capsys):
    path = class_images(labeled_images, "polyp", 1)[0]
    assert main(["gallery", "add", "--label", "stomach", str(path)]) == 2
    assert "unknown reference labels ['stomach']" in capsys.readouterr().err


def test_demo_on_missing_folder_fails(data_dir, tmp_path, capsys):
    assert main(["demo", "--images", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_invalid_setting_names_variable(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("ENDODOC_MODEL__PROFILE", "dinov3")
    assert main(["coverage", "abc"]) == 2
    assert "ENDODOC_MODEL__PROFILE" in capsys.readouterr().err


def test_short_visibility_timeout_is_rejected(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("ENDODOC_BROKER_VISIBILITY_TIMEOUT_S", "100")
    assert main(["coverage", "abc"]) == 2
    error = capsys.readouterr().err
    assert "ENDODOC_BROKER_VISIBILITY_TIMEOUT_S=100 is not above ENDODOC_TASK_TIME_LIMIT_S=600" in error
    assert "Traceback" not in error
