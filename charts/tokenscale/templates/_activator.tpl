{{/* The activator's permissions (activator-rbac.yaml): the calls it makes, nothing more. */}}
{{- define "tokenscale.activatorRules" -}}
- apiGroups: ["tokenscale.io"]
  resources: ["inferenceservices"]
  verbs: ["list", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list"]
{{- end }}
