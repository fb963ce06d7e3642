{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "magistral.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "magistral.fullname" -}}
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

{{- define "magistral.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "magistral.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: magistral
{{- end }}

{{- define "magistral.selectorLabels" -}}
app.kubernetes.io/name: {{ include "magistral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "magistral.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "magistral.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "magistral.configMapName" -}}
{{- default (printf "%s-config" (include "magistral.fullname" .)) .Values.existingConfigMap }}
{{- end }}
{{- define "magistral.streamsConfigMapName" -}}
{{- default (printf "%s-streams" (include "magistral.fullname" .)) .Values.streams.existingConfigMap }}
{{- end }}
{{- define "magistral.transformsConfigMapName" -}}
{{- default (printf "%s-transforms" (include "magistral.fullname" .)) .Values.transforms.existingConfigMap }}
{{- end }}
{{/* Whether the pod mounts /etc/magistral/transforms. */}}
{{- define "magistral.hasTransforms" -}}
{{- if or .Values.transforms.files .Values.transforms.existingConfigMap }}true{{ end }}
{{- end }}
{{- define "magistral.contractsConfigMapName" -}}
{{- default (printf "%s-contracts" (include "magistral.fullname" .)) .Values.contracts.existingConfigMap }}
{{- end }}

{{/*
The NATS URL: natsConnection.url, else the service the official NATS chart creates for a
release of the same name (its fullname rule: the release name when it contains "nats",
else <release>-nats).
*/}}
{{- define "magistral.natsUrl" -}}
{{- if .Values.natsConnection.url }}
{{- .Values.natsConnection.url }}
{{- else if contains "nats" .Release.Name }}
{{- printf "nats://%s:4222" (.Release.Name | trunc 63 | trimSuffix "-") }}
{{- else }}
{{- printf "nats://%s-nats:4222" .Release.Name | trunc 70 }}
{{- end }}
{{- end }}

{{/* Shutdown timing -------------------------------------------------------------------- */}}

{{- define "magistral.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown }}
{{- $needed := add (int $s.preStopSleepSeconds) (int $s.drainTimeoutSeconds) }}
{{- if gt (int $s.terminationGracePeriodSeconds) 0 }}
{{- if le (int $s.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must be longer than preStopSleepSeconds + drainTimeoutSeconds (%d), or Kubernetes kills the gateway mid-drain" (int $s.terminationGracePeriodSeconds) (int $needed)) }}
{{- end }}
{{- int $s.terminationGracePeriodSeconds }}
{{- else }}
{{- add $needed 10 }}
{{- end }}
{{- end }}

{{/* TOML rendering --------------------------------------------------------------------- */}}

{{/*
One TOML value from a values.yaml value. Helm reads every YAML number as float64, so whole
numbers are printed as integers (the gateway's counts are integers; toToml would print
1048576 as 1.048576e+06). Strings are JSON-quoted, which is valid TOML.
*/}}
{{- define "magistral.tomlValue" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if kindIs "float64" $v }}
{{- if eq $v (floor $v) }}{{ printf "%.0f" $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "uint64" $v) }}
{{- $v }}
{{- else if kindIs "slice" $v }}
{{- "[" }}{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "magistral.tomlValue" $e }}{{ end }}{{ "]" }}
{{- else if kindIs "map" $v }}
{{- "{" }}{{ $first := true }}{{ range $k, $e := $v }}{{ if not $first }},{{ end }}{{ $first = false }} {{ include "magistral.tomlKey" $k }} = {{ include "magistral.tomlValue" $e }}{{ end }}{{ " }" }}
{{- else if kindIs "invalid" $v }}
{{- fail "a null value cannot be written to magistral.toml; remove the key instead" }}
{{- else }}
{{- fail (printf "cannot write a %s to magistral.toml" (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* A TOML key: bare when it can be, quoted otherwise. */}}
{{- define "magistral.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* Secret references ------------------------------------------------------------------ */}}

{{/* Where a secretKeyRef is mounted as a file. */}}
{{- define "magistral.secretFilePath" -}}
{{- printf "/run/secrets/magistral/%s/%s" .name .key }}
{{- end }}

{{/* The environment variable a secretKeyRef with `as: env` is passed in. */}}
{{- define "magistral.secretEnvName" -}}
{{- regexReplaceAll "[^A-Z0-9_]" (printf "SECRET_%s_%s" .name .key | upper) "_" }}
{{- end }}

{{/*
A secret source as a TOML inline table, from one values entry.
Input: dict "entry" <values entry> "where" <field, for errors> "token" <bool: a participant
token, where sha256 is allowed and a plain string is not> "literal" <bool: a plain string
is allowed and written as is>.
*/}}
{{- define "magistral.secretSource" -}}
{{- $e := .entry }}
{{- if kindIs "string" $e }}
{{- if .literal }}{{ toJson $e }}{{ else }}{{ fail (printf "%s: give a reference (secretKeyRef, env, file%s), not the secret itself" .where (ternary ", sha256" "" .token)) }}{{ end }}
{{- else if not (kindIs "map" $e) }}
{{- fail (printf "%s: expected a map with secretKeyRef, env or file" .where) }}
{{- else if hasKey $e "secretKeyRef" }}
{{- $ref := $e.secretKeyRef }}
{{- if or (not (kindIs "map" $ref)) (not $ref.name) (not $ref.key) }}
{{- fail (printf "%s.secretKeyRef: needs name and key" .where) }}
{{- end }}
{{- $as := default "file" $e.as }}
{{- if eq $as "file" }}
{{- printf "{ file = %s }" (include "magistral.secretFilePath" $ref | toJson) }}
{{- else if eq $as "env" }}
{{- printf "{ env = %s }" (include "magistral.secretEnvName" $ref | toJson) }}
{{- else }}
{{- fail (printf "%s.as: %q is neither file nor env" .where $as) }}
{{- end }}
{{- else if hasKey $e "env" }}
{{- printf "{ env = %s }" (toJson $e.env) }}
{{- else if hasKey $e "file" }}
{{- printf "{ file = %s }" (toJson $e.file) }}
{{- else if and .token (hasKey $e "sha256") }}
{{- printf "{ sha256 = %s }" (toJson $e.sha256) }}
{{- else }}
{{- fail (printf "%s: expected secretKeyRef, env or file%s" .where (ternary " or sha256" "" .token)) }}
{{- end }}
{{- end }}

{{/*
Every secretKeyRef the configuration uses, as JSON {"files": {secret: {key: true}},
"env": {VAR: {"name": secret, "key": key}}}, for the Deployment's volumes and env.
*/}}
{{- define "magistral.secretRefs" -}}
{{- $files := dict }}
{{- $env := dict }}
{{- $entries := list }}
{{- range $name, $p := .Values.participants }}
{{- range $t := $p.tokens }}{{ $entries = append $entries $t }}{{ end }}
{{- end }}
{{- range $section := list .Values.subscriptions .Values.responders }}
{{- range $name, $s := $section }}
{{- range $t := $s.signing_secrets }}{{ $entries = append $entries $t }}{{ end }}
{{- range $h, $v := $s.headers }}{{ $entries = append $entries $v }}{{ end }}
{{- end }}
{{- end }}
{{- range $name, $r := .Values.inbound }}
{{- range $field := list "application_token" "client_state" }}
{{- if hasKey $r $field }}{{ $entries = append $entries (get $r $field) }}{{ end }}
{{- end }}
{{- end }}
{{- range $e := $entries }}
{{- if and (kindIs "map" $e) (hasKey $e "secretKeyRef") (kindIs "map" $e.secretKeyRef) }}
{{- $ref := $e.secretKeyRef }}
{{- if eq (default "file" $e.as) "env" }}
{{- $_ := set $env (include "magistral.secretEnvName" $ref) (dict "name" $ref.name "key" $ref.key) }}
{{- else }}
{{- $keys := get $files $ref.name | default dict }}
{{- $_ := set $keys $ref.key true }}
{{- $_ := set $files $ref.name $keys }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson (dict "files" $files "env" $env) }}
{{- end }}

{{/* A volume name for a mounted Secret: stable, short, DNS-1123. */}}
{{- define "magistral.secretVolumeName" -}}
{{- printf "secret-%s" (sha256sum . | trunc 12) }}
{{- end }}

{{/* A stream or contract file's content: a string as is, a map as JSON. */}}
{{- define "magistral.fileContent" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toPrettyJson . }}{{ end }}
{{- end }}
