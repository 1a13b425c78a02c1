{{/* Name of the chart, or nameOverride. */}}
{{- define "wif.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object: the release name when it already says wif, else <release>-wif. */}}
{{- define "wif.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wif.webhook.fullname" -}}{{ include "wif.fullname" . }}-webhook{{- end -}}
{{- define "wif.controller.fullname" -}}{{ include "wif.fullname" . }}-controller{{- end -}}
{{/* Secret holding the webhook's serving certificate (every mode but existingSecret). */}}
{{- define "wif.webhook.certSecret" -}}
{{- if eq .Values.certs.mode "existingSecret" -}}
{{- .Values.certs.existingSecret.name -}}
{{- else -}}
{{- include "wif.webhook.fullname" . }}-tls
{{- end -}}
{{- end -}}
{{- define "wif.certificate" -}}{{ include "wif.webhook.fullname" . }}{{- end -}}

{{- define "wif.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "wif.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wif
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "wif.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wif.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wif.webhook.labels" -}}
{{ include "wif.labels" . }}
app.kubernetes.io/component: webhook
{{- end -}}
{{- define "wif.webhook.selectorLabels" -}}
{{ include "wif.selectorLabels" . }}
app.kubernetes.io/component: webhook
{{- end -}}
{{- define "wif.controller.labels" -}}
{{ include "wif.labels" . }}
app.kubernetes.io/component: controller
{{- end -}}
{{- define "wif.controller.selectorLabels" -}}
{{ include "wif.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "wif.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* The tenant, with the message `helm template` shows when it is missing (the schema says so first). */}}
{{- define "wif.tenantId" -}}
{{- required "azure.tenantId is required: --set azure.tenantId=<your Entra tenant id>" .Values.azure.tenantId -}}
{{- end -}}

{{/* Topology spread constraints for a component: (dict "spread" .Values.x.topologySpread "selector" (include ...)). */}}
{{- define "wif.topologySpread" -}}
{{- if .spread.enabled -}}
topologySpreadConstraints:
{{- range .spread.topologyKeys }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- $.selector | nindent 8 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The caBundle of the webhook configurations, for the modes where the chart writes it. */}}
{{- define "wif.caBundle" -}}
{{- if eq .Values.certs.mode "existingSecret" -}}
{{- required "certs.existingSecret.caBundle is required when certs.mode=existingSecret (PEM of the CA that signed the Secret's tls.crt)" .Values.certs.existingSecret.caBundle | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Annotations of the webhook configurations. */}}
{{- define "wif.webhookConfigAnnotations" -}}
{{- if eq .Values.certs.mode "certManager" -}}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "wif.certificate" . }}
{{- end }}
{{- end -}}

{{/* clientConfig of a webhook: (dict "root" $ "path" "/x"). */}}
{{- define "wif.clientConfig" -}}
clientConfig:
{{- if .root.Values.webhook.urlOverride }}
  url: {{ printf "%s%s" (trimSuffix "/" .root.Values.webhook.urlOverride) .path | quote }}
{{- else }}
  service:
    name: {{ include "wif.webhook.fullname" .root }}
    namespace: {{ .root.Release.Namespace }}
    path: {{ .path | quote }}
    port: {{ .root.Values.webhook.service.port }}
{{- end }}
{{- with include "wif.caBundle" .root }}
  caBundle: {{ . }}
{{- end }}
{{- end -}}

{{- define "wif.webhook.serviceAccountName" -}}{{ include "wif.webhook.fullname" . }}{{- end -}}
{{- define "wif.controller.serviceAccountName" -}}{{ include "wif.controller.fullname" . }}{{- end -}}

{{/* Audience of projected tokens and credentials: azure.audience, else the cloud's. */}}
{{- define "wif.audience" -}}
{{- if .Values.azure.audience -}}
{{- .Values.azure.audience -}}
{{- else -}}
{{- $cloud := lower .Values.azure.cloud -}}
{{- if has $cloud (list "azureusgovernmentcloud" "azureusgovernment") -}}
api://AzureADTokenExchangeUSGov
{{- else if eq $cloud "azurechinacloud" -}}
api://AzureADTokenExchangeChina
{{- else -}}
api://AzureADTokenExchange
{{- end -}}
{{- end -}}
{{- end -}}
