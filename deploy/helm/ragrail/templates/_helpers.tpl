{{/* Names ----------------------------------------------------------------------------- */}}
{{- define "ragrail.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Kept short: KubeRay derives longer names (<name>-serve-svc, <name>-<hash>-head-svc). */}}
{{- define "ragrail.fullname" -}}
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

{{- define "ragrail.gatewayName" -}}{{ include "ragrail.fullname" . }}-gateway{{- end -}}
{{- define "ragrail.rayServiceName" -}}{{ include "ragrail.fullname" . }}{{- end -}}
{{/* The Service KubeRay (>= 1.6) puts in front of the Serve proxies; it carries every head
     container port named serve-*, so serve-grpc (the services' gRPC port) too. */}}
{{- define "ragrail.serveServiceName" -}}{{ include "ragrail.rayServiceName" . }}-serve-svc{{- end -}}

{{- define "ragrail.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragrail.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------------------- */}}
{{- define "ragrail.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragrail.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ragrail.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ragrail.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ragrail
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragrail.gatewaySelectorLabels" -}}
{{ include "ragrail.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "ragrail.raySelectorLabels" -}}
{{ include "ragrail.selectorLabels" . }}
app.kubernetes.io/component: ray
{{- end -}}

{{/* Labels Prometheus Operator objects carry so kube-prometheus-stack picks them up. */}}
{{- define "ragrail.monitoringLabels" -}}
{{- $labels := deepCopy .Values.monitoring.labels -}}
{{- if .Values.monitoring.release -}}
{{- $_ := set $labels "release" .Values.monitoring.release -}}
{{- end -}}
{{- if $labels -}}
{{ toYaml $labels }}
{{- end -}}
{{- end -}}

{{/* Images ---------------------------------------------------------------------------- */}}
{{- define "ragrail.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ragrail.rayImage" -}}
{{- $img := .Values.rayService.image -}}
{{- printf "%s:%s" (default .Values.image.repository $img.repository) (default (default .Chart.AppVersion .Values.image.tag) $img.tag) -}}
{{- end -}}

{{- define "ragrail.rayImagePullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.rayService.image.pullPolicy -}}
{{- end -}}

{{/* Fixed paths inside the pods ------------------------------------------------------- */}}
{{- define "ragrail.configDir" -}}/etc/ragrail{{- end -}}
{{- define "ragrail.configPath" -}}/etc/ragrail/ragrail.yaml{{- end -}}
{{- define "ragrail.pipelinesDir" -}}/etc/ragrail/pipelines{{- end -}}
{{- define "ragrail.keysDir" -}}/etc/ragrail/auth{{- end -}}
{{- define "ragrail.tlsDir" -}}/etc/ragrail/tls{{- end -}}
{{- define "ragrail.dataDir" -}}/var/lib/ragrail{{- end -}}

{{/* Qdrant ---------------------------------------------------------------------------- */}}
{{/* The subchart's fullname, computed as the qdrant chart does. */}}
{{- define "ragrail.qdrantFullname" -}}
{{- if .Values.qdrant.fullnameOverride -}}
{{- .Values.qdrant.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "qdrant" .Values.qdrant.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ragrail.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s:6333" (include "ragrail.qdrantFullname" .) -}}
{{- else -}}
{{- .Values.externalQdrant.url -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key holding the Qdrant API key, as "name/key"; empty when there is none. */}}
{{- define "ragrail.qdrantApiKeyRef" -}}
{{- if .Values.qdrant.enabled -}}
{{- if .Values.qdrant.apiKey -}}
{{- printf "%s-apikey/api-key" (include "ragrail.qdrantFullname" .) -}}
{{- end -}}
{{- else if .Values.externalQdrant.existingSecret -}}
{{- printf "%s/%s" .Values.externalQdrant.existingSecret .Values.externalQdrant.existingSecretKey -}}
{{- else if .Values.externalQdrant.apiKey -}}
{{- printf "%s-qdrant/api-key" (include "ragrail.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The ragrail config -------------------------------------------------------------------
     files/ragrail.yaml (a copy of the packaged default), `config` merged over it, then the
     keys that follow from this chart's wiring. Returned as JSON; callers use fromJson. */}}

{{/* Deep merge of (list base over) into base: maps merge key by key, null removes a key,
     anything else replaces. Unlike mergeOverwrite, false, 0 and "" in `over` do replace. */}}
{{- define "ragrail.merge" -}}
{{- $base := index . 0 -}}
{{- $over := index . 1 -}}
{{- range $key, $value := $over -}}
{{- if kindIs "invalid" $value -}}
{{- $_ := unset $base $key -}}
{{- else if and (kindIs "map" $value) (kindIs "map" (index $base $key)) -}}
{{- $_ := set $base $key (include "ragrail.merge" (list (index $base $key) $value) | fromJson) -}}
{{- else -}}
{{- $_ := set $base $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $base -}}
{{- end -}}

{{- define "ragrail.config" -}}
{{- $base := .Files.Get "files/ragrail.yaml" | fromYaml -}}
{{- if hasKey $base "Error" -}}
{{- fail (printf "files/ragrail.yaml: %s" $base.Error) -}}
{{- end -}}
{{- $cfg := include "ragrail.merge" (list $base (deepCopy .Values.config)) | fromJson -}}
{{- $wired := dict
  "data_dir" (include "ragrail.dataDir" .)
  "models_dir" .Values.models.mountPath
  "serve" (dict "host" "0.0.0.0" "fast_path" .Values.rayService.fastPath)
  "gateway" (dict
    "host" "0.0.0.0"
    "serve_address" (printf "%s:%v" (include "ragrail.serveServiceName" .) (int (dig "serve" "grpc_port" 9000 $cfg)))
    "pipelines_dir" (include "ragrail.pipelinesDir" .)
    "auth" (dict "enabled" .Values.gateway.auth.enabled)
  )
-}}
{{- if .Values.gateway.auth.enabled -}}
{{- $_ := set $wired.gateway.auth "keys_file" (printf "%s/keys.yaml" (include "ragrail.keysDir" .)) -}}
{{- end -}}
{{- if .Values.gateway.tls.enabled -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" (include "ragrail.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "ragrail.tlsDir" .)) -}}
{{- if .Values.gateway.tls.clientAuth -}}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" (include "ragrail.tlsDir" .)) -}}
{{- end -}}
{{- $_ := set $wired.gateway "tls" $tls -}}
{{- end -}}
{{- $qdrantUrl := include "ragrail.qdrantUrl" . -}}
{{- if $qdrantUrl -}}
{{- $_ := set $wired "retrieval" (dict "qdrant_url" $qdrantUrl) -}}
{{- end -}}
{{- if .Values.models.embedding -}}
{{- $_ := set $wired "embedding" (dict "model" .Values.models.embedding) -}}
{{- end -}}
{{- if .Values.models.generation -}}
{{- $_ := set $wired "generation" (dict "model" .Values.models.generation) -}}
{{- end -}}
{{- $cfg = include "ragrail.merge" (list $cfg $wired) | fromJson -}}
{{/* The gateway's tls block replaces (never merges with) what `config` had. */}}
{{- if not .Values.gateway.tls.enabled -}}
{{- $_ := set $cfg.gateway "tls" dict -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* The RayService serveConfigV2, as JSON: the mapping documented in ragrail/kube.py
     (tests/chart compares this with kube.serve_config_v2 of the same config). */}}
{{- define "ragrail.serveConfig" -}}
{{- $cfg := include "ragrail.config" . | fromJson -}}
{{- $serve := .Files.Get "files/serve.yaml" | fromYaml -}}
{{- $env := include "ragrail.serveEnvJson" . | fromJson -}}
{{- $apps := list -}}
{{- range $svc := $serve.services -}}
{{- $block := dig $svc.name "deployment" dict $cfg -}}
{{- if hasKey $block "name" -}}
{{- fail (printf "config.%s.deployment: `name` is set by the chart (%s)" $svc.name $svc.deployment_name) -}}
{{- end -}}
{{- $deployment := include "ragrail.merge" (list (dict "name" $svc.deployment_name) $block) | fromJson -}}
{{- $apps = append $apps (dict
  "name" $svc.name
  "route_prefix" (printf "/%s" $svc.name)
  "import_path" $svc.import_path
  "runtime_env" (dict "env_vars" $env)
  "args" (include "ragrail.appConfig" (list $cfg $svc.name) | fromJson)
  "deployments" (list $deployment)
) -}}
{{- end -}}
{{- $serveSettings := dig "serve" dict $cfg -}}
{{- toJson (dict
  "proxy_location" (dig "proxy_location" $serve.proxy_location $serveSettings)
  "http_options" (dict "host" $serve.proxy_host "port" (int (dig "http_port" 8000 $serveSettings)))
  "grpc_options" (dict
    "port" (int (dig "grpc_port" 9000 $serveSettings))
    "grpc_servicer_functions" $serve.grpc_servicer_functions
    "request_timeout_s" (dig "request_timeout_s" 120 $serveSettings)
  )
  "logging_config" $serve.logging_config
  "applications" $apps
) -}}
{{- end -}}

{{/* One application's args: its own section plus the shared keys (ragrail.common.serving.
     app_config), so another service's or the gateway's options never change this app. */}}
{{- define "ragrail.appConfig" -}}
{{- $cfg := index . 0 -}}
{{- $args := dict -}}
{{- range $key := list "data_dir" "models_dir" (index . 1) -}}
{{- if hasKey $cfg $key -}}
{{- $_ := set $args $key (index $cfg $key) -}}
{{- end -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}

{{- define "ragrail.gatewayPort" -}}
{{- $cfg := include "ragrail.config" . | fromJson -}}
{{- int (dig "gateway" "port" 50051 $cfg) -}}
{{- end -}}

{{- define "ragrail.metricsPort" -}}
{{- $cfg := include "ragrail.config" . | fromJson -}}
{{- int (dig "gateway" "metrics_port" 9464 $cfg) -}}
{{- end -}}

{{- define "ragrail.serveGrpcPort" -}}
{{- $cfg := include "ragrail.config" . | fromJson -}}
{{- int (dig "serve" "grpc_port" 9000 $cfg) -}}
{{- end -}}

{{- define "ragrail.serveHttpPort" -}}
{{- $cfg := include "ragrail.config" . | fromJson -}}
{{- int (dig "serve" "http_port" 8000 $cfg) -}}
{{- end -}}

{{/* Pod pieces shared by the Ray head and workers ---------------------------------------- */}}
{{/* No checksum of the config here on purpose: KubeRay treats any change to a pod template
     as a new RayCluster (a zero-downtime upgrade that runs two of every worker, GPUs
     included). The config reaches the replicas through serveConfigV2 only, which Serve
     applies in place, application by application. */}}
{{- define "ragrail.rayPodMeta" -}}
labels:
  {{- include "ragrail.raySelectorLabels" .root | nindent 2 }}
{{- with .annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "ragrail.rayEnv" -}}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.models.mountPath | quote }}
# The container's CPU limit in whole CPUs (rounded up): the default of cpu_threads.
- name: RAGRAIL_CPU_LIMIT
  valueFrom:
    resourceFieldRef:
      resource: limits.cpu
      divisor: "1"
{{- range $k, $v := (include "ragrail.serveEnvJson" . | fromJson) }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- if .Values.rayService.fastPath }}
{{- range $k, $v := (.Files.Get "files/serve.yaml" | fromYaml).fast_path_env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}
{{- $ref := include "ragrail.qdrantApiKeyRef" . -}}
{{- if $ref }}
- name: RAGRAIL_QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ first (splitList "/" $ref) }}
      key: {{ last (splitList "/" $ref) }}
{{- end }}
{{- with .Values.rayService.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragrail.serveEnvJson" -}}
{{- $serve := .Files.Get "files/serve.yaml" | fromYaml -}}
{{- include "ragrail.merge" (list (deepCopy $serve.replica_env) .Values.rayService.serveEnv) -}}
{{- end -}}

{{- define "ragrail.rayVolumeMounts" -}}
- name: config
  mountPath: {{ include "ragrail.configDir" . }}
  readOnly: true
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: {{ .Values.models.readOnly }}
- name: data
  mountPath: {{ include "ragrail.dataDir" . }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "ragrail.rayVolumes" -}}
- name: config
  configMap:
    name: {{ include "ragrail.fullname" . }}-config
- name: models
  {{- if .Values.models.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
    readOnly: {{ .Values.models.readOnly }}
  {{- else if .Values.models.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "ragrail.fullname" . }}-models
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: data
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* Converts the builtin SmolLM2 weights once into the models volume (idempotent). */}}
{{- define "ragrail.prepareModelsInit" -}}
{{- if and .Values.models.prepareBuiltin (not .Values.models.readOnly) -}}
initContainers:
  - name: prepare-models
    image: {{ include "ragrail.rayImage" . }}
    imagePullPolicy: {{ include "ragrail.rayImagePullPolicy" . }}
    command: ["ragrail", "prepare-models", "--config", {{ include "ragrail.configPath" . | quote }}]
    env:
      - name: HOME
        value: /tmp
      {{- include "ragrail.rayEnv" . | nindent 6 }}
    securityContext:
      {{- toYaml .Values.rayService.securityContext | nindent 6 }}
    volumeMounts:
      {{- include "ragrail.rayVolumeMounts" . | nindent 6 }}
{{- end -}}
{{- end -}}

{{- define "ragrail.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The pipeline spec files, as ConfigMap data: the packaged specs (files/pipelines) with
     `pipelines` over them. Used by the specs ConfigMap and the pre-upgrade check. */}}
{{- define "ragrail.pipelineSpecs" -}}
{{- $specs := dict -}}
{{- range $path, $_ := .Files.Glob "files/pipelines/*.yaml" }}
{{- /* ConfigMap keys cannot hold "@": rag@1.yaml is mounted as rag_1.yaml (the gateway
       reads name and version from the file, not from its name). */ -}}
{{- $_ := set $specs (base $path | replace "@" "_") ($.Files.Get $path) -}}
{{- end }}
{{- range $name, $text := .Values.pipelines }}
{{- $_ := set $specs $name $text -}}
{{- end }}
{{- range $name, $text := $specs }}
{{ $name | quote }}: |
  {{- $text | trimSuffix "\n" | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A Ray group's node labels and custom resources (KubeRay's labels / resources: `ray start
     --labels` / `--resources`), what label_selector, accelerator_type and resources in a
     service's ray_actor_options select. Values become strings, as the CRD wants. */}}
{{- define "ragrail.rayLabelsResources" -}}
{{- with .rayLabels }}
labels:
  {{- range $k, $v := . }}
  {{ $k | quote }}: {{ $v | toString | quote }}
  {{- end }}
{{- end }}
{{- with .rayResources }}
resources:
  {{- range $k, $v := . }}
  {{ $k | quote }}: {{ $v | toString | quote }}
  {{- end }}
{{- end }}
{{- end -}}
