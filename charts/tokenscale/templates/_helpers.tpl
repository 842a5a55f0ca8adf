{{/* Names and labels shared by every template. */}}

{{- define "tokenscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokenscale.fullname" -}}
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

{{- define "tokenscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokenscale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokenscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenscale
{{- end }}

{{- define "tokenscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenscale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokenscale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tokenscale.replicas" -}}
{{- if .Values.ha.enabled }}{{ max 2 (int .Values.replicaCount) }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{- define "tokenscale.peeringName" -}}
{{- default (include "tokenscale.fullname" .) .Values.ha.peeringName }}
{{- end }}

{{/* Where the Prometheus credentials are mounted in the operator's pod. */}}
{{- define "tokenscale.secretsDir" -}}/etc/tokenscale/prometheus{{- end }}
