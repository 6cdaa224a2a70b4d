"""Checks on the rendered chart that schema validation cannot see.

KEDA's ScaledObject and TriggerAuthentication are custom resources, so these tests are
also their only validation: required fields, and references that must match other objects.
"""

from __future__ import annotations

import re

import helm_python as helm
import pytest

from tests.infra.chart import (
    SENTINEL_ADMIN_API_KEY,
    SENTINEL_DATABASE_URL,
    SENTINEL_QDRANT_API_KEY,
    SENTINEL_REDIS_PASSWORD,
    command_option,
    env_of,
    is_settings_variable,
    merge,
    pod_spec,
    render,
    site_names,
    site_values,
    with_chart_secrets,
)
from services.ingest.dispatch import EMBED_QUEUE

SITES = site_names()
SENTINELS = [SENTINEL_DATABASE_URL, SENTINEL_REDIS_PASSWORD, SENTINEL_QDRANT_API_KEY, SENTINEL_ADMIN_API_KEY]
WORKER = "endodoc-worker"


def workload_pods(rendering):
    """Yield (resource, pod spec) for every Deployment, Job and CronJob."""
    for kind in ("Deployment", "Job", "CronJob"):
        for resource in rendering.of_kind(kind):
            yield resource, pod_spec(resource)


def worker_containers(rendering):
    return pod_spec(rendering.one("Deployment", WORKER))["containers"]


def scaled_object(rendering):
    return rendering.one("ScaledObject", WORKER).body


@pytest.mark.parametrize("site", SITES)
def test_worker_containers_have_one_gpu_each(site):
    values = site_values(site)
    rendering = render(values)

    containers = worker_containers(rendering)

    assert len(containers) == values["worker"]["gpusPerPod"]
    for container in containers:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "nvidia.com/gpu" not in container["resources"].get("requests", {})
        assert container["command"][:2] == ["endodoc", "worker"]
        assert env_of(container)["ENDODOC_MODEL__DEVICE"]["value"] == "cuda"
    hostnames = [command_option(container, "hostname") for container in containers]
    assert len(set(hostnames)) == len(hostnames)


@pytest.mark.parametrize("site", SITES)
def test_workers_land_on_gpu_nodes(site):
    spec = pod_spec(render(site_values(site)).one("Deployment", WORKER))

    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    gpu_tolerations = [item for item in spec["tolerations"] if item["key"] == "nvidia.com/gpu"]
    assert gpu_tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_site_node_selector_keeps_gpu_label():
    spec = pod_spec(render(site_values("central")).one("Deployment", WORKER))

    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true", "node.kubernetes.io/instance-type": "gpu-l4x2"}


def test_cpu_workers_have_no_gpu_parts():
    rendering = render(merge(site_values("hospital-b"), {"worker": {"gpu": {"enabled": False}}}))

    spec = pod_spec(rendering.one("Deployment", WORKER))
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec
    for container in spec["containers"]:
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
        assert env_of(container)["ENDODOC_MODEL__DEVICE"]["value"] == "cpu"


def test_zero_gpus_per_pod_is_rejected():
    with pytest.raises(helm.HelmError, match="gpusPerPod"):
        render(merge(site_values("hospital-b"), {"worker": {"gpusPerPod": 0}}))


def test_default_queue_matches_celery_app():
    rendering = render(site_values("hospital-b"))

    assert EMBED_QUEUE == "embed"
    for container in worker_containers(rendering):
        assert command_option(container, "queues") == EMBED_QUEUE
    assert scaled_object(rendering)["spec"]["triggers"][0]["metadata"]["listName"] == EMBED_QUEUE


@pytest.mark.parametrize("site", SITES)
def test_keda_trigger_follows_queue_name(site):
    rendering = render(merge(site_values(site), {"worker": {"queue": "embed-a100"}}))

    trigger = scaled_object(rendering)["spec"]["triggers"][0]
    assert trigger["metadata"]["listName"] == "embed-a100"
    for container in worker_containers(rendering):
        assert command_option(container, "queues") == "embed-a100"


@pytest.mark.parametrize("site", SITES)
def test_scaled_object_targets_worker_deployment(site):
    values = site_values(site)
    rendering = render(values)

    spec = scaled_object(rendering)["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", WORKER)
    assert rendering.one("Deployment", WORKER)
    assert "replicas" not in rendering.one("Deployment", WORKER).body["spec"]
    autoscaling = values["worker"]["autoscaling"]
    assert spec["minReplicaCount"] == autoscaling["minReplicas"]
    assert spec["maxReplicaCount"] == autoscaling["maxReplicas"]
    assert spec["minReplicaCount"] >= 1


@pytest.mark.parametrize("site", SITES)
def test_keda_trigger_reads_the_broker_list(site):
    rendering = render(with_chart_secrets(site_values(site)))

    trigger = scaled_object(rendering)["spec"]["triggers"][0]
    metadata = trigger["metadata"]
    assert trigger["type"] == "redis"
    # KEDA reads trigger metadata as a map of strings.
    assert all(isinstance(value, str) for value in metadata.values())
    assert int(metadata["listLength"]) >= 1

    broker_url = env_of(worker_containers(rendering)[0])["ENDODOC_BROKER_URL"]["value"]
    match = re.fullmatch(r"rediss?://(?::\$\(REDIS_PASSWORD\)@)?([^/]+)/(\d+)(\?.*)?", broker_url)
    assert match, broker_url
    assert metadata["address"] == match.group(1)
    assert metadata["databaseIndex"] == match.group(2)
    assert metadata["enableTLS"] == str(broker_url.startswith("rediss://")).lower()

    authentication = rendering.one("TriggerAuthentication", trigger["authenticationRef"]["name"]).body
    [reference] = authentication["spec"]["secretTargetRef"]
    assert reference["parameter"] == "password"
    secret = rendering.one("Secret", reference["name"]).body
    assert secret["stringData"][reference["key"]] == SENTINEL_REDIS_PASSWORD


def test_scaled_object_omitted_without_autoscaling():
    rendering = render(merge(site_values("hospital-b"), {"worker": {"autoscaling": {"enabled": False}, "replicaCount": 3}}))

    assert rendering.of_kind("ScaledObject") == []
    assert rendering.one("Deployment", WORKER).body["spec"]["replicas"] == 3


def test_min_above_max_replicas_is_rejected():
    with pytest.raises(helm.HelmError, match="minReplicas"):
        render(merge(site_values("hospital-b"), {"worker": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}))


@pytest.mark.parametrize("site", SITES)
def test_worker_grace_period_covers_task_time_limit(site):
    values = site_values(site)
    spec = pod_spec(render(values).one("Deployment", WORKER))

    assert spec["terminationGracePeriodSeconds"] > values["settings"]["taskTimeLimitS"]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("chart_secret", [False, True], ids=["existing-secret", "chart-secret"])
def test_migration_job_runs_before_everything(site, chart_secret):
    values = site_values(site)
    if chart_secret:
        values = with_chart_secrets(values)
    rendering = render(values)

    job = rendering.one("Job", "endodoc-migration")
    hooks = set(job.annotations["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    job_weight = int(job.annotations["helm.sh/hook-weight"])
    assert "before-hook-creation" in job.annotations["helm.sh/hook-delete-policy"]

    spec = pod_spec(job)
    [container] = spec["containers"]
    assert container["command"] == ["endodoc", "db", "upgrade"]
    assert "envFrom" not in container
    secret_names = {
        item["valueFrom"]["secretKeyRef"]["name"] for item in container["env"] if "valueFrom" in item
    }
    for name in secret_names:
        if name == values["secrets"]["existingSecret"]:
            # Created outside the chart, so it exists before any hook runs.
            assert rendering.get("Secret", name) is None
            continue
        secret = rendering.one("Secret", name)
        assert "pre-install" in secret.annotations["helm.sh/hook"]
        assert "pre-upgrade" in secret.annotations["helm.sh/hook"]
        assert int(secret.annotations["helm.sh/hook-weight"]) < job_weight
    assert spec["serviceAccountName"] == "default"
    # Every other resource is an ordinary one, applied after the pre-install hooks.
    for resource in rendering.resources:
        if resource.name != "endodoc-migration":
            assert "helm.sh/hook" not in resource.annotations, resource.name


@pytest.mark.parametrize("site", SITES)
def test_config_maps_hold_no_secret(site):
    rendering = render(with_chart_secrets(site_values(site)))

    config_maps = rendering.of_kind("ConfigMap")
    assert config_maps
    for config_map in config_maps:
        for key, value in config_map.body["data"].items():
            for sentinel in SENTINELS:
                assert sentinel not in value, f"{config_map.name}.{key}"
            assert not re.search(r"://[^/\s]*@", value), f"{config_map.name}.{key} has credentials in a URL"


@pytest.mark.parametrize("site", SITES)
def test_plain_env_values_hold_no_secret(site):
    rendering = render(with_chart_secrets(site_values(site)))

    for resource, spec in workload_pods(rendering):
        for container in spec["containers"]:
            for item in container.get("env") or []:
                for sentinel in SENTINELS:
                    assert sentinel not in item.get("value", ""), f"{resource.name}/{container['name']}: {item['name']}"


def test_secret_setting_in_extra_is_rejected():
    values = merge(site_values("hospital-b"), {"settings": {"extra": {"ENDODOC_DATABASE_URL": SENTINEL_DATABASE_URL}}})

    with pytest.raises(helm.HelmError, match="secret"):
        render(values)


def test_qdrant_url_with_credentials_is_rejected():
    values = merge(site_values("hospital-b"), {"qdrantExternal": {"url": "http://admin:hunter2@qdrant:6333"}})

    with pytest.raises(helm.HelmError, match="credentials"):
        render(values)


def test_unsafe_redis_password_is_rejected():
    values = merge(with_chart_secrets(site_values("hospital-b")), {"secrets": {"redisPassword": "p@ss/word"}})

    with pytest.raises(helm.HelmError, match="URL-safe"):
        render(values)


def test_bundled_qdrant_needs_fetched_chart():
    with pytest.raises(helm.HelmError, match="helm dependency build"):
        render(merge(site_values("hospital-b"), {"qdrant": {"enabled": True}}))


@pytest.mark.parametrize("site", SITES)
def test_ingress_body_limit_matches_api_limit(site):
    values = site_values(site)
    rendering = render(values)

    ingress = rendering.one("Ingress", "endodoc-api")
    settings = rendering.one("ConfigMap", "endodoc-settings").body["data"]
    limit = ingress.annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert limit == settings["ENDODOC_UPLOAD_MAX_BYTES"]
    assert int(limit) == values["settings"]["uploadMaxBytes"]


def test_ingress_body_limit_follows_upload_limit():
    rendering = render(merge(site_values("hospital-b"), {"settings": {"uploadMaxBytes": 7340032}}))

    ingress = rendering.one("Ingress", "endodoc-api")
    assert ingress.annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "7340032"
    assert rendering.one("ConfigMap", "endodoc-settings").body["data"]["ENDODOC_UPLOAD_MAX_BYTES"] == "7340032"


@pytest.mark.parametrize("site", SITES)
def test_settings_variables_exist_in_settings_class(site):
    rendering = render(with_chart_secrets(site_values(site)))

    names = set(rendering.one("ConfigMap", "endodoc-settings").body["data"])
    for _, spec in workload_pods(rendering):
        for container in spec["containers"]:
            names |= set(env_of(container))
    for name in sorted(names):
        if name.startswith("ENDODOC_"):
            assert is_settings_variable(name), name


@pytest.mark.parametrize("site", SITES)
def test_api_and_workers_share_blob_volume(site):
    values = site_values(site)
    rendering = render(values)

    blob_dir = rendering.one("ConfigMap", "endodoc-settings").body["data"]["ENDODOC_BLOB_DIR"]
    claims = set()
    for name in ("endodoc-api", WORKER):
        spec = pod_spec(rendering.one("Deployment", name))
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        claims.add(volumes["blobs"]["persistentVolumeClaim"]["claimName"])
        for container in spec["containers"]:
            mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
            assert mounts[blob_dir]["name"] == "blobs"
            assert not mounts[blob_dir].get("readOnly", False)
    assert len(claims) == 1
    [claim] = claims
    created_claim = rendering.get("PersistentVolumeClaim", claim)
    if values["blobs"].get("existingClaim"):
        assert created_claim is None
    else:
        assert created_claim.body["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("site", SITES)
def test_pods_run_restricted(site):
    rendering = render(site_values(site))

    for resource, spec in workload_pods(rendering):
        assert spec["securityContext"]["runAsNonRoot"] is True, resource.name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", resource.name
        assert spec["automountServiceAccountToken"] is False, resource.name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, resource.name
            assert context["readOnlyRootFilesystem"] is True, resource.name
            assert context["capabilities"]["drop"] == ["ALL"], resource.name
            assert container["resources"]["limits"]["memory"], resource.name


@pytest.mark.parametrize("site", SITES)
def test_api_probes_use_healthz(site):
    spec = pod_spec(render(site_values(site)).one("Deployment", "endodoc-api"))

    [container] = spec["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    assert container["command"][:2] == ["endodoc", "serve"]


@pytest.mark.parametrize("site", SITES)
def test_disruption_budgets_select_pods(site):
    rendering = render(site_values(site))

    budgets = {budget.name: budget.body for budget in rendering.of_kind("PodDisruptionBudget")}
    assert set(budgets) == {"endodoc-api", WORKER}
    for name, budget in budgets.items():
        template_labels = rendering.one("Deployment", name).body["spec"]["template"]["metadata"]["labels"]
        for key, value in budget["spec"]["selector"]["matchLabels"].items():
            assert template_labels[key] == value


@pytest.mark.parametrize("site", SITES)
def test_reconcile_cronjob_never_overlaps(site):
    cronjob = render(site_values(site)).one("CronJob", "endodoc-reconcile")

    assert cronjob.body["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = pod_spec(cronjob)["containers"]
    assert container["command"][:2] == ["endodoc", "reconcile"]


@pytest.mark.parametrize("site", SITES)
def test_site_label_on_every_resource(site):
    values = site_values(site)
    rendering = render(values)

    for resource in rendering.resources:
        labels = resource.body["metadata"]["labels"]
        assert labels["endodoc.io/site"] == values["site"]["name"], resource.name
        assert labels["endodoc.io/deployment-mode"] == values["site"]["mode"], resource.name


def test_sites_show_both_deployment_modes():
    modes = {site_values(site)["site"]["mode"] for site in SITES}

    assert modes == {"central", "dedicated"}


def test_admin_key_reaches_only_api():
    rendering = render(with_chart_secrets(site_values("hospital-b")))

    for resource, spec in workload_pods(rendering):
        for container in spec["containers"]:
            has_key = "ENDODOC_ADMIN_API_KEY" in env_of(container)
            assert has_key == (resource.name == "endodoc-api"), resource.name
    [api] = pod_spec(rendering.one("Deployment", "endodoc-api"))["containers"]
    assert env_of(api)["ENDODOC_ADMIN_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "admin-api-key"


REINDEX = {
    "reindex": {
        "enabled": True,
        "runId": "2027-01-15",
        "switchAliases": False,
        "model": {
            "profile": "dinov2-gastronet-resnet50",
            "gastronetResnet50Weights": "gastronet/resnet50.safetensors",
            "checkpoint": "checkpoints/fusion-v2.safetensors",
        },
    }
}


@pytest.mark.parametrize("site", SITES)
def test_reindex_job_runs_new_model_on_gpu(site):
    values = merge(site_values(site), REINDEX)
    rendering = render(values)

    job = rendering.one("Job", "endodoc-reindex-2027-01-15")
    [container] = pod_spec(job)["containers"]
    assert container["command"] == ["endodoc", "reindex", "--no-switch"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(job)["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    env = env_of(container)
    assert env["ENDODOC_MODEL__CHECKPOINT"]["value"] == "/models/checkpoints/fusion-v2.safetensors"
    assert env["ENDODOC_MODEL__GASTRONET_RESNET50_WEIGHTS"]["value"] == "/models/gastronet/resnet50.safetensors"
    assert env["ENDODOC_MODEL__PROFILE"]["value"] == "dinov2-gastronet-resnet50"
    for name in env:
        if name.startswith("ENDODOC_"):
            assert is_settings_variable(name), name
    assert env["ENDODOC_MODEL__DEVICE"]["value"] == "cuda"
    # The running deployment keeps its model until the release's `model` block changes.
    settings = rendering.one("ConfigMap", "endodoc-settings").body["data"]
    assert "ENDODOC_MODEL__CHECKPOINT" not in settings


def test_reindex_job_switches_aliases_by_default():
    values = merge(site_values("hospital-b"), merge(REINDEX, {"reindex": {"switchAliases": True}}))

    job = render(values).one("Job", "endodoc-reindex-2027-01-15")

    assert pod_spec(job)["containers"][0]["command"] == ["endodoc", "reindex"]


def test_reindex_job_needs_run_id():
    values = merge(site_values("hospital-b"), {"reindex": {"enabled": True}})

    with pytest.raises(helm.HelmError, match="runId"):
        render(values)


def test_reindex_job_absent_by_default():
    rendering = render(site_values("hospital-b"))

    assert [job.name for job in rendering.of_kind("Job")] == ["endodoc-migration"]


@pytest.mark.parametrize("site", SITES)
def test_worker_liveness_outlasts_longest_task(site):
    values = site_values(site)
    rendering = render(values)
    task_time_limit_s = values["settings"]["taskTimeLimitS"]

    for container in worker_containers(rendering):
        probe = container["livenessProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] > task_time_limit_s + 60
        node_name = command_option(container, "hostname").replace("%h", "${HOSTNAME}")
        for name in ("startupProbe", "livenessProbe"):
            script = container[name]["exec"]["command"][-1]
            assert f'--destination "{node_name}"' in script, name
            assert "--app=workers.celery_app inspect ping" in script, name


def test_worker_probes_can_be_disabled():
    rendering = render(merge(site_values("hospital-b"), {"worker": {"livenessProbe": {"enabled": False}}}))

    for container in worker_containers(rendering):
        assert "livenessProbe" not in container
        assert "startupProbe" not in container
