{{/*
magistral.toml, rendered from values. The chart owns listen (MAGISTRAL_LISTEN), nats.url
(MAGISTRAL_NATS__URL), the folders and the secret paths; everything else is the values'.
*/}}
{{- define "magistral.toml" -}}
{{- $cfg := .Values.config | default dict }}
{{- range $key := list "listen" "streams_dir" "contracts_dir" "nats" "contracts" "participants" "subscriptions" }}
{{- if hasKey $cfg $key }}
{{- fail (printf "config.%s is set by the chart; use %s instead" $key (get (dict "listen" "listenAddress/containerPort" "streams_dir" "streams.files" "contracts_dir" "contracts.files" "nats" "natsConnection" "contracts" "contracts.bindings" "participants" "participants" "subscriptions" "subscriptions") $key)) }}
{{- end }}
{{- end }}
{{- $limits := deepCopy (get $cfg "limits" | default dict) }}
{{- if hasKey $limits "drain_timeout" }}
{{- fail "config.limits.drain_timeout is set by the chart: use shutdown.drainTimeoutSeconds, which also sizes terminationGracePeriodSeconds" }}
{{- end }}
{{- $_ := set $limits "drain_timeout" (printf "%ds" (int .Values.shutdown.drainTimeoutSeconds)) }}
{{- $tables := dict "limits" $limits }}
{{- $nc := .Values.natsConnection -}}
# magistral.toml rendered by the {{ .Chart.Name }} chart {{ .Chart.Version }} for release {{ .Release.Name }}.
# Set by the chart in the pod's environment: MAGISTRAL_LISTEN, MAGISTRAL_NATS__URL (and
# MAGISTRAL_NATS__PASSWORD / MAGISTRAL_NATS__TOKEN from Secrets when configured).
# Folders are relative to this file: /etc/magistral/{config,streams,contracts}.
streams_dir = "../streams"
contracts_dir = "../contracts"
{{- range $k, $v := $cfg }}
{{- if kindIs "map" $v }}
{{- $_ := set $tables $k (ternary $limits $v (eq $k "limits")) }}
{{- else }}
{{ include "magistral.tomlKey" $k }} = {{ include "magistral.tomlValue" $v }}
{{- end }}
{{- end }}

[nats]
connect_timeout = {{ toJson (toString $nc.connectTimeout) }}
{{- with $nc.user }}
user = {{ toJson . }}
{{- end }}
{{- if $nc.credsSecret.name }}
creds_file = "/run/secrets/magistral-nats/creds/nats.creds"
{{- end }}
{{- with $nc.tls }}
{{- if .secretName }}
{{- with .ca }}
tls_ca_file = {{ printf "/run/secrets/magistral-nats/tls/%s" . | toJson }}
{{- end }}
{{- if and .cert .key }}
tls_cert_file = {{ printf "/run/secrets/magistral-nats/tls/%s" .cert | toJson }}
tls_key_file = {{ printf "/run/secrets/magistral-nats/tls/%s" .key | toJson }}
{{- else if or .cert .key }}
{{- fail "natsConnection.tls: set both cert and key, or neither" }}
{{- end }}
{{- end }}
tls_required = {{ ternary "true" "false" (.required | default false) }}
{{- end }}
{{- range $table, $entries := $tables }}

[{{ $table }}]
{{- range $k, $v := $entries }}
{{ include "magistral.tomlKey" $k }} = {{ include "magistral.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $i, $b := .Values.contracts.bindings }}

[[contracts]]
{{- range $k, $v := $b }}
{{ include "magistral.tomlKey" $k }} = {{ include "magistral.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $name, $p := .Values.participants }}

[participants.{{ include "magistral.tomlKey" $name }}]
{{- range $k, $v := omit $p "tokens" }}
{{ include "magistral.tomlKey" $k }} = {{ include "magistral.tomlValue" $v }}
{{- end }}
tokens = [
{{- range $i, $t := $p.tokens }}
  {{ include "magistral.secretSource" (dict "entry" $t "where" (printf "participants.%s.tokens[%d]" $name $i) "token" true "literal" false) }},
{{- end }}
]
{{- end }}
{{- range $name, $s := .Values.subscriptions }}

[subscriptions.{{ include "magistral.tomlKey" $name }}]
{{- range $k, $v := omit $s "signing_secrets" "headers" }}
{{ include "magistral.tomlKey" $k }} = {{ include "magistral.tomlValue" $v }}
{{- end }}
{{- with $s.signing_secrets }}
signing_secrets = [
{{- range $i, $t := . }}
  {{ include "magistral.secretSource" (dict "entry" $t "where" (printf "subscriptions.%s.signing_secrets[%d]" $name $i) "token" false "literal" false) }},
{{- end }}
]
{{- end }}
{{- with $s.headers }}
[subscriptions.{{ include "magistral.tomlKey" $name }}.headers]
{{- range $h, $v := . }}
{{ include "magistral.tomlKey" $h }} = {{ include "magistral.secretSource" (dict "entry" $v "where" (printf "subscriptions.%s.headers.%s" $name $h) "token" false "literal" true) }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}
