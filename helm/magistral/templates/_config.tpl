{{/*
magistral.toml, rendered from values. The chart owns listen (MAGISTRAL_LISTEN), nats.url
(MAGISTRAL_NATS__URL), the folders and the secret paths; everything else is the values'.
*/}}
{{- define "magistral.toml" -}}
{{- $cfg := .Values.config | default dict }}
{{- range $key := list "listen" "streams_dir" "contracts_dir" "nats" "contracts" "participants" "subscriptions" "responders" "directories" "inbound" "imports" }}
{{- if hasKey $cfg $key }}
{{- fail (printf "config.%s is set by the chart; use %s instead" $key (get (dict "listen" "listenAddress/containerPort" "streams_dir" "streams.files" "contracts_dir" "contracts.files" "nats" "natsConnection" "contracts" "contracts.bindings" "participants" "participants" "subscriptions" "subscriptions" "responders" "responders" "directories" "directories" "inbound" "inbound" "imports" "imports") $key)) }}
{{- end }}
{{- end }}
{{- if hasKey (get $cfg "console" | default dict) "session_key" }}
{{- fail "config.console.session_key: give a reference, not the key: console.sessionKeySecret (a Secret's key, the same for every replica)" }}
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
# Folders are relative to this file: /etc/magistral/{config,streams,contracts,transforms}
# (a transform_file is "../transforms/<file>").
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
{{- range $section := list "participants" "subscriptions" "responders" "directories" "inbound" "imports" }}
{{- range $name, $entry := (get $.Values $section | default dict) }}

[{{ $section }}.{{ include "magistral.tomlKey" $name }}]
{{- range $k, $v := omit $entry "tokens" "signing_secrets" "headers" "application_token" "client_state" }}
{{ include "magistral.tomlKey" $k }} = {{ include "magistral.tomlValue" $v }}
{{- end }}
{{- if hasKey $entry "tokens" }}
tokens = [
{{- range $i, $t := $entry.tokens }}
  {{ include "magistral.secretSource" (dict "entry" $t "where" (printf "%s.%s.tokens[%d]" $section $name $i) "token" true "literal" false) }},
{{- end }}
]
{{- end }}
{{- range $field := list "application_token" "client_state" }}
{{- if hasKey $entry $field }}
{{ $field }} = {{ include "magistral.secretSource" (dict "entry" (get $entry $field) "where" (printf "%s.%s.%s" $section $name $field) "token" false "literal" false) }}
{{- end }}
{{- end }}
{{- if hasKey $entry "signing_secrets" }}
signing_secrets = [
{{- range $i, $t := $entry.signing_secrets }}
  {{ include "magistral.secretSource" (dict "entry" $t "where" (printf "%s.%s.signing_secrets[%d]" $section $name $i) "token" false "literal" false) }},
{{- end }}
]
{{- end }}
{{- with $entry.headers }}
[{{ $section }}.{{ include "magistral.tomlKey" $name }}.headers]
{{- range $h, $v := . }}
{{ include "magistral.tomlKey" $h }} = {{ include "magistral.secretSource" (dict "entry" $v "where" (printf "%s.%s.headers.%s" $section $name $h) "token" false "literal" true) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}
