{{/*
Name of the chart, overridable.
*/}}
{{- define "fsb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. Kept short: the StatefulSet's pod names and the PVC names
(data-<fullname>-0) are derived from it.
*/}}
{{- define "fsb.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fsb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fsb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fsb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fsb.labels" -}}
helm.sh/chart: {{ include "fsb.chart" . }}
{{ include "fsb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: falcon-sentinel-bridge
{{- end }}

{{- define "fsb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fsb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fsb.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Checks of values that would otherwise only fail at run time, or fail silently. Rendered (as an empty
string) by the ConfigMap, so `helm template` and `helm install` stop with a clear message.
*/}}
{{- define "fsb.validate" -}}
{{- $c := .Values.config }}
{{- $appId := toString (required "config.falcon.app_id is required: a name of 1-32 letters and digits, unique to this deployment (Falcon serves one consumer per appId)" $c.falcon.app_id) }}
{{- if not (regexMatch "^[A-Za-z0-9]{1,32}$" $appId) }}
{{- fail (printf "config.falcon.app_id %q must be 1-32 of [A-Za-z0-9]" $appId) }}
{{- end }}
{{- $_ := required "config.sentinel.endpoint is required: the logsIngestionEndpoint output of config/azure/main.json" $c.sentinel.endpoint }}
{{- $_ := required "config.sentinel.dcr_immutable_id is required: the immutableId output of config/azure/main.json" $c.sentinel.dcr_immutable_id }}
{{- if eq (toString $c.sentinel.credential.type) "workload_identity" }}
{{- $_ := required "workloadIdentity.clientId is required with config.sentinel.credential.type workload_identity: the client id of the managed identity federated with the service account" .Values.workloadIdentity.clientId }}
{{- end }}
{{- $grace := int (default 25 $c.shutdown_grace_secs) }}
{{- if ge $grace (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "config.shutdown_grace_secs (%d) must be below terminationGracePeriodSeconds (%d): Kubernetes sends SIGKILL when the grace period ends" $grace (int .Values.terminationGracePeriodSeconds)) }}
{{- end }}
{{- if not (hasSuffix (printf ":%d" (int .Values.adminPort)) (toString (default "0.0.0.0:8080" $c.admin.listen))) }}
{{- fail (printf "config.admin.listen (%s) must use adminPort (%d): the probes, the Service and the ServiceMonitor use adminPort" (toString $c.admin.listen) (int .Values.adminPort)) }}
{{- end }}
{{- if eq (toString $c.buffer.type) "disk" }}
{{- if not (hasPrefix "/var/lib/falcon-sentinel-bridge/" (toString $c.buffer.path)) }}
{{- fail "config.buffer.path must be under /var/lib/falcon-sentinel-bridge/, the persistent volume: a buffer elsewhere is lost with the pod" }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "/var/lib/falcon-sentinel-bridge/" (toString $c.dead_letter.path)) }}
{{- fail "config.dead_letter.path must be under /var/lib/falcon-sentinel-bridge/, the persistent volume" }}
{{- end }}
{{- end }}
