{{/*
The controller's pod, the same for both workloads: the StatefulSet (one replica, SQLite on
a volume) and the Deployment (replicaCount replicas sharing a PostgreSQL state).
*/}}
{{- define "reconciler.podTemplate" -}}
{{- $home := include "reconciler.home" . }}
{{- $v := .Values.commitVerification }}
{{- $shared := include "reconciler.state.shared" . -}}
metadata:
  labels:
    {{- include "reconciler.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- if include "reconciler.createSecret" . }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- end }}
    {{- if include "reconciler.createSignersConfigMap" . }}
    checksum/signers: {{ include (print $.Template.BasePath "/configmap-signers.yaml") . | sha256sum }}
    {{- end }}
    {{- if .Values.metrics.prometheusAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.controller.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "reconciler.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: reconciler
      image: {{ include "reconciler.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        {{- include "reconciler.args" . | nindent 8 }}
      env:
        - name: RECONCILER_REPO
          {{- if .Values.repo.existingSecret }}
          valueFrom:
            secretKeyRef:
              name: {{ .Values.repo.existingSecret }}
              key: {{ .Values.repo.existingSecretKey }}
          {{- else }}
          value: {{ .Values.repo.url | quote }}
          {{- end }}
        # The state and key options again as variables: `kubectl exec … reconciler status`
        # and the applies the controller starts find them there.
        - name: RECONCILER_STATE
          {{- if $shared }}
          valueFrom:
            secretKeyRef:
              name: {{ include "reconciler.state.secretName" . }}
              key: {{ include "reconciler.state.urlKey" . }}
        - name: RECONCILER_HOME
          value: {{ include "reconciler.stateDir" . }}
          {{- if include "reconciler.state.passwordKey" . }}
        - name: RECONCILER_STATE_PASSWORD_FILE
          value: {{ include "reconciler.statePasswordFile" . }}
          {{- end }}
          {{- else }}
          value: {{ include "reconciler.stateFile" . }}
          {{- end }}
        {{- if .Values.keysDir.existingSecret }}
        - name: RECONCILER_KEYS_DIR
          value: {{ include "reconciler.keysDir" . }}
        {{- end }}
        {{- with .Values.keyEnvPrefix }}
        - name: RECONCILER_KEYS_ENV_PREFIX
          value: {{ . | quote }}
        {{- end }}
        - name: HOME
          value: {{ $home }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.keyEnvSecret }}
      envFrom:
        - secretRef:
            name: {{ . }}
          prefix: {{ default "RECONCILER_KEY_" $.Values.keyEnvPrefix | quote }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.controller.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .Values.startupProbe | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: state
          mountPath: {{ include "reconciler.stateDir" . }}
        - name: home
          mountPath: {{ $home }}
        - name: tmp
          mountPath: /tmp
        {{- if or (include "reconciler.ssh.hasPrivateKey" .) (include "reconciler.ssh.hasKnownHosts" .) }}
        - name: ssh
          mountPath: {{ $home }}/.ssh
          readOnly: true
        {{- end }}
        {{- if include "reconciler.webhook.enabled" . }}
        - name: webhook-secret
          mountPath: /etc/reconciler/webhook
          readOnly: true
        {{- end }}
        {{- if include "reconciler.apiToken.enabled" . }}
        - name: api-token
          mountPath: /etc/reconciler/api
          readOnly: true
        {{- end }}
        {{- if or $v.allowedSigners.content $v.allowedSigners.existingConfigMap }}
        - name: allowed-signers
          mountPath: /etc/reconciler/signers
          readOnly: true
        {{- end }}
        {{- if or $v.gpgKeyring.contentBase64 $v.gpgKeyring.existingConfigMap }}
        - name: gpg-keyring
          mountPath: /etc/reconciler/gpg
          readOnly: true
        {{- end }}
        {{- if include "reconciler.state.passwordKey" . }}
        - name: state-password
          mountPath: {{ include "reconciler.statePasswordFile" . | dir }}
          readOnly: true
        {{- end }}
        {{- if .Values.keysDir.existingSecret }}
        - name: keys
          mountPath: {{ include "reconciler.keysDir" . }}
          readOnly: true
        {{- end }}
        {{- if include "reconciler.notify.enabled" . }}
        - name: notify-secret
          mountPath: /etc/reconciler/notify
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    # A writable home (git and gpg write there; the root filesystem is read-only).
    - name: home
      emptyDir: {}
    - name: tmp
      emptyDir: {}
    {{- if or $shared (not .Values.persistence.enabled) }}
    # Without a claim (a PostgreSQL state, or persistence off): the repository mirror and
    # the store cache, rebuilt when the pod starts.
    - name: state
      emptyDir: {}
    {{- end }}
    {{- if or (include "reconciler.ssh.hasPrivateKey" .) (include "reconciler.ssh.hasKnownHosts" .) }}
    # ~/.ssh: the private key and known_hosts. Files are root's; with fsGroup the kubelet
    # makes them group-readable (0440) for uid 10001 (OpenSSH accepts a key it does not own).
    - name: ssh
      secret:
        secretName: {{ include "reconciler.ssh.secretName" . }}
        defaultMode: 0400
        items:
          {{- if include "reconciler.ssh.hasPrivateKey" . }}
          - key: {{ include "reconciler.ssh.privateKeyKey" . }}
            path: {{ .Values.ssh.privateKeyFile }}
            mode: 0400
          {{- end }}
          {{- if include "reconciler.ssh.hasKnownHosts" . }}
          - key: {{ include "reconciler.ssh.knownHostsKey" . }}
            path: known_hosts
            mode: 0444
          {{- end }}
    {{- end }}
    {{- if include "reconciler.webhook.enabled" . }}
    - name: webhook-secret
      secret:
        secretName: {{ include "reconciler.webhook.secretName" . }}
        defaultMode: 0400
        items:
          - key: {{ include "reconciler.webhook.secretKey" . }}
            path: secret
    {{- end }}
    {{- if include "reconciler.apiToken.enabled" . }}
    - name: api-token
      secret:
        secretName: {{ include "reconciler.apiToken.secretName" . }}
        defaultMode: 0400
        items:
          - key: {{ include "reconciler.apiToken.secretKey" . }}
            path: token
    {{- end }}
    {{- if or $v.allowedSigners.content $v.allowedSigners.existingConfigMap }}
    - name: allowed-signers
      configMap:
        name: {{ default (include "reconciler.signers.configMapName" .) $v.allowedSigners.existingConfigMap }}
        items:
          - key: {{ if $v.allowedSigners.existingConfigMap }}{{ $v.allowedSigners.existingConfigMapKey }}{{ else }}allowed_signers{{ end }}
            path: allowed_signers
    {{- end }}
    {{- if or $v.gpgKeyring.contentBase64 $v.gpgKeyring.existingConfigMap }}
    - name: gpg-keyring
      configMap:
        name: {{ default (include "reconciler.signers.configMapName" .) $v.gpgKeyring.existingConfigMap }}
        items:
          - key: {{ if $v.gpgKeyring.existingConfigMap }}{{ $v.gpgKeyring.existingConfigMapKey }}{{ else }}keyring.gpg{{ end }}
            path: keyring.gpg
    {{- end }}
    {{- with include "reconciler.state.passwordKey" . }}
    - name: state-password
      secret:
        secretName: {{ include "reconciler.state.secretName" $ }}
        defaultMode: 0400
        items:
          - key: {{ . }}
            path: {{ include "reconciler.statePasswordFile" $ | base }}
    {{- end }}
    {{- with .Values.keysDir.existingSecret }}
    # Every entry a file of the key folder; the models can name no other.
    - name: keys
      secret:
        secretName: {{ . }}
        defaultMode: 0400
    {{- end }}
    {{- if include "reconciler.notify.enabled" . }}
    - name: notify-secret
      secret:
        secretName: {{ include "reconciler.notify.secretName" . }}
        defaultMode: 0400
        items:
          - key: {{ include "reconciler.notify.secretKey" . }}
            path: secret
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
