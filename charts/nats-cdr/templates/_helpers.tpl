{{- define "nats-cdr.name" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "nats-cdr.commonLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: nats-cdr
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels of the operator's own objects. */}}
{{- define "nats-cdr.labels" -}}
app.kubernetes.io/name: nats-cdr-operator
{{ include "nats-cdr.commonLabels" . }}
{{- end -}}

{{- define "nats-cdr.selector" -}}
app.kubernetes.io/name: nats-cdr-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of the monitoring objects: the operator's plus monitoring.labels. */}}
{{- define "nats-cdr.monitoringLabels" -}}
{{ include "nats-cdr.commonLabels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "nats-cdr.natsClusterNamespace" -}}
{{- .Values.natsCluster.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "nats-cdr.cdrPipelineNamespace" -}}
{{- .Values.cdrPipeline.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* A workload image next to the operator's: same registry and tag, another name. */}}
{{- define "nats-cdr.siblingImage" -}}
{{- printf "%s/%s:%s" (dir .root.Values.image.repository) .name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* Labels of an alert: its severity and monitoring.rules.labels. */}}
{{- define "nats-cdr.alertLabels" -}}
severity: {{ .severity }}
{{- with .root.Values.monitoring.rules.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The runbook_url annotation of an alert, when monitoring.rules.runbookUrl is set. */}}
{{- define "nats-cdr.runbook" -}}
{{- with .root.Values.monitoring.rules.runbookUrl }}
{{- printf "runbook_url: %s" (printf "%s#%s" . (lower $.alert) | quote) | nindent 8 }}
{{- end }}
{{- end -}}
