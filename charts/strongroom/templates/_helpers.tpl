{{/* Release-scoped name; a release already called like the chart is not repeated ("strongroom-strongroom"). */}}
{{- define "strongroom.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "strongroom.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector of one component; call with (dict "root" $ "component" "api"). */}}
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

{{- define "strongroom.configName" -}}
{{- printf "%s-config" (include "strongroom.fullname" .) -}}
{{- end -}}

{{- define "strongroom.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* Paths inside the container; the root filesystem is read-only, so each is an emptyDir (see strongroom.volumes). */}}
{{- define "strongroom.keyringDir" -}}/var/run/strongroom/keyring{{- end -}}
{{- define "strongroom.workDir" -}}/var/lib/strongroom/work{{- end -}}
{{- define "strongroom.beatScheduleFile" -}}/var/lib/strongroom/beat/celerybeat-schedule{{- end -}}

{{/*
Environment of every strongroom container: non-secret options from the ConfigMap, secrets from the Secret (the
keyring as a mounted file, never an environment variable).
*/}}
{{- define "strongroom.envFrom" -}}
- configMapRef:
    name: {{ include "strongroom.configName" . }}
{{- end -}}

{{- define "strongroom.env" -}}
- name: STRONGROOM_KEYRING_FILE
  value: {{ printf "%s/keyring" (include "strongroom.keyringDir" .) }}
{{- if not .Values.redis.enabled }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ include "strongroom.secretName" . }}, key: redis-url}
{{- end }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "strongroom.secretName" . }}, key: aws-access-key-id, optional: true}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "strongroom.secretName" . }}, key: aws-secret-access-key, optional: true}
- name: STRONGROOM_ETH_RPC_URL
  valueFrom:
    secretKeyRef: {name: {{ include "strongroom.secretName" . }}, key: eth-rpc-url, optional: true}
{{- end -}}

{{/* Pod annotations: a changed ConfigMap or chart-managed Secret rolls the pods. */}}
{{- define "strongroom.podAnnotations" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.existingSecret }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Mounts every strongroom container has: the keyring (read-only) and a private /tmp. */}}
{{- define "strongroom.volumeMounts" -}}
- name: keyring
  mountPath: {{ include "strongroom.keyringDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "strongroom.volumes" -}}
- name: keyring
  secret:
    secretName: {{ include "strongroom.secretName" . }}
    defaultMode: 0440  # group-readable: fsGroup owns it, the process runs as that group
    items:
      - {key: keyring, path: keyring}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{/* Pod-level settings shared by every strongroom pod (volumes are added by each template). */}}
{{- define "strongroom.podSpecCommon" -}}
serviceAccountName: {{ include "strongroom.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
