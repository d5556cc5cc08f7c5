{{/*
The chart's name, truncated to 63 characters (DNS label).
*/}}
{{- define "reconciler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: <release>-<chart> unless the release name already contains the
chart's name; truncated to 63 characters.
*/}}
{{- define "reconciler.fullname" -}}
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

{{- define "reconciler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reconciler.labels" -}}
helm.sh/chart: {{ include "reconciler.chart" . }}
{{ include "reconciler.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "reconciler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reconciler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "reconciler.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the image's user keeps its SSH files (~/.ssh) and its writable home. */}}
{{- define "reconciler.home" -}}/home/reconciler{{- end }}
{{- define "reconciler.stateDir" -}}/var/lib/reconciler{{- end }}

{{/*
The Secret the chart creates for values given inline (ssh, webhook, apiToken); "true"
when there is something to put in it.
*/}}
{{- define "reconciler.secretName" -}}
{{- include "reconciler.fullname" . }}
{{- end }}

{{- define "reconciler.createSecret" -}}
{{- $ssh := and (not .Values.ssh.existingSecret) (or .Values.ssh.privateKey .Values.ssh.knownHosts) }}
{{- $webhook := and (not .Values.webhook.existingSecret) .Values.webhook.secret }}
{{- $token := and (not .Values.apiToken.existingSecret) .Values.apiToken.token }}
{{- $state := and (not .Values.state.existingSecret) .Values.state.url }}
{{- $notify := and (not .Values.notify.existingSecret) .Values.notify.secret }}
{{- if or $ssh $webhook $token $state $notify }}true{{ end }}
{{- end }}

{{/*
The values no rendering can work with: refused with what to set instead.
*/}}
{{- define "reconciler.checkValues" -}}
{{- if not (or .Values.repo.url .Values.repo.existingSecret) }}
{{- fail "Set repo.url (the models repository) or repo.existingSecret (a Secret holding it)." }}
{{- end }}
{{- $replicas := int .Values.replicaCount }}
{{- if lt $replicas 1 }}
{{- fail (printf "replicaCount is %v: run at least 1 controller." .Values.replicaCount) }}
{{- end }}
{{- if and (gt $replicas 1) (not (include "reconciler.state.shared" .)) }}
{{- fail (printf "replicaCount is %d, but the SQLite state on a volume is for one controller: set state.url (or state.existingSecret) to a PostgreSQL state the replicas share, or replicaCount: 1." $replicas) }}
{{- end }}
{{- with .Values.state.url }}
{{- if not (regexMatch "^postgres(ql)?://" .) }}
{{- fail "state.url must be a postgresql:// URL (leave it empty for SQLite on the volume)." }}
{{- end }}
{{- end }}
{{- end }}

{{/* The state: "true" when it is a PostgreSQL server the replicas share. */}}
{{- define "reconciler.state.shared" -}}
{{- if or .Values.state.url .Values.state.existingSecret }}true{{ end }}
{{- end }}
{{- define "reconciler.state.secretName" -}}
{{- default (include "reconciler.secretName" .) .Values.state.existingSecret }}
{{- end }}
{{- define "reconciler.state.urlKey" -}}
{{- if .Values.state.existingSecret }}{{ .Values.state.existingSecretKey }}{{ else }}state-url{{ end }}
{{- end }}
{{/* The password's key in that Secret; "" when there is no password to mount. */}}
{{- define "reconciler.state.passwordKey" -}}
{{- if .Values.state.existingSecret }}{{ .Values.state.existingSecretPasswordKey }}
{{- else if .Values.state.password }}state-password{{ end }}
{{- end }}
{{- define "reconciler.stateFile" -}}{{ include "reconciler.stateDir" . }}/state.db{{- end }}
{{- define "reconciler.statePasswordFile" -}}/etc/reconciler/state/password{{- end }}
{{- define "reconciler.keysDir" -}}/etc/reconciler/keys{{- end }}

{{/* Notifications: the signing secret's Secret name and key, when configured. */}}
{{- define "reconciler.notify.enabled" -}}
{{- if or .Values.notify.existingSecret .Values.notify.secret }}true{{ end }}
{{- end }}
{{- define "reconciler.notify.secretName" -}}
{{- default (include "reconciler.secretName" .) .Values.notify.existingSecret }}
{{- end }}
{{- define "reconciler.notify.secretKey" -}}
{{- if .Values.notify.existingSecret }}{{ .Values.notify.existingSecretKey }}{{ else }}notify-secret{{ end }}
{{- end }}

{{/* SSH: the Secret holding the private key and known hosts, and which of them exist. */}}
{{- define "reconciler.ssh.secretName" -}}
{{- default (include "reconciler.secretName" .) .Values.ssh.existingSecret }}
{{- end }}
{{- define "reconciler.ssh.privateKeyKey" -}}
{{- if .Values.ssh.existingSecret }}{{ .Values.ssh.privateKeyKey }}{{ else }}ssh-private-key{{ end }}
{{- end }}
{{- define "reconciler.ssh.knownHostsKey" -}}
{{- if .Values.ssh.existingSecret }}{{ .Values.ssh.knownHostsKey }}{{ else }}ssh-known-hosts{{ end }}
{{- end }}
{{- define "reconciler.ssh.hasPrivateKey" -}}
{{- if or .Values.ssh.existingSecret .Values.ssh.privateKey }}true{{ end }}
{{- end }}
{{- define "reconciler.ssh.hasKnownHosts" -}}
{{- if or (and .Values.ssh.existingSecret .Values.ssh.knownHostsKey) (and (not .Values.ssh.existingSecret) .Values.ssh.knownHosts) }}true{{ end }}
{{- end }}

{{/* The webhook secret and the API token: Secret name and key, when configured. */}}
{{- define "reconciler.webhook.enabled" -}}
{{- if or .Values.webhook.existingSecret .Values.webhook.secret }}true{{ end }}
{{- end }}
{{- define "reconciler.webhook.secretName" -}}
{{- default (include "reconciler.secretName" .) .Values.webhook.existingSecret }}
{{- end }}
{{- define "reconciler.webhook.secretKey" -}}
{{- if .Values.webhook.existingSecret }}{{ .Values.webhook.existingSecretKey }}{{ else }}webhook-secret{{ end }}
{{- end }}
{{- define "reconciler.apiToken.enabled" -}}
{{- if or .Values.apiToken.existingSecret .Values.apiToken.token }}true{{ end }}
{{- end }}
{{- define "reconciler.apiToken.secretName" -}}
{{- default (include "reconciler.secretName" .) .Values.apiToken.existingSecret }}
{{- end }}
{{- define "reconciler.apiToken.secretKey" -}}
{{- if .Values.apiToken.existingSecret }}{{ .Values.apiToken.existingSecretKey }}{{ else }}api-token{{ end }}
{{- end }}

{{/* Commit verification: the ConfigMap the chart creates for inline content. */}}
{{- define "reconciler.signers.configMapName" -}}
{{- printf "%s-signers" (include "reconciler.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "reconciler.createSignersConfigMap" -}}
{{- $v := .Values.commitVerification }}
{{- if or (and $v.allowedSigners.content (not $v.allowedSigners.existingConfigMap)) (and $v.gpgKeyring.contentBase64 (not $v.gpgKeyring.existingConfigMap)) }}true{{ end }}
{{- end }}

{{/* The --listen address: host:port, an IPv6 host in brackets. */}}
{{- define "reconciler.listen" -}}
{{- $host := .Values.controller.listenAddress }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- $host = printf "[%s]" $host }}
{{- end }}
{{- printf "%s:%d" $host (int .Values.controller.port) }}
{{- end }}

{{/* The container's command-line arguments (after the image's ENTRYPOINT `reconciler`). */}}
{{- define "reconciler.args" -}}
- --repo
- $(RECONCILER_REPO)
{{- with .Values.repo.path }}
- --path
- {{ . | quote }}
{{- end }}
{{- with .Values.repo.deployment }}
- --deployment
- {{ . | quote }}
{{- end }}
{{- if include "reconciler.state.shared" . }}
{{- /* The URL comes as $RECONCILER_STATE from its Secret, not on the command line. */}}
{{- if include "reconciler.state.passwordKey" . }}
- --state-password-file
- {{ include "reconciler.statePasswordFile" . }}
{{- end }}
{{- else }}
- --state
- {{ include "reconciler.stateFile" . }}
{{- end }}
{{- if .Values.keysDir.existingSecret }}
- --keys-dir
- {{ include "reconciler.keysDir" . }}
{{- end }}
{{- with .Values.keyEnvPrefix }}
- --key-env-prefix
- {{ . | quote }}
{{- end }}
- run
- --listen
- {{ include "reconciler.listen" . | quote }}
{{- with .Values.controller.maxParallelApplies }}
- --max-parallel-applies
- {{ . | int | quote }}
{{- end }}
{{- range .Values.notify.urls }}
- --notify
- {{ . | quote }}
{{- end }}
{{- if include "reconciler.notify.enabled" . }}
- --notify-secret-file
- /etc/reconciler/notify/secret
{{- end }}
{{- if include "reconciler.webhook.enabled" . }}
- --webhook-secret-file
- /etc/reconciler/webhook/secret
{{- end }}
{{- if include "reconciler.apiToken.enabled" . }}
- --api-token-file
- /etc/reconciler/api/token
{{- end }}
{{- if include "reconciler.ssh.hasKnownHosts" . }}
- --known-hosts
- {{ include "reconciler.home" . }}/.ssh/known_hosts
{{- end }}
{{- $v := .Values.commitVerification }}
{{- if or $v.allowedSigners.content $v.allowedSigners.existingConfigMap }}
- --allowed-signers
- /etc/reconciler/signers/allowed_signers
{{- end }}
{{- if or $v.gpgKeyring.contentBase64 $v.gpgKeyring.existingConfigMap }}
- --gpg-keyring
- /etc/reconciler/gpg/keyring.gpg
{{- end }}
{{- range .Values.controller.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
