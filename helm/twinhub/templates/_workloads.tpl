{{- /*
Twinhub's hub services as workloads (services.yaml) and the peers the NetworkPolicies name
(networkpolicies.yaml). Every twinhub service pod runs `twinhub service run <name>`, listens
on 8000 and answers its health route (below) without auth.
*/}}

{{- define "twinhub.workloads.port" -}}8000{{- end }}

{{- /*
The unauthenticated health route of service <name> under /services/<name>/: each part's
AsgiService.health_path ("health", but stac-fastapi's own "_mgmt/ping" for stac).
tests/kubernetes/test_workloads.py compares these with the Python classes.
*/}}
{{- define "twinhub.workloads.healthPath" -}}
{{- $paths := dict "stac" "_mgmt/ping" -}}
{{- printf "/services/%s/%s" . (get $paths . | default "health") -}}
{{- end }}

{{- /*
The deployed services: C1's twinhub.enabledServices, the same list runtime.json's "ports"
come from, so a service has a Deployment exactly when the hub registers it.
*/}}
{{- define "twinhub.workloads.activeNames" -}}
{{- include "twinhub.enabledServices" . -}}
{{- end }}

{{- /* "true" when service <name> is deployed, else "". (dict "root" $ "name" "stac") */}}
{{- define "twinhub.workloads.active" -}}
{{- if has .name (include "twinhub.workloads.activeNames" .root | fromJsonArray) }}true{{ end -}}
{{- end }}

{{- /* "true" when service <name> talks to the Kubernetes API (a ServiceAccount of its own,
its token mounted), else "": processing alone (job pods). */}}
{{- define "twinhub.workloads.kubeApi" -}}
{{- if eq . "processing" }}true{{ end -}}
{{- end }}

{{- /* Deployment twinhub-<name>. Usage: (dict "root" $ "name" $name "svc" $svc) */}}
{{- define "twinhub.workloads.deployment" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := .svc -}}
{{- $health := include "twinhub.workloads.healthPath" $name -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: twinhub-{{ $name }}
  labels:
    {{- include "twinhub.labels" (dict "root" $root "component" $name) | nindent 4 }}
spec:
  replicas: {{ $svc.replicas | default 1 }}
  selector:
    matchLabels:
      {{- include "twinhub.selectorLabels" (dict "root" $root "component" $name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "twinhub.selectorLabels" (dict "root" $root "component" $name) | nindent 8 }}
        # z2jh's hub NetworkPolicy admits pods with this label to the hub API (8081).
        hub.jupyter.org/network-access-hub: "true"
      annotations:
        # A changed runtime.json must restart the pods: they read it once at start.
        checksum/runtime: {{ include (print $root.Template.BasePath "/runtime.yaml") $root | sha256sum }}
    spec:
      {{- if include "twinhub.workloads.kubeApi" $name }}
      # It creates each job's pod and Secret: its own ServiceAccount (processing.yaml's Role,
      # this namespace only) and that account's token, in this pod alone.
      serviceAccountName: twinhub-{{ $name }}
      automountServiceAccountToken: true
      {{- else }}
      # Services talk to the hub API, never to Kubernetes: no API token in the pod.
      automountServiceAccountToken: false
      {{- end }}
      enableServiceLinks: false
      securityContext:
        {{- include "twinhub.podSecurityContext" $root | nindent 8 }}
      {{- if gt (int ($svc.replicas | default 1)) 1 }}
      # Spread replicas over nodes so one node's loss leaves the service up.
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "twinhub.selectorLabels" (dict "root" $root "component" $name) | nindent 14 }}
      {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "twinhub.image" $root }}
          imagePullPolicy: {{ $root.Values.twinhub.image.pullPolicy | default "IfNotPresent" }}
          command: ["twinhub", "service", "run", {{ $name | quote }}]
          env:
            - name: TWINHUB_STATE
              value: /srv/twinhub/state
            # The image's home is on the read-only root filesystem: ~/.cache (e.g. the
            # sample-data builds) must land somewhere writable.
            - name: HOME
              value: /tmp
          ports:
            - name: http
              containerPort: {{ include "twinhub.workloads.port" . }}
              protocol: TCP
          # The first start runs the part's prepare step (migrations, seeding): give it time
          # before liveness counts.
          startupProbe:
            httpGet: {path: {{ $health }}, port: http}
            periodSeconds: 5
            failureThreshold: 60
          readinessProbe:
            httpGet: {path: {{ $health }}, port: http}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          livenessProbe:
            httpGet: {path: {{ $health }}, port: http}
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 6
          {{- with $svc.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- include "twinhub.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "twinhub.runtimeVolumeMounts" $root | nindent 12 }}
            # The root filesystem is read-only; Python and libraries still want a scratch dir.
            - name: tmp
              mountPath: /tmp
            {{- if eq $name "tiles" }}
            # GRIB copies (a few at once, each within TwinhubTiles.max_read_bytes): a volume
            # of their own, bounded, so they cannot fill the node's disk.
            - name: tiles-grib
              mountPath: /srv/twinhub/state/run/tiles-grib
            {{- end }}
      volumes:
        {{- include "twinhub.serviceRuntimeVolumes" (dict "root" $root "name" $name) | nindent 8 }}
        - name: tmp
          emptyDir: {}
        {{- if eq $name "tiles" }}
        - name: tiles-grib
          emptyDir:
            sizeLimit: {{ $svc.gribScratch | default "5Gi" | quote }}
        {{- end }}
{{- end }}

{{- /* Service twinhub-<name> (ClusterIP, 8000). Usage: (dict "root" $ "name" $name) */}}
{{- define "twinhub.workloads.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: twinhub-{{ .name }}
  labels:
    {{- include "twinhub.labels" (dict "root" .root "component" .name) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "twinhub.selectorLabels" (dict "root" .root "component" .name) | nindent 4 }}
  ports:
    - name: http
      port: {{ include "twinhub.workloads.port" . }}
      targetPort: http
      protocol: TCP
{{- end }}

{{- /* PodDisruptionBudget twinhub-<name>. Usage: (dict "root" $ "name" $name "svc" $svc) */}}
{{- define "twinhub.workloads.pdb" -}}
{{- $pdb := .svc.podDisruptionBudget | default dict -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: twinhub-{{ .name }}
  labels:
    {{- include "twinhub.labels" (dict "root" .root "component" .name) | nindent 4 }}
spec:
  minAvailable: {{ hasKey $pdb "minAvailable" | ternary $pdb.minAvailable 1 }}
  selector:
    matchLabels:
      {{- include "twinhub.selectorLabels" (dict "root" .root "component" .name) | nindent 6 }}
{{- end }}

{{- /*
NetworkPolicy peers. One release per namespace, so podSelectors (same namespace) are enough;
z2jh's pods are chosen by its legacy labels (component/app/release), which every z2jh version has.
Each prints a YAML list item to be nindent'ed under `from:` or `to:`.
*/}}
{{- define "twinhub.netpol.hub" -}}
- podSelector:
    matchLabels:
      component: hub
      app: jupyterhub
      release: {{ .Release.Name }}
{{- end }}

{{- define "twinhub.netpol.proxy" -}}
- podSelector:
    matchLabels:
      component: proxy
      app: jupyterhub
      release: {{ .Release.Name }}
{{- end }}

{{- define "twinhub.netpol.userPods" -}}
- podSelector:
    matchLabels:
      component: singleuser-server
      app: jupyterhub
      release: {{ .Release.Name }}
{{- end }}

{{- define "twinhub.netpol.services" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: twinhub
      app.kubernetes.io/instance: {{ .Release.Name }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: {{ include "twinhub.workloads.activeNames" . }}
{{- end }}

{{- define "twinhub.netpol.database" -}}
- podSelector:
    matchLabels:
      cnpg.io/cluster: twinhub-db
{{- end }}

{{- define "twinhub.netpol.keycloak" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: keycloakx
      app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "twinhub.netpol.seaweedfs" -}}
- podSelector:
    matchLabels:
      {{- include "twinhub.selectorLabels" (dict "root" . "component" "seaweedfs") | nindent 6 }}
{{- end }}

{{- define "twinhub.netpol.traefik" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: dask-gateway
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/component: traefik
{{- end }}

{{- define "twinhub.netpol.gatewayApi" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: dask-gateway
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/component: gateway
{{- end }}

{{- /* Job runner pods: made by the processing service (KubeJobBackend), not by Helm. Both
labels: the component is what the service lists its pods by, the job id is on no other pod
(a job's Dask pods carry the user and project labels only). */}}
{{- define "twinhub.netpol.jobPods" -}}
- podSelector:
    matchLabels:
      twinhub.io/component: processing-job
    matchExpressions:
      - key: twinhub.io/job
        operator: Exists
  {{- if ne (include "twinhub.processing.jobNamespace" .) .Release.Namespace }}
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ include "twinhub.processing.jobNamespace" . }}
  {{- end }}
{{- end }}

{{- /* The namespace of job pods and their Secrets (KubeJobBackend.namespace): the value
twinhub.services.processing.jobNamespace, default "<release namespace>-jobs". The release's
own namespace only by name and with allowSharedJobNamespace: the service's Role lists pods
there, and a pod's env holds its secrets (user servers' API tokens). */}}
{{- define "twinhub.processing.jobNamespace" -}}
{{- $p := .Values.twinhub.services.processing -}}
{{- $ns := $p.jobNamespace | default (printf "%s-jobs" .Release.Namespace) -}}
{{- if and (eq $ns .Release.Namespace) (not $p.allowSharedJobNamespace) -}}
{{- fail (printf "twinhub.services.processing.jobNamespace is the release's namespace %q: the processing service's Role would list its pods, and with them the hub's and user servers' environments (their API tokens). Leave it \"\" (job pods in %q, made by the chart) or name another namespace; to share this one anyway, also set twinhub.services.processing.allowSharedJobNamespace: true" .Release.Namespace (printf "%s-jobs" .Release.Namespace)) -}}
{{- end -}}
{{- if gt (len $ns) 63 -}}
{{- fail (printf "the job namespace %q is longer than 63 characters: name one in twinhub.services.processing.jobNamespace" $ns) -}}
{{- end -}}
{{- $ns -}}
{{- end }}

{{- /* A quantity times a count (the job namespace's quota from jobPods): (dict "q" <quantity>
"n" <int>); "250m" x 20 = "5000m", "1Gi" x 20 = "20Gi", "0.5" x 4 = "2". */}}
{{- define "twinhub.quantityTimes" -}}
{{- $q := toString .q -}}
{{- $num := regexFind "^[0-9.]+" $q -}}
{{- $unit := trimPrefix $num $q -}}
{{- if contains "." $num -}}
{{- printf "%s%s" (toString (mulf (float64 $num) .n)) $unit -}}
{{- else -}}
{{- printf "%d%s" (mul (atoi $num) .n) $unit -}}
{{- end -}}
{{- end }}

{{- /* NetworkPolicy rules (YAML list; (dict "root" $ "rules" <yaml> "key" "to"|"from")) as a
policy in the job namespace needs them: each pod peer without a namespaceSelector is one of
the release's namespace (as written, it would mean the job namespace's pods). */}}
{{- define "twinhub.netpol.inReleaseNamespace" -}}
{{- $root := .root -}}
{{- $rules := .rules | fromYamlArray -}}
{{- if ne (include "twinhub.processing.jobNamespace" $root) $root.Release.Namespace -}}
{{- range $rule := $rules -}}
{{- range $peer := (index $rule $.key | default list) -}}
{{- if and (hasKey $peer "podSelector") (not (hasKey $peer "namespaceSelector")) -}}
{{- $_ := set $peer "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" $root.Release.Namespace)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end }}

{{- /* The job pods' egress rules (networkpolicies.yaml's twinhub-processing-jobs):
(dict "root" $ "port" <service port> "gatewayOn" <"true" or "">). */}}
{{- define "twinhub.netpol.jobPodsEgress" -}}
{{- $root := .root -}}
{{- include "twinhub.netpol.dnsEgress" $root }}
- to:
    {{- include "twinhub.netpol.processing" $root | nindent 4 }}
  ports:
    - {port: {{ .port }}, protocol: TCP}
- to:
    {{- include "twinhub.netpol.hub" $root | nindent 4 }}
  ports:
    - {port: 8081, protocol: TCP}
- to:
    {{- include "twinhub.netpol.proxy" $root | nindent 4 }}
  ports:
    - {port: 8000, protocol: TCP}
{{- if .gatewayOn }}
# Traefik's container ports: web (8000, also the TCP route by default) and tcp (8786).
- to:
    {{- include "twinhub.netpol.traefik" $root | nindent 4 }}
  ports:
    - {port: 8000, protocol: TCP}
    - {port: 8786, protocol: TCP}
{{- end }}
{{- include "twinhub.netpol.s3Egress" $root | nindent 0 }}
{{- end }}

{{- define "twinhub.netpol.processing" -}}
- podSelector:
    matchLabels:
      {{- include "twinhub.selectorLabels" (dict "root" . "component" "processing") | nindent 6 }}
{{- end }}

{{- /* The Dask schedulers and workers: made by the gateway's controller, not by Helm. */}}
{{- define "twinhub.netpol.daskPods" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: dask-gateway
      gateway.dask.org/instance: twinhub-dask-gateway
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: [dask-scheduler, dask-worker]
{{- end }}

{{- define "twinhub.netpol.daskSchedulers" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: dask-gateway
      gateway.dask.org/instance: twinhub-dask-gateway
      app.kubernetes.io/component: dask-scheduler
{{- end }}

{{- /*
The ports Dask pods use among themselves: the scheduler's 8786 and the workers' and nannies'
listeners, which `dask worker` binds to random ports (never 8787/8788: the dashboards and the
scheduler's gateway API are reached only from Traefik and the gateway server). A YAML list
of NetworkPolicyPorts.
*/}}
{{- define "twinhub.netpol.daskCommPorts" -}}
- {port: 8786, protocol: TCP}
- {port: 8789, endPort: 65535, protocol: TCP}
{{- end }}

{{- /* DNS: kube-dns/CoreDNS in kube-system, as z2jh's own policies allow it. */}}
{{- define "twinhub.netpol.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}

{{- /* S3 egress: the in-cluster SeaweedFS when on, plus the operator's external S3 peers. */}}
{{- define "twinhub.netpol.s3Egress" -}}
{{- if .Values.twinhub.s3.seaweedfs.enabled }}
- to:
    {{- include "twinhub.netpol.seaweedfs" . | nindent 4 }}
  ports:
    - {port: 8333, protocol: TCP}
{{- end }}
{{- with .Values.twinhub.networkPolicy.s3Egress }}
- to:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end }}
