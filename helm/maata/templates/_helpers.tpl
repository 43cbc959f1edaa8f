{{/* Names, labels and shared pieces of Maata's chart. */}}

{{- define "maata.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* the name of one component's objects: maata.name (dict "root" $ "component" "codec") */}}
{{- define "maata.name" -}}
{{- printf "%s-%s" (include "maata.fullname" .root) .component -}}
{{- end -}}

{{- define "maata.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: maata
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "maata.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "maata.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{- define "maata.gpuImage" -}}
{{- printf "%s:%s" .Values.gpuImage.repository .Values.gpuImage.tag -}}
{{- end -}}

{{- define "maata.terminationGrace" -}}
{{- add .Values.drain.preStopSeconds .Values.drain.noticeSeconds .Values.drain.graceSeconds 15 -}}
{{- end -}}

{{- define "maata.apiKeysSecret" -}}
{{- .Values.existingApiKeysSecret | default (include "maata.name" (dict "root" . "component" "api-keys")) -}}
{{- end -}}

{{- define "maata.redisUrl" -}}
{{- printf "redis://%s:6379/0" (include "maata.name" (dict "root" . "component" "redis")) -}}
{{- end -}}

{{/* the probes, drain and hardening every Maata container shares: maata.serviceContainer (dict "root" $ "port" 7101) */}}
{{- define "maata.grpcProbes" -}}
startupProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ div .root.Values.startupSeconds 5 }}
readinessProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
lifecycle:
  preStop:
    sleep: {seconds: {{ .root.Values.drain.preStopSeconds }}}
securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
{{- end -}}

{{- define "maata.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  {{- with .sysctls }}
  sysctls:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
