{{/* Names and labels. */}}
{{- define "asyncmesh.controlplane" -}}{{ .Release.Name }}-controlplane{{- end }}
{{- define "asyncmesh.rules" -}}{{ .Release.Name }}-rules{{- end }}
{{- define "asyncmesh.collector" -}}{{ .Release.Name }}-collector{{- end }}
{{- define "asyncmesh.envoyProxy" -}}{{ .Release.Name }}-proxy{{- end }}

{{- define "asyncmesh.labels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: asyncmesh
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "asyncmesh.image" -}}{{ .repository }}:{{ .tag }}{{- end }}

{{/*
Checks of the values that would otherwise fail at run time.
*/}}
{{- define "asyncmesh.check" -}}
{{- if not (has .Values.mode (list "sidecar" "istio" "envoy-gateway")) }}
{{- fail (printf "mode %q: want sidecar, istio or envoy-gateway" .Values.mode) }}
{{- end }}
{{- if not (has .Values.backends.store (list "embedded" "elasticsearch")) }}
{{- fail (printf "backends.store %q: want embedded or elasticsearch" .Values.backends.store) }}
{{- end }}
{{- if not (has .Values.backends.queue (list "embedded" "rabbitmq")) }}
{{- fail (printf "backends.queue %q: want embedded or rabbitmq" .Values.backends.queue) }}
{{- end }}
{{- $replicas := ternary .Values.envoyGateway.replicas .Values.app.replicas (eq .Values.mode "envoy-gateway") }}
{{- if and (gt (int $replicas) 1) (or (eq .Values.backends.store "embedded") (eq .Values.backends.queue "embedded")) }}
{{- /* Each pod's embedded database knows only its own requests, and the Service spreads the callers' status reads over all pods. */}}
{{- fail "more than one replica needs the shared backends: backends.store elasticsearch and backends.queue rabbitmq" }}
{{- end }}
{{- if and (eq .Values.mode "envoy-gateway") (not .Values.envoyGateway.replayURL) }}
{{- fail "mode envoy-gateway: envoyGateway.replayURL is required (the gateway's address, through which the collector replays)" }}
{{- end }}
{{- end }}

{{/*
The collector container. Its API port is on loopback beside a proxy in the
pod (sidecar, istio) and on the pod's address in envoy-gateway mode, where
the gateway's Envoy calls it over the network.
*/}}
{{- define "asyncmesh.collectorContainer" -}}
{{- $v := .Values -}}
{{- $host := ternary "0.0.0.0" "127.0.0.1" (eq $v.mode "envoy-gateway") -}}
- name: collector
  image: {{ include "asyncmesh.image" $v.images.collector }}
  imagePullPolicy: {{ $v.images.collector.pullPolicy }}
  args:
    - -listen={{ $host }}:{{ $v.collector.port }}
    - -operator-listen=0.0.0.0:{{ $v.collector.operatorPort }}
    - -replay-secret-env=ASYNCMESH_REPLAY_SECRET
    - -admin-token-env=ASYNCMESH_ADMIN_TOKEN
    - -workers={{ $v.collector.workers }}
    - -delivery-workers={{ $v.collector.deliveryWorkers }}
    - -store={{ $v.backends.store }}
    - -queue={{ $v.backends.queue }}
    - -retention={{ $v.backends.retention }}
    {{- if or (eq $v.backends.store "embedded") (eq $v.backends.queue "embedded") }}
    - -db=/var/lib/asyncmesh/asyncmesh.db
    {{- end }}
    {{- if eq $v.backends.store "elasticsearch" }}
    - -es-url-env=ASYNCMESH_ES_URL
    - -es-prefix={{ $v.backends.elasticsearch.prefix }}
    - -es-replicas={{ $v.backends.elasticsearch.replicas }}
    {{- end }}
    {{- if eq $v.backends.queue "rabbitmq" }}
    - -amqp-url-env=ASYNCMESH_AMQP_URL
    - -amqp-prefix={{ $v.backends.rabbitmq.prefix }}
    {{- end }}
    {{- if eq $v.mode "sidecar" }}
    {{- /* The rules and their secret declarations follow the control plane live. */}}
    - -replay-url=http://127.0.0.1:{{ $v.envoy.port }}
    - -xds={{ include "asyncmesh.controlplane" . }}:{{ $v.controlplane.xdsPort }}
    - -node-id=$(POD_NAME)
    - -node-cluster={{ $v.app.name }}
    {{- /* The dashboard's and asyncmesh rules' view of what each node applied (GET /v1/nodes, the operator's token). */}}
    - -controlplane-url=http://{{ include "asyncmesh.controlplane" . }}:{{ $v.controlplane.metricsPort }}
    {{- else }}
    {{- /* No control plane: the rules travel in each envelope; the secrets: section is read at start. */}}
    - -rules=/etc/asyncmesh/rules/rules.yaml
    {{- if eq $v.mode "istio" }}
    - -replay-url=http://{{ $v.app.name }}.{{ .Release.Namespace }}.svc:{{ $v.service.port }}
    {{- else }}
    - -replay-url={{ $v.envoyGateway.replayURL }}
    {{- end }}
    {{- end }}
    {{- range $v.collector.extraArgs }}
    - {{ . }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: ASYNCMESH_REPLAY_SECRET
      valueFrom: {secretKeyRef: {name: {{ $v.secrets.replay.name }}, key: {{ $v.secrets.replay.key }}}}
    - name: ASYNCMESH_ADMIN_TOKEN
      valueFrom: {secretKeyRef: {name: {{ $v.secrets.adminToken.name }}, key: {{ $v.secrets.adminToken.key }}}}
    {{- if eq $v.backends.store "elasticsearch" }}
    - name: ASYNCMESH_ES_URL
      valueFrom: {secretKeyRef: {name: {{ $v.backends.elasticsearch.url.secret }}, key: {{ $v.backends.elasticsearch.url.key }}}}
    {{- end }}
    {{- if eq $v.backends.queue "rabbitmq" }}
    - name: ASYNCMESH_AMQP_URL
      valueFrom: {secretKeyRef: {name: {{ $v.backends.rabbitmq.url.secret }}, key: {{ $v.backends.rabbitmq.url.key }}}}
    {{- end }}
    {{- range $v.collector.secretEnv }}
    - name: {{ .name }}
      valueFrom: {secretKeyRef: {name: {{ .secret }}, key: {{ .key }}}}
    {{- end }}
  ports:
    - {name: collector, containerPort: {{ $v.collector.port }}}
    - {name: operator, containerPort: {{ $v.collector.operatorPort }}}
  readinessProbe:
    # 503 while the store does not answer (collector/api.go).
    httpGet: {path: /readyz, port: operator}
    periodSeconds: 5
  livenessProbe:
    httpGet: {path: /healthz, port: operator}
    periodSeconds: 10
    failureThreshold: 6
  lifecycle:
    # Endpoints stop sending new requests before the collector stops taking
    # intake; it then finishes what it holds (up to 30 s).
    preStop: {sleep: {seconds: 5}}
  resources: {{ toJson $v.collector.resources }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: collector-data, mountPath: /var/lib/asyncmesh}
    - {name: tmp, mountPath: /tmp}
    {{- if ne $v.mode "sidecar" }}
    - {name: rules, mountPath: /etc/asyncmesh/rules, readOnly: true}
    {{- end }}
    {{- range $v.collector.secretFiles }}
    - {name: secret-{{ . }}, mountPath: /var/run/secrets/asyncmesh/{{ . }}, readOnly: true}
    {{- end }}
{{- end }}

{{/* The volumes of the collector container. */}}
{{- define "asyncmesh.collectorVolumes" -}}
- {name: collector-data, emptyDir: {}}
- {name: tmp, emptyDir: {}}
- name: rules
  configMap: {name: {{ include "asyncmesh.rules" . }}}
{{- range .Values.collector.secretFiles }}
- name: secret-{{ . }}
  secret: {secretName: {{ . }}}
{{- end }}
{{- end }}

{{/*
The filter's module as a pod volume named by the second argument: the filter
image (Kubernetes' ImageVolume), or filterVolume's source where the cluster
lacks image volumes. Every proxy mounts it at /etc/asyncmesh/filter, where
the control plane (sidecar) and controlplane render (istio, envoy-gateway)
say plugin.wasm is.
*/}}
{{- define "asyncmesh.filterVolume" -}}
{{- $v := (index . 0).Values -}}
{{- $name := index . 1 -}}
{{- if $v.filterVolume }}
- {{ merge (dict "name" $name) $v.filterVolume | toJson }}
{{- else }}
- name: {{ $name }}
  image: {reference: {{ include "asyncmesh.image" $v.images.filter }}, pullPolicy: {{ $v.images.filter.pullPolicy }}}
{{- end }}
{{- end }}
