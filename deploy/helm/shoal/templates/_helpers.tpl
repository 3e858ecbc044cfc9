{{/* The base name of every object: the release name, with "-shoal" unless it already says shoal. */}}
{{- define "shoal.fullname" -}}
{{- if contains "shoal" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-shoal" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels of every object; call with (dict "ctx" $ "component" "shard"). */}}
{{- define "shoal.labels" -}}
{{ include "shoal.selector" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
{{- end -}}

{{- define "shoal.selector" -}}
app.kubernetes.io/name: shoal
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* "true" when shard groups have copies: each group a StatefulSet whose members follow etcd, else "". */}}
{{- define "shoal.replicated" -}}
{{- if gt (int .Values.shards.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* The etcd endpoint every process of a replicated cluster uses: the client Service. */}}
{{- define "shoal.etcdEndpoint" -}}
{{ include "shoal.fullname" . }}-etcd:2379
{{- end -}}

{{/* The stable address of shard pod i: its StatefulSet DNS name through the headless Service. */}}
{{- define "shoal.shardAddress" -}}
{{- $name := printf "%s-shard" (include "shoal.fullname" .ctx) -}}
{{ $name }}-{{ .i }}.{{ $name }}.{{ .ctx.Release.Namespace }}.svc.{{ .ctx.Values.clusterDomain }}:{{ .ctx.Values.shards.port }}
{{- end -}}

{{/* The topology: shard i of n owns the slots [i*4096//n, (i+1)*4096//n), as deploy/k8s/topology.py writes. */}}
{{- define "shoal.topology" -}}
{{- $n := int .Values.shards.groups -}}
{{- $shards := list -}}
{{- range $i := until $n -}}
{{- $slots := list (div (mul $i 4096) $n) (div (mul (add1 $i) 4096) $n) -}}
{{- $shards = append $shards (dict "address" (include "shoal.shardAddress" (dict "ctx" $ "i" $i)) "slots" $slots) -}}
{{- end -}}
{{- dict "version" 1 "shards" $shards | toJson -}}
{{- end -}}

{{/* Whole cores with requests equal to limits: a Guaranteed pod. */}}
{{- define "shoal.resources" -}}
requests:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory }}
limits:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory }}
{{- end -}}

{{- define "shoal.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shoal.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* A health probe: native gRPC in plaintext; with TLS (which native probes cannot speak) the image's python
asks grpc.health.v1 over TLS with the pod's own certificate. Call with (dict "ctx" $ "port" 7100). */}}
{{- define "shoal.probe" -}}
{{- if .ctx.Values.tls.enabled -}}
exec:
  command:
    - python
    - -c
    - >-
      import sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;
      r=lambda f:open('/etc/shoal/tls/'+f,'rb').read();
      c=grpc.secure_channel('127.0.0.1:{{ .port }}',grpc.ssl_channel_credentials(r('ca.crt'),r('tls.key'),r('tls.crt')),
      options=[('grpc.ssl_target_name_override','{{ .ctx.Values.tls.serverName }}')]);
      sys.exit(g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=3).status!=h.HealthCheckResponse.SERVING)
{{- else -}}
grpc:
  port: {{ .port }}
{{- end -}}
{{- end -}}

{{- define "shoal.antiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "shoal.selector" . | nindent 12 }}
{{- end -}}

{{/* Pods matching these labels never share a node; call with (dict "ctx" $ "labels" (dict ...)). */}}
{{- define "shoal.requiredAntiAffinity" -}}
requiredDuringSchedulingIgnoredDuringExecution:
  - topologyKey: kubernetes.io/hostname
    labelSelector:
      matchLabels:
        app.kubernetes.io/name: shoal
        app.kubernetes.io/instance: {{ .ctx.Release.Name }}
        {{- range $k, $v := .labels }}
        {{ $k }}: {{ $v }}
        {{- end }}
{{- end -}}

{{/* Prometheus scrape annotations of a pod template. */}}
{{- define "shoal.metricsAnnotations" -}}
{{- if .Values.metrics.enabled -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}
