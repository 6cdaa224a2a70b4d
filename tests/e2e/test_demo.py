"""The README's main job: `endodoc demo` on the real labeled images, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def demo_result(labeled_images, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo-data")
    environment = {**os.environ, "ENDODOC_DATA_DIR": str(data_dir)}
    for name in ("ENDODOC_DATABASE_URL", "ENDODOC_QDRANT_URL", "ENDODOC_BROKER_URL", "ENDODOC_MODEL__PROFILE"):
        environment.pop(name, None)
    completed = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--images", str(labeled_images), "--json", "--no-progress"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_demo_reports_required_keys(demo_result):
    for key in ("procedures", "accuracy", "recall_at_1", "recall_at_5", "map"):
        assert key in demo_result
    assert len(demo_result["procedures"]) >= 5
    for procedure in demo_result["procedures"]:
        assert {"id", "coverage", "landmarks"} <= procedure.keys()
        for landmark in procedure["landmarks"]:
            assert {"code", "status", "image_id", "score"} <= landmark.keys()
            assert landmark["status"] in ("documented", "missing", "pending")


def test_demo_untrained_lite_recall_floor(demo_result):
    assert demo_result["model_version"].startswith("lite-")
    assert demo_result["recall_at_1"] >= 0.80
    assert demo_result["recall_at_5"] >= demo_result["recall_at_1"]
    assert 0 < demo_result["map"] <= 1


def test_demo_procedures_without_cecum_report_it_missing(demo_result):
    without_cecum = [p for p in demo_result["procedures"] if "normal-cecum" not in p["true_labels"]]
    assert len(without_cecum) >= 1
    for procedure in without_cecum:
        cecum = next(item for item in procedure["landmarks"] if item["code"] == "normal-cecum")
        assert cecum["status"] == "missing", procedure["external_id"]


def test_demo_procedures_with_cecum_report_it_documented(demo_result):
    with_cecum = [p for p in demo_result["procedures"] if "normal-cecum" in p["true_labels"]]
    assert len(with_cecum) >= 1
    for procedure in with_cecum:
        cecum = next(item for item in procedure["landmarks"] if item["code"] == "normal-cecum")
        assert cecum["status"] == "documented", procedure["external_id"]


def test_demo_leaves_nothing_pending(demo_result):
    for procedure in demo_result["procedures"]:
        assert procedure["images"]["queued"] == 0
        assert all(item["status"] != "pending" for item in procedure["landmarks"])
