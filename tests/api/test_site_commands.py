"""The `endodoc site` commands create sites and issue keys that the API accepts."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.cli import main
from services.settings import Settings


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    directory = tmp_path / "data"
    monkeypatch.setenv("ENDODOC_DATA_DIR", str(directory))
    for name in ("ENDODOC_DATABASE_URL", "ENDODOC_QDRANT_URL", "ENDODOC_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return directory


def test_issued_key_works_until_revoked(data_dir, capsys):
    assert main(["site", "add", "north-unit", "--name", "North unit"]) == 0
    site = json.loads(capsys.readouterr().out)
    assert main(["site", "issue-key", "north-unit", "--name", "PACS bridge"]) == 0
    key = json.loads(capsys.readouterr().out)
    assert key["secret"].startswith("edk_")

    assert main(["site", "list-keys", "north-unit"]) == 0
    listing = capsys.readouterr().out
    assert key["id"] in listing
    assert key["secret"] not in listing

    headers = {"Authorization": f"Bearer {key['secret']}"}
    with TestClient(create_app(Settings()), headers=headers) as client:
        assert client.get(f"/v1/sites/{site['id']}").status_code == 200
    assert main(["site", "revoke-key", "north-unit", key["id"]]) == 0
    with TestClient(create_app(Settings()), headers=headers) as client:
        assert client.get(f"/v1/sites/{site['id']}").status_code == 401


def test_unknown_site_is_an_error(data_dir, capsys):
    assert main(["db", "upgrade"]) == 0
    assert main(["site", "issue-key", "nowhere", "--name", "x"]) == 2
    assert "endodoc site add nowhere" in capsys.readouterr().err
