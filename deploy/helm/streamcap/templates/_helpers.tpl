{{/* streamcap chart helpers */}}
{{- define "streamcap.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamcap.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamcap.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamcap.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{/* the bus URL the processes get in STREAMCAP_BUS (streamcap reads it when --bus is not given) */}}
{{- define "streamcap.busEnv" -}}
- name: STREAMCAP_BUS
{{- if .Values.bus.existingSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.bus.existingSecret.name }}
      key: {{ .Values.bus.existingSecret.key }}
{{- else if .Values.bus.externalUrl }}
  value: {{ .Values.bus.externalUrl | quote }}
{{- else if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis:6379/%d" (include "streamcap.fullname" .) (int .Values.redis.db) | quote }}
{{- else }}
{{- fail "set redis.enabled, bus.externalUrl or bus.existingSecret.name" }}
{{- end }}
{{- end -}}

{{/* the KubeRay head service: <RayCluster name>-head-svc, GCS on 6379 */}}
{{- define "streamcap.rayAddress" -}}
{{ printf "%s-ray-head-svc:6379" (include "streamcap.fullname" .) }}
{{- end -}}

{{- define "streamcap.rayEnv" -}}
- name: RAY_health_check_period_ms
  value: {{ .Values.ray.healthCheck.periodMs | quote }}
- name: RAY_health_check_timeout_ms
  value: {{ .Values.ray.healthCheck.timeoutMs | quote }}
- name: RAY_health_check_failure_threshold
  value: {{ .Values.ray.healthCheck.failureThreshold | quote }}
- name: OPENBLAS_NUM_THREADS
  value: "1"
{{- end -}}

{{/* config and secret volumes of the controller and the gateways */}}
{{- define "streamcap.volumes" -}}
- name: config
{{- if .Values.config.existingSecret }}
  secret:
    secretName: {{ .Values.config.existingSecret }}
{{- else }}
  configMap:
    name: {{ include "streamcap.fullname" . }}-config
{{- end }}
{{- if .Values.secrets.existingSecret }}
- name: secrets
  secret:
    secretName: {{ .Values.secrets.existingSecret }}
    defaultMode: 0440                # group = fsGroup (10001): readable by streamcap only
{{- end }}
{{- end -}}

{{- define "streamcap.volumeMounts" -}}
# the folder, not a subPath: a changed ConfigMap reaches the file (a controller can re-read it)
- name: config
  mountPath: /etc/streamcap
  readOnly: true
{{- if .Values.secrets.existingSecret }}
- name: secrets
  mountPath: {{ .Values.secrets.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}
