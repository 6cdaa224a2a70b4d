"""Render the chart for every site and validate the output without a cluster.

Built-in Kubernetes kinds are validated by kubernetes-validate in strict mode against the
oldest and the newest Kubernetes version the chart supports. KEDA's custom resources have
no schema there; test_chart_checks.py checks them field by field.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.infra.chart import CHART_DIR, REPO_ROOT, merge, render, site_names, site_values, with_chart_secrets

# The chart's kubeVersion is >=1.29, and 1.37 is the newest schema kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
CUSTOM_API_GROUPS = ("keda.sh/",)
YAMLLINT_CONFIG = REPO_ROOT / "infra" / ".yamllint.yaml"

# The Qdrant chart is a declared dependency that only `helm dependency build` fetches, and
# the test machines have no network, so lint reports it missing and nothing else may appear.
MISSING_QDRANT_DEPENDENCY = "chart directory is missing these dependencies: qdrant"


def validate_builtin(resources) -> int:
    """Validate every built-in resource in strict mode and return how many were validated."""
    validated = 0
    for resource in resources:
        if resource.body["apiVersion"].startswith(CUSTOM_API_GROUPS):
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(resource.body, version, strict=True)
        validated += 1
    return validated


@pytest.mark.parametrize("site", site_names())
def test_site_renders_valid_manifests(site):
    rendering = render(site_values(site))

    kinds = {resource.kind for resource in rendering.resources}
    assert {"Deployment", "Service", "Ingress", "ConfigMap", "Job", "CronJob", "ScaledObject"} <= kinds
    assert validate_builtin(rendering.resources) == len(rendering.resources) - len(rendering.of_kind("ScaledObject")) - len(
        rendering.of_kind("TriggerAuthentication")
    )


@pytest.mark.parametrize("site", site_names())
def test_site_renders_with_chart_secret(site):
    rendering = render(with_chart_secrets(site_values(site)))

    assert rendering.of_kind("Secret")
    assert rendering.of_kind("TriggerAuthentication")
    validate_builtin(rendering.resources)


def test_default_values_render_valid_manifests():
    rendering = render({"secrets": {"databaseUrl": "postgresql://endodoc@postgres:5432/endodoc"}})

    validate_builtin(rendering.resources)


@pytest.mark.parametrize("site", site_names())
def test_site_passes_helm_lint(site):
    report = helm.lint(str(CHART_DIR), site_values(site), strict=True, kube_version="v1.37.0")

    errors = [message for message in report["errors"] if MISSING_QDRANT_DEPENDENCY not in message]
    assert errors == []
    warnings = [
        message["error"]
        for message in report["messages"]
        if message["severity"] >= 2 and MISSING_QDRANT_DEPENDENCY not in message["error"]
    ]
    assert warnings == []


def test_invalid_manifest_fails_validation():
    rendering = render(merge(site_values("hospital-b"), {"api": {"service": {"port": "eighty"}}}))

    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(rendering.resources)


def test_broken_template_fails_render(tmp_path: Path):
    broken = tmp_path / "endodoc"
    shutil.copytree(CHART_DIR, broken)
    service = broken / "templates" / "api-service.yaml"
    service.write_text(service.read_text().replace("{{ .Values.api.service.port }}", "{{ .Values.api.service.port "))

    with pytest.raises(helm.HelmError):
        render(site_values("hospital-b"), chart_dir=broken)


def test_unknown_field_fails_strict_validation(tmp_path: Path):
    broken = tmp_path / "endodoc"
    shutil.copytree(CHART_DIR, broken)
    service = broken / "templates" / "api-service.yaml"
    service.write_text(service.read_text().replace("  type: {{", "  kind: ClusterIP\n  type: {{"))

    rendering = render(site_values("hospital-b"), chart_dir=broken)

    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(rendering.resources)


def test_values_schema_rejects_wrong_type():
    with pytest.raises(helm.HelmError):
        render(merge(site_values("hospital-b"), {"worker": {"gpusPerPod": "two"}}))


def lint_problems(path: Path, text: str | None = None) -> list[str]:
    config = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    content = path.read_text() if text is None else text
    return [f"{path}:{problem.line}: {problem.message}" for problem in linter.run(content, config, str(path))]


def yaml_sources() -> list[Path]:
    infra = REPO_ROOT / "infra"
    sources = [CHART_DIR / "Chart.yaml", CHART_DIR / "values.yaml"]
    sources += sorted((infra / "sites").glob("*/values.yaml"))
    sources += sorted((infra / "compose").glob("*.yaml"))
    return sources


@pytest.mark.parametrize("path", yaml_sources(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_yaml_source_passes_yamllint(path):
    assert lint_problems(path) == []


@pytest.mark.parametrize("site", site_names())
def test_rendered_output_passes_yamllint(site):
    rendering = render(with_chart_secrets(site_values(site)))

    problems = []
    for template, text in rendering.texts.items():
        if template.endswith(".yaml"):
            # A template that opens with `{{- if ...}}` leaves a blank first line, which
            # Helm keeps in its own output too.
            problems += lint_problems(Path(template), text.lstrip("\n"))
    assert problems == []


def test_yamllint_reports_duplicate_key():
    assert lint_problems(Path("broken.yaml"), "---\nkey: 1\nkey: 2\n") != []


def test_rendered_documents_are_plain_yaml():
    rendering = render(with_chart_secrets(site_values("central")))

    for template, text in rendering.texts.items():
        if template.endswith(".yaml"):
            assert list(yaml.safe_load_all(text)) is not None


def test_reindex_job_passes_validation():
    values = merge(site_values("central"), {"reindex": {"enabled": True, "runId": "r1", "model": {"checkpoint": "v2.st"}}})
    rendering = render(values)

    assert len(rendering.of_kind("Job")) == 2
    validate_builtin(rendering.resources)
