{{/* Chart name, overridable. */}}
{{- define "kubequant.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, or the release name when it already holds the chart name. */}}
{{- define "kubequant.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubequant.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the operator pod. */}}
{{- define "kubequant.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubequant.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object the chart renders. */}}
{{- define "kubequant.labels" -}}
helm.sh/chart: {{ include "kubequant.chart" . }}
{{ include "kubequant.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubequant
{{- end -}}

{{- define "kubequant.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubequant.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to appVersion. */}}
{{- define "kubequant.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The cluster role name; cluster-scoped, so it carries the release namespace. */}}
{{- define "kubequant.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kubequant.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The rules the operator needs in every namespace it watches (kept in one place for the
ClusterRole and the per-namespace Roles). Each verb is one the operator calls; a test
compares them with the calls recorded by the local control plane.
*/}}
{{- define "kubequant.namespacedRules" -}}
# The objects: kopf watches them and keeps its bookkeeping in an annotation (patch);
# the reconciler reads one (get) and writes its status subresource (patch).
- apiGroups: ["kubequant.io"]
  resources: ["modeloptimizations"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kubequant.io"]
  resources: ["modeloptimizations/status"]
  verbs: ["patch"]
# The children's ownerReferences set blockOwnerDeletion: with the OwnerReferencesPermission-
# Enforcement admission plugin, that needs `update` on the owner's finalizers subresource.
- apiGroups: ["kubequant.io"]
  resources: ["modeloptimizations/finalizers"]
  verbs: ["update"]
# The engine's Job per generation: created, watched, read after a create conflict, and
# deleted when a newer generation or spec.suspend stops it.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The Job's pods: their state says why a run is pending or failed (and holds the results).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The engine's own identity per run (a Role on its object's status only); `get` after a
# create conflict. The operator can only grant what it holds itself (RBAC escalation check).
# Older generations' sets are deleted once their Job is gone (found by listing the accounts).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "delete"]
# Existence checks only: `get` (metadata only) answers whether a PVC named in a spec exists.
# No permission at all on Secrets: the kubelet hands a credentials Secret to the engine pod
# through envFrom, and a missing one shows in the pod's status (CreateContainerConfigError).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# Events: posted on the objects (create); a Job's FailedCreate events read (list, by a field
# selector on the Job's uid) while it has no pod: why the engine's pod cannot be created.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end -}}

{{/* Cluster-scoped reads kopf needs whatever the scope: the CRD. */}}
{{- define "kubequant.clusterRules" -}}
# kopf follows CRDs to learn when its resource appears or changes.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end -}}
