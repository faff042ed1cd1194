{{- define "strongroom.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strongroom.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "strongroom.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "strongroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strongroom.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "strongroom.secretName" -}}
{{- default (include "strongroom.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "strongroom.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* Environment of every strongroom container: config, S3, Redis and secrets (keyring as a mounted file). */}}
{{- define "strongroom.env" -}}
{{- range $name, $value := .Values.config }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .Values.s3.endpointUrl }}
- name: STRONGROOM_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.publicEndpointUrl }}
- name: STRONGROOM_S3_PUBLIC_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: STRONGROOM_KEYRING_FILE
  value: /var/run/strongroom/keyring/keyring
{{- if .Values.redis.enabled }}
- name: REDIS_URL
  value: {{ printf "redis://%s-redis:6379/0" (include "strongroom.fullname" .) | quote }}
{{- else if .Values.redisUrl }}
- name: REDIS_URL
  value: {{ .Values.redisUrl | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef: { name: {{ include "strongroom.secretName" . }}, key: redis-url }
{{- end }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: { name: {{ include "strongroom.secretName" . }}, key: aws-access-key-id, optional: true }
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: { name: {{ include "strongroom.secretName" . }}, key: aws-secret-access-key, optional: true }
{{- end -}}

{{- define "strongroom.volumeMounts" -}}
- name: keyring
  mountPath: /var/run/strongroom/keyring
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "strongroom.volumes" -}}
- name: keyring
  secret:
    secretName: {{ include "strongroom.secretName" . }}
    items: [{ key: keyring, path: keyring }]
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "strongroom.podSpecCommon" -}}
serviceAccountName: {{ include "strongroom.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
volumes: {{- include "strongroom.volumes" . | nindent 2 }}
{{- end -}}
