"""Render the endodoc Helm chart offline and pick resources out of the output."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from services.settings import CoverageSettings, ModelSettings, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "infra" / "helm" / "endodoc"
SITES_DIR = REPO_ROOT / "infra" / "sites"
RELEASE_NAME = "endodoc"
NAMESPACE = "endodoc"

# Secret values the tests pass in, so they can look for them in places they must not reach.
SENTINEL_DATABASE_URL = "postgresql://endodoc:db-sentinel-5f2c@postgres.example:5432/endodoc"
SENTINEL_REDIS_PASSWORD = "redis-sentinel-9a41"
SENTINEL_QDRANT_API_KEY = "qdrant-sentinel-77d0"
SENTINEL_ADMIN_API_KEY = "admin-sentinel-31be"

# Variables the code reads outside the Settings class.
NON_SETTINGS_VARIABLES = {"ENDODOC_LOG_LEVEL"}
NESTED_SETTINGS = {"model": ModelSettings, "coverage": CoverageSettings}


def is_settings_variable(name: str) -> bool:
    """Return True when `name` is an ENDODOC_ variable that endodoc reads."""
    if name in NON_SETTINGS_VARIABLES:
        return True
    field, _, nested = name.removeprefix("ENDODOC_").lower().partition("__")
    if field not in Settings.model_fields:
        return False
    if not nested:
        return True
    return field in NESTED_SETTINGS and nested in NESTED_SETTINGS[field].model_fields


def site_names() -> list[str]:
    return sorted(path.name for path in SITES_DIR.iterdir() if (path / "values.yaml").is_file())


def site_values(site: str) -> dict[str, Any]:
    return yaml.safe_load((SITES_DIR / site / "values.yaml").read_text()) or {}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` into a copy of `base` the way Helm merges values files."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def with_chart_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """Switch `values` to a chart-made Secret filled with the sentinel secrets."""
    return merge(
        values,
        {
            "redis": {"auth": True},
            "qdrantExternal": {"auth": True},
            "api": {"adminAccess": True},
            "secrets": {
                "existingSecret": "",
                "databaseUrl": SENTINEL_DATABASE_URL,
                "redisPassword": SENTINEL_REDIS_PASSWORD,
                "qdrantApiKey": SENTINEL_QDRANT_API_KEY,
                "adminApiKey": SENTINEL_ADMIN_API_KEY,
            },
        },
    )


@dataclass(frozen=True)
class Resource:
    """One rendered Kubernetes object and the template that produced it."""

    template: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def annotations(self) -> dict[str, str]:
        return self.body["metadata"].get("annotations") or {}


@dataclass(frozen=True)
class Rendering:
    """The resources of one offline `helm template` run."""

    values: dict[str, Any]
    texts: dict[str, str]
    resources: list[Resource]

    def of_kind(self, kind: str) -> list[Resource]:
        return [resource for resource in self.resources if resource.kind == kind]

    def one(self, kind: str, name: str) -> Resource:
        found = [resource for resource in self.of_kind(kind) if resource.name == name]
        assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def get(self, kind: str, name: str) -> Resource | None:
        found = [resource for resource in self.of_kind(kind) if resource.name == name]
        return found[0] if found else None


def render(values: dict[str, Any] | None = None, *, chart_dir: Path = CHART_DIR) -> Rendering:
    """Validate `values` against the chart's schema, render the chart and parse every document."""
    values = values or {}
    with helm.Chart.load(str(chart_dir)) as chart:
        chart.validate_schema(values)
        texts = chart.render(values, name=RELEASE_NAME, namespace=NAMESPACE, is_install=True)

    resources = []
    for template, text in sorted(texts.items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                resources.append(Resource(template=template, body=document))
    return Rendering(values=values, texts=texts, resources=resources)


def pod_spec(resource: Resource) -> dict[str, Any]:
    """Return the pod spec of a Deployment, Job or CronJob."""
    spec = resource.body["spec"]
    if resource.kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env") or []}


def command_option(container: dict[str, Any], option: str) -> str:
    """Return the value of `--option=value` in a container's command."""
    prefix = f"--{option}="
    values = [part[len(prefix) :] for part in container["command"] if part.startswith(prefix)]
    assert len(values) == 1, f"expected one {prefix} in {container['command']}"
    return values[0]
