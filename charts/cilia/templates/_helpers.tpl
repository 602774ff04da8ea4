{{/* Chart label value. */}}
{{- define "cilia.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "cilia.labels" -}}
helm.sh/chart: {{ include "cilia.chart" . | quote }}
app.kubernetes.io/part-of: cilia
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{/* Selector labels of the agent pods (immutable once installed). */}}
{{- define "cilia.agent.selectorLabels" -}}
app.kubernetes.io/name: cilia-agent
k8s-app: cilium
{{- end -}}

{{/* Selector labels of the operator pods (immutable once installed). */}}
{{- define "cilia.operator.selectorLabels" -}}
app.kubernetes.io/name: cilia-operator
io.cilium/app: operator
{{- end -}}

{{/* Image reference from {repository, tag, digest, useDigest} and the chart. */}}
{{- define "cilia.image" -}}
{{- $img := index . 0 -}}
{{- $chart := index . 1 -}}
{{- if and $img.useDigest $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ default $chart.AppVersion $img.tag }}
{{- end -}}
{{- end -}}

{{/* kube-proxy-replacement as Cilium >= 1.15 spells it; legacy strict/disabled accepted. */}}
{{- define "cilia.kpr" -}}
{{- $v := toString .Values.kubeProxyReplacement -}}
{{- if has $v (list "true" "strict") -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* The legacy kube-proxy-replacement spelling in use, or empty. */}}
{{- define "cilia.kprLegacy" -}}
{{- $v := toString .Values.kubeProxyReplacement -}}
{{- if has $v (list "strict" "disabled") -}}{{ $v }}{{- end -}}
{{- end -}}

{{/* Whether the BPF NodePort datapath is on. */}}
{{- define "cilia.nodePortBPF" -}}
{{- if or (eq (include "cilia.kpr" .) "true") .Values.nodePort.enabled -}}true{{- end -}}
{{- end -}}

{{- define "cilia.routingMode" -}}
{{- default "tunnel" .Values.routingMode -}}
{{- end -}}

{{- define "cilia.tunnelProtocol" -}}
{{- default "vxlan" .Values.tunnelProtocol -}}
{{- end -}}

{{/* bpf.masquerade, false when unset. */}}
{{- define "cilia.bpfMasquerade" -}}
{{- if .Values.bpf.masquerade -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "cilia.agent.serviceAccountName" -}}
{{- .Values.serviceAccounts.cilium.name -}}
{{- end -}}

{{- define "cilia.operator.serviceAccountName" -}}
{{- .Values.serviceAccounts.operator.name -}}
{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/PORT when the API server is given explicitly. */}}
{{- define "cilia.apiServerEnv" -}}
{{- if .Values.k8sServiceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.k8sServiceHost | quote }}
{{- end }}
{{- if .Values.k8sServicePort }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.k8sServicePort | quote }}
{{- end }}
{{- end -}}

{{/* Canonical form of an IPv4 prefix (host bits cleared), as Go's net.ParseCIDR reads it;
empty for anything that is not an IPv4 prefix. */}}
{{- define "cilia.canonicalCIDR4" -}}
{{- if regexMatch "^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$" . -}}
{{- $parts := splitList "/" . -}}
{{- $len := int (index $parts 1) -}}
{{- $sizes := list 256 128 64 32 16 8 4 2 1 -}}
{{- $out := list -}}
{{- range $i, $o := splitList "." (index $parts 0) -}}
{{- $bits := max 0 (min 8 (sub $len (mul 8 $i))) -}}
{{- $block := index $sizes (int $bits) -}}
{{- $n := int $o -}}
{{- $out = append $out (sub $n (mod $n $block)) -}}
{{- end -}}
{{- printf "%s/%d" (join "." $out) $len -}}
{{- end -}}
{{- end -}}
