{{/* Names, labels and the pod parts that the API, workers, migration Job and CronJob share. */}}

{{- define "endodoc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "endodoc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "endodoc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "endodoc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: endodoc
endodoc.io/site: {{ .Values.site.name | quote }}
endodoc.io/deployment-mode: {{ .Values.site.mode | quote }}
{{- end -}}

{{/* Selector labels of one component: pass (dict "root" $ "component" "api"). */}}
{{- define "endodoc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "endodoc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "endodoc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "endodoc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "endodoc.secretName" -}}
{{- default (printf "%s-secrets" (include "endodoc.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "endodoc.configMapName" -}}
{{- printf "%s-settings" (include "endodoc.fullname" .) -}}
{{- end -}}

{{- define "endodoc.workerName" -}}
{{- printf "%s-worker" (include "endodoc.fullname" .) -}}
{{- end -}}

{{- define "endodoc.blobClaimName" -}}
{{- default (printf "%s-blobs" (include "endodoc.fullname" .)) .Values.blobs.existingClaim -}}
{{- end -}}

{{/* image: pass (dict "root" $ "image" .Values.api.image). */}}
{{- define "endodoc.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The Qdrant URL: the bundled chart's Service, or the external URL. */}}
{{- define "endodoc.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s-qdrant:6333" .Release.Name -}}
{{- else -}}
{{- required "qdrantExternal.url is required when qdrant.enabled is false" .Values.qdrantExternal.url -}}
{{- end -}}
{{- end -}}

{{- define "endodoc.qdrantAuth" -}}
{{- if or .Values.qdrantExternal.auth (and .Values.qdrant.enabled .Values.qdrant.apiKey) -}}true{{- end -}}
{{- end -}}

{{/*
The broker URL. The Redis password is not written here: Kubernetes expands $(REDIS_PASSWORD)
from the variable of that name, which comes from the Secret and is defined before this one.
*/}}
{{- define "endodoc.brokerUrl" -}}
{{- $scheme := ternary "rediss" "redis" .Values.redis.tls -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" .Values.redis.auth -}}
{{- $query := ternary "?ssl_cert_reqs=required" "" .Values.redis.tls -}}
{{- printf "%s://%s%s:%v/%v%s" $scheme $auth .Values.redis.host .Values.redis.port .Values.redis.database $query -}}
{{- end -}}

{{/* Pod-level fields shared by every endodoc pod. */}}
{{- define "endodoc.podCommon" -}}
serviceAccountName: {{ include "endodoc.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Environment of every endodoc container: the ConfigMap, then the secrets by reference.
REDIS_PASSWORD must come before ENDODOC_BROKER_URL, which refers to it.
*/}}
{{- define "endodoc.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "endodoc.configMapName" . }}
env:
  - name: ENDODOC_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "endodoc.secretName" . }}
        key: database-url
{{- if .Values.redis.auth }}
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "endodoc.secretName" . }}
        key: redis-password
{{- end }}
  - name: ENDODOC_BROKER_URL
    value: {{ include "endodoc.brokerUrl" . | quote }}
{{- if include "endodoc.qdrantAuth" . }}
  - name: ENDODOC_QDRANT_API_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "endodoc.secretName" . }}
        key: qdrant-api-key
{{- end }}
{{- end -}}

{{/* Volume mounts of every container that runs endodoc code. */}}
{{- define "endodoc.volumeMounts" -}}
- name: blobs
  mountPath: {{ .Values.blobs.mountPath }}
{{- if .Values.model.volume.existingClaim }}
- name: models
  mountPath: {{ .Values.model.volume.mountPath }}
  readOnly: true
{{- end }}
- name: scratch
  mountPath: /var/lib/endodoc/scratch
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "endodoc.volumes" -}}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ include "endodoc.blobClaimName" . }}
{{- if .Values.model.volume.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.model.volume.existingClaim }}
    readOnly: true
{{- end }}
- name: scratch
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* Resources of one worker container: worker.resources plus one GPU when GPUs are on. */}}
{{- define "endodoc.gpuResources" -}}
{{- $resources := deepCopy .Values.worker.resources -}}
{{- if .Values.worker.gpu.enabled -}}
{{- $limits := default (dict) $resources.limits -}}
{{- $_ := set $limits .Values.worker.gpu.resourceName 1 -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* nodeSelector and tolerations of GPU pods: the worker's own plus the GPU node ones. */}}
{{- define "endodoc.gpuScheduling" -}}
{{- $nodeSelector := deepCopy .Values.worker.nodeSelector -}}
{{- $tolerations := .Values.worker.tolerations -}}
{{- if .Values.worker.gpu.enabled -}}
{{- $nodeSelector = merge $nodeSelector .Values.worker.gpu.nodeSelector -}}
{{- $tolerations = concat .Values.worker.gpu.tolerations .Values.worker.tolerations -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
