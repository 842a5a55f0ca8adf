{{/*
The operator's permissions, kept to the calls it makes (tests/integration/test_rbac.py checks every request
an operator run sends to the emulated API server against these rules; docs/install.md lists them).
"namespacedRules" apply where InferenceServices live: a ClusterRole when all namespaces are
watched, a Role in each watched namespace otherwise. "clusterRules" are cluster-scoped reads.
*/}}

{{- define "tokenscale.namespacedRules" -}}
# The custom resource: kopf watches it and patches its finalizer and progress annotations.
- apiGroups: ["tokenscale.io"]
  resources: ["inferenceservices"]
  verbs: ["get", "list", "watch", "patch"]
# Status is the operator's only write to an InferenceService besides kopf's metadata.
- apiGroups: ["tokenscale.io"]
  resources: ["inferenceservices/status"]
  verbs: ["patch"]
# The serving workload and its Service: created, repaired by replacing the spec, watched for
# drift; never deleted by the operator (ownerReferences let the garbage collector do that).
# The autoscaler patches the Deployment's replica count.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update"]
# Children that come and go with the spec (a PDB above one replica, an optional PodMonitor).
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "update", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "update", "delete"]
# The autoscaler watches the serving pods: those that cannot be scheduled (no free GPU) or cannot
# start (CrashLoopBackOff, ImagePullBackOff, ...).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# kopf reports handler results and every scaling decision as Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.activator.enabled }}
# Scale from zero: the `<service>-activator` EndpointSlice routes a service at zero to the activator.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["create", "patch", "delete"]
{{- end }}
{{- if and .Values.ha.enabled .Values.watchNamespaces }}
# Namespaced peering: one KopfPeering per watched namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{- define "tokenscale.clusterRules" -}}
# kopf watches CRDs to notice its resource being installed, upgraded or removed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# With a namespace list, kopf lists and watches namespaces to learn which of them exist.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- else if .Values.ha.enabled }}
# Cluster-wide peering: the replicas meet in one ClusterKopfPeering.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
For people, not the operator: aggregated into the built-in view, edit and admin ClusterRoles, so a
namespace's users read (view) or manage (edit, admin) InferenceServices there with the roles they
already hold. edit adds writing the spec, deleting, and `kubectl scale` (the scale subresource).
*/}}
{{- define "tokenscale.viewRules" -}}
- apiGroups: ["tokenscale.io"]
  resources: ["inferenceservices", "inferenceservices/status", "inferenceservices/scale"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{- define "tokenscale.editRules" -}}
- apiGroups: ["tokenscale.io"]
  resources: ["inferenceservices"]
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- apiGroups: ["tokenscale.io"]
  resources: ["inferenceservices/scale"]
  verbs: ["update", "patch"]
{{- end }}
