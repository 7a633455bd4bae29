{{/*
Shared helpers of the twinhub chart. Names are fixed (twinhub-<thing>): one release per
namespace, like z2jh's hub and proxy-public, so that the hub's values (which z2jh does not
template) can name them.
*/}}

{{/* chart name and version, for helm.sh/chart */}}
{{- define "twinhub.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: (dict "root" $ "component" "stac") */}}
{{- define "twinhub.selectorLabels" -}}
app.kubernetes.io/name: twinhub
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of every twinhub object: (dict "root" $ "component" "stac") */}}
{{- define "twinhub.labels" -}}
{{ include "twinhub.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "twinhub.chart" .root }}
{{- end -}}

{{/* repository:tag of an image dict, the tag defaulting to the chart's appVersion:
(dict "root" $ "image" .Values.twinhub.userImage) */}}
{{- define "twinhub.imageRef" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The hub and service image */}}
{{- define "twinhub.image" -}}
{{- include "twinhub.imageRef" (dict "root" . "image" .Values.twinhub.image) -}}
{{- end -}}

{{/* The user server and Dask image */}}
{{- define "twinhub.userImage" -}}
{{- include "twinhub.imageRef" (dict "root" . "image" .Values.twinhub.userImage) -}}
{{- end -}}

{{/* The GPU user image */}}
{{- define "twinhub.gpuImage" -}}
{{- include "twinhub.imageRef" (dict "root" . "image" .Values.twinhub.gpuImage) -}}
{{- end -}}

{{/* Name of the Secret holding service tokens and Keycloak secrets */}}
{{- define "twinhub.secretName" -}}
{{- default "twinhub-secrets" .Values.twinhub.existingSecret -}}
{{- end -}}

{{/* "true" when service `name` runs (Deployment, Service, runtime.json entry), else "":
(dict "root" $ "name" "accounting"). Accounting also needs Prometheus: in a pod there is
nothing else to meter. */}}
{{- define "twinhub.serviceActive" -}}
{{- $svc := index .root.Values.twinhub.services .name | default dict -}}
{{- if and $svc.enabled (or (ne .name "accounting") .root.Values.twinhub.prometheus.url) -}}
true
{{- end -}}
{{- end -}}

{{/* The active twinhub services, sorted, as a JSON list (fromJsonArray to use) */}}
{{- define "twinhub.enabledServices" -}}
{{- $root := . -}}
{{- $names := list -}}
{{- range $name, $svc := .Values.twinhub.services -}}
{{- if include "twinhub.serviceActive" (dict "root" $root "name" $name) -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- $names | sortAlpha | toJson -}}
{{- end -}}

{{/* The S3 endpoint: twinhub.s3.endpoint, else the in-cluster SeaweedFS when enabled */}}
{{- define "twinhub.s3Endpoint" -}}
{{- if .Values.twinhub.s3.endpoint -}}
{{- .Values.twinhub.s3.endpoint -}}
{{- else if .Values.twinhub.s3.seaweedfs.enabled -}}
http://twinhub-seaweedfs:8333
{{- end -}}
{{- end -}}

{{/* The services that use the S3 admin keys: stac (the data lake's loader), projects
(project buckets), accounting (storage metering), processing (a job's outputs: their size
and removal where users hold no keys of their own, as with the chart's SeaweedFS; the
users' buckets made at a first job), tiles (it reads the lake items' data it renders). The
cache never touches S3. */}}
{{- define "twinhub.s3Services" -}}
["accounting", "processing", "projects", "stac", "tiles"]
{{- end -}}

{{/* The projected Secrets volume (one file per secret), as a YAML volume. With `root` alone
(the hub): every key of twinhub-secrets. With `name` (a service pod): only what that service
reads (its own hub token, db-url, the S3 keys where it uses S3, the Prometheus token for
accounting, the SMTP password for the desk), so one compromised service holds no other service's token, no Keycloak client
secret and, unless it needs them, no S3 admin keys. (dict "root" $ "name" "stac") */}}
{{- define "twinhub.secretsVolume" -}}
{{- $root := .root | default . -}}
{{- $name := .name | default "" -}}
{{- $v := $root.Values.twinhub -}}
{{- $s3 := or (not $name) (has $name (include "twinhub.s3Services" $root | fromJsonArray)) -}}
name: twinhub-secrets
projected:
  sources:
    - secret:
        name: {{ include "twinhub.secretName" $root }}
        {{- if $name }}
        items:
          - {key: {{ printf "service-%s" $name }}, path: {{ printf "service-%s" $name }}}
        {{- end }}
    {{- if $v.database.cnpg.enabled }}
    - secret:
        name: twinhub-db-app
        items:
          - {key: uri, path: db-url}
    {{- else if $v.database.external.existingSecret }}
    - secret:
        name: {{ $v.database.external.existingSecret }}
        items:
          - {key: {{ $v.database.external.key }}, path: db-url}
    {{- end }}
    {{- /* The chart's SeaweedFS Secret when no S3 Secret is named: optional, so that the
    hub's fixed volume (z2jh values) need not change when SeaweedFS is switched on. */}}
    {{- if $s3 }}
    - secret:
        name: {{ $v.s3.existingSecret | default "twinhub-seaweedfs" }}
        {{- if not $v.s3.existingSecret }}
        optional: true
        {{- end }}
        items:
          - {key: access-key, path: s3-access-key}
          - {key: secret-key, path: s3-secret-key}
    {{- end }}
    {{- /* The desk's SMTP password: the desk's pods alone (the hub sends no mail), as the
    file TwinhubDesk.smtp_password_file (runtime.yaml). Not optional: a missing Secret
    keeps the pod from starting, and Kubernetes' events say which. */}}
    {{- $smtp := (index $v.services "desk" | default dict).smtp | default dict }}
    {{- if and (eq $name "desk") $smtp.existingSecret }}
    - secret:
        name: {{ $smtp.existingSecret }}
        items:
          - {key: {{ $smtp.key }}, path: {{ include "twinhub.smtpPasswordFile" $root | base }}}
    {{- end }}
    {{- if and $v.prometheus.existingSecret (or (not $name) (eq $name "accounting")) }}
    - secret:
        name: {{ $v.prometheus.existingSecret }}
        optional: true
        items:
          - {key: {{ $v.prometheus.key }}, path: prometheus-token}
    {{- end }}
{{- end -}}

{{/* Where the desk's pods find the SMTP password (the projected Secrets volume's mount,
twinhub.runtimeVolumeMounts): TwinhubDesk.smtp_password_file. */}}
{{- define "twinhub.smtpPasswordFile" -}}
/srv/twinhub/state/secrets/smtp-password
{{- end -}}

{{/* Volumes of every twinhub pod: state dir, its run/ dir, runtime ConfigMap, projected
Secrets. run/ is an emptyDir of its own: the runtime.json file mount would otherwise make the
container runtime create it as root, unwritable by uid 1000, and services write there
(their 0600 config files, pgstac's passfile, accounting's charges). */}}
{{- define "twinhub.runtimeVolumes" -}}
- name: twinhub-state
  emptyDir: {}
- name: twinhub-run
  emptyDir: {}
- name: twinhub-runtime
  configMap:
    name: twinhub-runtime
- {{ include "twinhub.secretsVolume" . | nindent 2 | trim }}
{{- end -}}

{{/* The same volumes for service <name>'s pod, with only its own secrets:
(dict "root" $ "name" "stac") */}}
{{- define "twinhub.serviceRuntimeVolumes" -}}
{{- $vols := include "twinhub.runtimeVolumes" .root | fromYamlArray -}}
{{- $secrets := include "twinhub.secretsVolume" . | fromYaml -}}
{{- range $vols }}
{{- if eq .name "twinhub-secrets" }}
- {{ $secrets | toYaml | nindent 2 | trim }}
{{- else }}
- {{ . | toYaml | nindent 2 | trim }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Their mounts (TWINHUB_STATE=/srv/twinhub/state) */}}
{{- define "twinhub.runtimeVolumeMounts" -}}
- name: twinhub-state
  mountPath: /srv/twinhub/state
- name: twinhub-run
  mountPath: /srv/twinhub/state/run
- name: twinhub-runtime
  mountPath: /srv/twinhub/state/run/runtime.json
  subPath: runtime.json
  readOnly: true
- name: twinhub-secrets
  mountPath: /srv/twinhub/state/secrets
  readOnly: true
{{- end -}}

{{/* Pod security context of twinhub pods */}}
{{- define "twinhub.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context of twinhub containers */}}
{{- define "twinhub.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Checks of values that z2jh and keycloakx take literally (they cannot be templated
there): fail naming the value to change. Included once, from runtime.yaml. */}}
{{- define "twinhub.checks" -}}
{{- $hub := .Values.jupyterhub | default dict -}}
{{- if and $hub (ne (toString $hub.enabled) "false") -}}
{{- $hubPod := $hub.hub | default dict -}}
{{- range $want := include "twinhub.runtimeVolumes" . | fromYamlArray -}}
{{- $got := dict -}}
{{- range ($hubPod.extraVolumes | default list) -}}
{{- if eq .name $want.name -}}{{- $got = . -}}{{- end -}}
{{- end -}}
{{- if ne (toJson $got) (toJson $want) -}}
{{- fail (printf "jupyterhub.hub.extraVolumes must hold this %s volume for these twinhub values (z2jh does not template it):\n%s\nit holds:\n%s" $want.name (toYaml $want) (toYaml $got)) -}}
{{- end -}}
{{- end -}}
{{- range $want := include "twinhub.runtimeVolumeMounts" . | fromYamlArray -}}
{{- $found := false -}}
{{- range ($hubPod.extraVolumeMounts | default list) -}}
{{- if eq (toJson .) (toJson $want) -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "jupyterhub.hub.extraVolumeMounts must hold this mount (z2jh does not template it):\n%s" (toYaml $want)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* dask-gateway.gateway.env is not templated either: with an external database it must
name that database's Secret, or the gateway pod never starts. */ -}}
{{- if and (include "twinhub.daskGatewayEnabled" .) (not .Values.twinhub.database.cnpg.enabled) -}}
{{- $gwenv := toString ((index .Values "dask-gateway" | default dict).gateway | default dict).env -}}
{{- if contains "twinhub-db-app" $gwenv -}}
{{- fail (printf "dask-gateway.gateway.env reads TWINHUB_DB_URL from Secret twinhub-db-app, which the chart makes only with twinhub.database.cnpg.enabled: read it from %q (key %q), as values/production.yaml does" .Values.twinhub.database.external.existingSecret .Values.twinhub.database.external.key) -}}
{{- end -}}
{{- end -}}
{{- $kc := index .Values "keycloakx" | default dict -}}
{{- if and $kc (ne (toString $kc.enabled) "false") .Values.twinhub.existingSecret -}}
{{- /* twinhub-secrets is not made then: Keycloak would wait for it for ever. */ -}}
{{- if contains "twinhub-secrets" (toString $kc.extraEnv) -}}
{{- fail (printf "keycloakx.extraEnv reads Secret twinhub-secrets, which is not made with twinhub.existingSecret: read keycloak-client-secret from %q" .Values.twinhub.existingSecret) -}}
{{- end -}}
{{- end -}}
{{- if and $kc (ne (toString $kc.enabled) "false") -}}
{{- $kcdb := $kc.database | default dict -}}
{{- $cnpg := .Values.twinhub.database.cnpg -}}
{{- if and (eq (toString $kcdb.hostname) "twinhub-db-rw") (not $cnpg.enabled) -}}
{{- fail "keycloakx.database points at twinhub-db-rw, but twinhub.database.cnpg.enabled is false: give keycloakx.database your PostgreSQL (hostname, database, username, existingSecret)" -}}
{{- end -}}
{{- if and (eq (toString $kcdb.existingSecret) "twinhub-db-keycloak") (not (and $cnpg.enabled $cnpg.keycloakDatabase)) -}}
{{- fail "keycloakx.database.existingSecret is twinhub-db-keycloak, which the chart makes only with twinhub.database.cnpg.enabled and keycloakDatabase" -}}
{{- end -}}
{{- end -}}
{{- /* keycloakx takes args literally: when it serves <publicUrl>/auth, Keycloak must be
pinned to that URL (no hostname taken from forwarded headers). With twinhub.keycloak.url set
the URL may be another Keycloak's: not checked (docs/kubernetes.md says to pin it too). */ -}}
{{- $kcUrl := include "twinhub.keycloakUrl" . -}}
{{- if and $kc (ne (toString $kc.enabled) "false") $kcUrl (not .Values.twinhub.keycloak.url) -}}
{{- $args := $kc.args | default list -}}
{{- if or (not (has (printf "--hostname=%s" $kcUrl) $args)) (has "--hostname-strict=false" $args) -}}
{{- fail (printf "keycloakx.args must pin Keycloak to its public URL: put --hostname=%s in place of --hostname-strict=false (values/production.yaml shows them)" $kcUrl) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.twinhub.s3.endpoint .Values.twinhub.s3.seaweedfs.enabled -}}
{{- fail "twinhub.s3.endpoint and twinhub.s3.seaweedfs.enabled exclude each other: set one" -}}
{{- end -}}
{{- if and (not .Values.twinhub.database.cnpg.enabled) (not .Values.twinhub.database.external.existingSecret) -}}
{{- fail "twinhub.database: enable cnpg or name external.existingSecret (a Secret with a postgresql:// URI)" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the dask-gateway subchart is installed (its condition), else "" */}}
{{- define "twinhub.daskGatewayEnabled" -}}
{{- if .Values.twinhub.daskGateway.enabled -}}true{{- end -}}
{{- end -}}

{{/* "true" when the keycloakx subchart is installed (its condition), else "" */}}
{{- define "twinhub.keycloakEnabled" -}}
{{- $kc := .Values.keycloakx | default dict -}}
{{- if ne (toString $kc.enabled) "false" -}}true{{- end -}}
{{- end -}}

{{/* Keycloak's base URL (no /realms/...): twinhub.keycloak.url, else publicUrl + /auth when
keycloakx is installed and publicUrl set, else "" (no Keycloak login) */}}
{{- define "twinhub.keycloakUrl" -}}
{{- $v := .Values.twinhub -}}
{{- if $v.keycloak.url -}}
{{- trimSuffix "/" $v.keycloak.url -}}
{{- else if and $v.publicUrl (include "twinhub.keycloakEnabled" .) -}}
{{- printf "%s/auth" (trimSuffix "/" $v.publicUrl) -}}
{{- end -}}
{{- end -}}
