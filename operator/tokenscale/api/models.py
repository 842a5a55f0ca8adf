"""Pydantic models of the InferenceService resource: the one typed source of truth.

The CRD in crds/ is generated from these models (see `crd.py`), so every field's
description is also its `kubectl explain` text. Cross-field rules live twice, on purpose:
as pydantic validators (the operator's last line of defence when the schema was not
installed) and as CEL rules in the CRD (so the API server rejects them first). The tests
hold both to the same list of invalid resources.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tokenscale.api.labels import ENGINE_LABEL, SERVICE_LABEL

GROUP = "tokenscale.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"
SINGULAR = "inferenceservice"
SHORT_NAMES = ["tsvc"]
CATEGORIES = ["tokenscale", "all"]

# Kubernetes resource quantity, e.g. "500m", "16Gi", "4", "1.5".
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# Extended resource names such as nvidia.com/gpu or amd.com/gpu.
RESOURCE_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
# DNS-1123 subdomain / label as used for object names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A container image reference: [registry[:port]/]path[:tag][@digest], as the container runtimes parse it.
_IMAGE_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = (
    r"^(?:[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
    rf"{_IMAGE_PATH_COMPONENT}(?:/{_IMAGE_PATH_COMPONENT})*"
    r"(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(?:@[a-zA-Z][a-zA-Z0-9]*(?:[-_+.][a-zA-Z][a-zA-Z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
# A hub id (org/name), a path or a URI: no spaces and no shell metacharacters (the source becomes an
# engine argument).
MODEL_SOURCE_PATTERN = r"^[A-Za-z0-9_./~][-A-Za-z0-9_./~:@+=%]*$"
# An InferenceService's name becomes its Service's name (a DNS-1035 label) and a label value of its
# pods: both allow at most 63 characters.
NAME_MAX_LENGTH = 63
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_RULES = [
    {
        "rule": f"size(self.metadata.name) <= {NAME_MAX_LENGTH}",
        "message": f"metadata.name must be at most {NAME_MAX_LENGTH} characters: it becomes the name of the "
        "serving Service and a label value on the serving pods, which allow no more",
    },
    {
        "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
        "message": "metadata.name must start with a lowercase letter and hold only lowercase letters, digits "
        "and '-' (a DNS-1035 label): it becomes the name of the serving Service",
    },
]


def name_problems(name: Any) -> list[str]:
    """Why an InferenceService name cannot name its children, in the CRD's words; [] when it can."""
    if not isinstance(name, str):
        return ["metadata.name: must be a string"]
    problems = []
    if len(name) > NAME_MAX_LENGTH:
        problems.append(NAME_RULES[0]["message"])
    if not re.match(NAME_PATTERN, name):
        problems.append(NAME_RULES[1]["message"])
    return problems
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
FIELD_PATH_PATTERN = (
    r"^(metadata\.(name|namespace|uid)|metadata\.(labels|annotations)\['[^']+'\]"
    r"|spec\.(nodeName|serviceAccountName)|status\.(hostIP|hostIPs|podIP|podIPs))$"
)
CONTAINER_RESOURCES = ("limits.cpu", "limits.memory", "limits.ephemeral-storage", "requests.cpu",
                       "requests.memory", "requests.ephemeral-storage")
MOUNT_PATH_PATTERN = r"^(/[^/:]+)+$"  # absolute, no trailing or double slash: one spelling per path
SUB_PATH_PATTERN = r"^[^/:]+(/[^/:]+)*$"  # relative
# Label keys and values as the API server checks them on the pod template.
LABEL_NAME_PATTERN = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# Names the operator gives its own volumes and mount paths (engines/base.py): never the user's.
RESERVED_VOLUMES = ("dshm", "model-cache", "tmp")
RESERVED_MOUNT_PATHS = ("/dev/shm", "/models", "/tmp")
# Labels the operator sets on every pod (desired/labels.py): the selector and the service label among
# them, so a pod label of the same key is rejected rather than silently overridden.
RESERVED_POD_LABELS = (
    "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", SERVICE_LABEL, ENGINE_LABEL,
)
# The longest preStop sleep of any engine plus a margin: the grace period must leave the engine
# time to drain after it (engines/base.py derives the builtin server's --drain-timeout from it).
MIN_TERMINATION_GRACE_SECONDS = 30
DEFAULT_TERMINATION_GRACE_SECONDS = 120

_ENV_SOURCES = ("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef")
_ENV_SOURCE_MESSAGE = "valueFrom needs exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef"
_ENV_VALUE_MESSAGE = "value and valueFrom are exclusive: set one"
_ENV_FROM_SOURCES = ("configMapRef", "secretRef")
_ENV_FROM_MESSAGE = "envFrom needs exactly one of configMapRef, secretRef"
# The pod annotation in which the operator records the keys of spec.pod.annotations (desired/drift.py).
MANAGED_ANNOTATIONS = "tokenscale.io/pod-annotations"
_RESERVED_ANNOTATION_MESSAGE = f"{MANAGED_ANNOTATIONS} is the operator's record of the pod annotations"
_UNIQUE_MOUNT_PATHS = "each mountPath at most once"
_RESERVED_MOUNT_MESSAGE = f"{', '.join(RESERVED_MOUNT_PATHS)} are the operator's mount paths"
_UNIQUE_VOLUMES = "each volume name at most once"
_RESERVED_VOLUME_MESSAGE = f"{', '.join(RESERVED_VOLUMES)} are the operator's volume names"
_RESERVED_LABEL_MESSAGE = (f"{', '.join(RESERVED_POD_LABELS)} are the operator's labels (it selects its pods "
                           "by them): choose other keys")
VOLUME_SOURCES = ("configMap", "secret", "persistentVolumeClaim", "emptyDir", "hostPath", "nfs", "csi",
                  "projected", "downwardAPI", "ephemeral", "image", "iscsi", "fc")
_VOLUME_SOURCE_MESSAGE = f"a volume needs exactly one source: {', '.join(VOLUME_SOURCES)}"


def _exactly_one(fields: tuple[str, ...]) -> str:
    """A CEL rule: exactly one of these optional fields is set (cheap: no iteration)."""
    return " + ".join(f"(has(self.{name}) ? 1 : 0)" for name in fields) + " == 1"


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules of one field (`x-kubernetes-validations` on its own node of the CRD)."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


def _count_set(model: BaseModel, fields: tuple[str, ...]) -> int:
    """How many of these fields (by wire name) are set on a model."""
    return sum(getattr(model, name) is not None for name, info in type(model).model_fields.items()
               if info.alias in fields)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be a non-negative quantity")
        return value
    if not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)")
    return value


# An int-or-string field in the CRD, like Kubernetes' own resource quantities.
Quantity = Annotated[int | str, AfterValidator(_check_quantity), Field(json_schema_extra={"quantity": True})]


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected (the CRD prunes nothing silently)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )


class EngineType(StrEnum):
    builtin = "builtin"
    vllm = "vllm"
    sglang = "sglang"
    tgi = "tgi"
    trtllm = "trtllm"


class AutoscalingMode(StrEnum):
    Active = "Active"
    DryRun = "DryRun"


class MetricsUnavailableAction(StrEnum):
    Hold = "Hold"
    ScaleTo = "ScaleTo"


class BurstBaseline(StrEnum):
    Low = "Low"
    Peak = "Peak"


class CapacitySource(StrEnum):
    Spec = "Spec"
    Learned = "Learned"


class ModelSpec(_Model):
    source: str = Field(
        min_length=1,
        max_length=512,
        pattern=MODEL_SOURCE_PATTERN,
        description="The model to serve: a Hugging Face hub id (org/name) or an absolute path "
        "inside the model cache volume. No spaces or shell metacharacters.",
    )
    served_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:/]*$",
        description="The model name clients send in the OpenAI `model` field. Defaults to the source.",
    )
    revision: str | None = Field(
        default=None, min_length=1, max_length=128, description="Hub revision (branch, tag or commit)."
    )


class ConfigMapKeySelector(_Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="ConfigMap name.")
    key: str = Field(min_length=1, max_length=253, pattern=CONFIG_KEY_PATTERN, description="Key in it.")
    optional: bool | None = Field(default=None, description="Start the pod even when the ConfigMap or key is missing.")


class SecretKeySelector(_Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, pattern=CONFIG_KEY_PATTERN, description="Key in it.")
    optional: bool | None = Field(default=None, description="Start the pod even when the Secret or key is missing.")


class ObjectFieldSelector(_Model):
    field_path: str = Field(
        max_length=316,
        pattern=FIELD_PATH_PATTERN,
        description="A field of the pod (the downward API): metadata.name, metadata.namespace, metadata.uid, "
        "metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, "
        "status.hostIP, status.hostIPs, status.podIP or status.podIPs.",
    )
    api_version: str | None = Field(default=None, pattern=r"^v1$", description="Version of fieldPath (v1).")


class ResourceFieldSelector(_Model):
    resource: str = Field(
        json_schema_extra={"enum": list(CONTAINER_RESOURCES)},
        description="A resource of the engine container: limits.cpu, limits.memory, "
        "limits.ephemeral-storage, requests.cpu, requests.memory or requests.ephemeral-storage.",
    )
    container_name: str | None = Field(
        default=None, pattern=r"^engine$", description="The container (only `engine`, the default)."
    )
    divisor: Quantity | None = Field(default=None, description="Unit of the exposed value (default 1).")

    @model_validator(mode="after")
    def _known_resource(self) -> ResourceFieldSelector:
        if self.resource not in CONTAINER_RESOURCES:
            raise ValueError(f"resource must be one of {', '.join(CONTAINER_RESOURCES)}")
        return self


class EnvVarSource(_Model):
    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{"rule": _exactly_one(_ENV_SOURCES), "message": _ENV_SOURCE_MESSAGE}]}
    )

    secret_key_ref: SecretKeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: ConfigMapKeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: ObjectFieldSelector | None = Field(default=None, description="A field of the pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(
        default=None, description="A resource limit or request of the engine container."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        if _count_set(self, _ENV_SOURCES) != 1:
            raise ValueError(_ENV_SOURCE_MESSAGE)
        return self


class EnvVar(_Model):
    """A core/v1 EnvVar: a literal value, or valueFrom a Secret, ConfigMap or field of the pod."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!has(self.valueFrom) || !has(self.value) || self.value == ''",
                 "message": _ENV_VALUE_MESSAGE}
            ]
        }
    )

    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Variable value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Read the value from a Secret, a ConfigMap or the pod (instead of value)."
    )

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise ValueError(_ENV_VALUE_MESSAGE)
        return self


class ConfigMapEnvSource(_Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="ConfigMap name.")
    optional: bool | None = Field(default=None, description="Start the pod even when the ConfigMap is missing.")


class SecretEnvSource(_Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    optional: bool | None = Field(default=None, description="Start the pod even when the Secret is missing.")


class EnvFromSource(_Model):
    """A core/v1 EnvFromSource: every key of a ConfigMap or Secret as a variable."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": _exactly_one(_ENV_FROM_SOURCES), "message": _ENV_FROM_MESSAGE}]
        }
    )

    prefix: str | None = Field(
        default=None, max_length=253, pattern=ENV_NAME_PATTERN, description="Prepended to each key."
    )
    config_map_ref: ConfigMapEnvSource | None = Field(default=None, description="The ConfigMap.")
    secret_ref: SecretEnvSource | None = Field(default=None, description="The Secret.")

    @model_validator(mode="after")
    def _one_source(self) -> EnvFromSource:
        if _count_set(self, _ENV_FROM_SOURCES) != 1:
            raise ValueError(_ENV_FROM_MESSAGE)
        return self


class VolumeMount(_Model):
    """A core/v1 VolumeMount of one of spec.pod.volumes into the engine container."""

    name: str = Field(max_length=63, pattern=DNS_LABEL_PATTERN, description="The volume (one of spec.pod.volumes).")
    mount_path: str = Field(
        max_length=512,
        pattern=MOUNT_PATH_PATTERN,
        description=f"Absolute path in the container; not {', '.join(RESERVED_MOUNT_PATHS)} (the operator's).",
    )
    sub_path: str | None = Field(
        default=None, max_length=512, pattern=SUB_PATH_PATTERN, description="Mount this relative path of the volume."
    )
    read_only: bool | None = Field(default=None, description="Mount read-only.")


class EngineSpec(_Model):
    type: EngineType = Field(
        default=EngineType.builtin,
        description="Serving engine: builtin (tokenscale's own batching server), vllm, sglang, tgi or "
        "trtllm (TensorRT-LLM's trtllm-serve).",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Container image ([registry/]repository[:tag][@digest]). Defaults to the engine's release "
        "image configured in the operator.",
    )
    args: list[str] = Field(
        default_factory=list,
        max_length=128,
        description="Extra arguments appended to the engine's command line.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment variables for the engine (value, or valueFrom a Secret, ConfigMap or "
        "field of the pod); a name the operator also sets (HF_HOME, HF_TOKEN) is the user's.",
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=16,
        description="Every key of these ConfigMaps and Secrets as an environment variable (env wins).",
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=32,
        description="Mounts of spec.pod.volumes into the engine container.",
        json_schema_extra=_rules(
            ("self.all(m, self.exists_one(n, n.mountPath == m.mountPath))", _UNIQUE_MOUNT_PATHS),
            (f"self.all(m, !(m.mountPath in {_cel_list(RESERVED_MOUNT_PATHS)}))", _RESERVED_MOUNT_MESSAGE),
        ),
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Maximum number of sequences batched together (vLLM --max-num-seqs).",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=2_097_152,
        description="Maximum context length (prompt + output tokens). Defaults to the model's own.",
    )

    @field_validator("volume_mounts")
    @classmethod
    def _mount_paths(cls, mounts: list[VolumeMount]) -> list[VolumeMount]:
        paths = [mount.mount_path for mount in mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(_UNIQUE_MOUNT_PATHS)
        if set(paths) & set(RESERVED_MOUNT_PATHS):
            raise ValueError(_RESERVED_MOUNT_MESSAGE)
        return mounts


class ResourcesSpec(_Model):
    gpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs per replica. Engines that support tensor parallelism shard the model over them.",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=RESOURCE_NAME_PATTERN,
        description="The extended resource that schedules GPUs (nvidia.com/gpu, amd.com/gpu, ...).",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit per replica (e.g. 4).")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit per replica (e.g. 32Gi)."
    )
    shared_memory: Quantity = Field(
        default="2Gi",
        description="Size of /dev/shm (a memory-backed emptyDir); NCCL and tensor parallelism need it.",
    )


class Toleration(_Model):
    key: str | None = Field(default=None, max_length=316, description="Taint key to tolerate.")
    operator: str | None = Field(
        default=None, json_schema_extra={"enum": ["Exists", "Equal"]}, description="Exists or Equal."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value to match.")
    effect: str | None = Field(
        default=None,
        json_schema_extra={"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
        description="Taint effect to match; empty matches all effects.",
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated."
    )

    @model_validator(mode="after")
    def _known_enums(self) -> Toleration:
        if self.operator not in (None, "Exists", "Equal"):
            raise ValueError("operator must be Exists or Equal")
        if self.effect not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError("effect must be NoSchedule, PreferNoSchedule or NoExecute")
        return self


class WhenUnsatisfiable(StrEnum):
    DoNotSchedule = "DoNotSchedule"
    ScheduleAnyway = "ScheduleAnyway"


class NodeInclusionPolicy(StrEnum):
    Honor = "Honor"
    Ignore = "Ignore"


class TopologySpreadConstraint(_Model):
    """A core/v1 TopologySpreadConstraint; labelSelector defaults to this service's own pods."""

    max_skew: int = Field(ge=1, le=1000, description="Most by which the pods' count may differ between domains.")
    topology_key: str = Field(
        min_length=1, max_length=316, description="Node label whose values are the domains (e.g. topology.kubernetes.io/zone)."
    )
    when_unsatisfiable: WhenUnsatisfiable = Field(
        description="DoNotSchedule (a hard rule) or ScheduleAnyway (a preference)."
    )
    label_selector: dict[str, Any] | None = Field(
        default=None,
        description="A metav1 LabelSelector of the pods counted. Defaults to this service's pods "
        "(its selector labels).",
    )
    match_label_keys: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Pod label keys whose values narrow the count to pods like this one (e.g. pod-template-hash).",
    )
    min_domains: int | None = Field(default=None, ge=1, le=1000, description="Fewest eligible domains (DoNotSchedule).")
    node_affinity_policy: NodeInclusionPolicy | None = Field(
        default=None, description="Whether the pod's nodeAffinity/nodeSelector limit the domains (Honor, the default)."
    )
    node_taints_policy: NodeInclusionPolicy | None = Field(
        default=None, description="Whether tainted nodes count (Ignore, the default)."
    )


class SchedulingSpec(_Model):
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a serving pod requires (e.g. a GPU product)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations for tainted GPU nodes."
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="A core/v1 Affinity, passed to the pod template unchanged."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="PriorityClass of the pods."
    )
    runtime_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="RuntimeClass of the pods (e.g. nvidia).",
    )
    topology_spread_constraints: list[TopologySpreadConstraint] = Field(
        default_factory=list,
        max_length=8,
        description="How replicas spread over zones or nodes (core/v1 topologySpreadConstraints).",
    )


class ModelCacheSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.persistentVolumeClaim) && has(self.sizeLimit))",
                    "message": "sizeLimit applies to the emptyDir cache only; "
                    "do not set it with persistentVolumeClaim",
                }
            ]
        }
    )

    persistent_volume_claim: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Name of a PersistentVolumeClaim holding the model cache (shared across replicas "
        "and restarts). Without it the cache is an emptyDir, downloaded again by each new pod.",
    )
    size_limit: Quantity | None = Field(default=None, description="Size limit of the emptyDir cache.")

    @model_validator(mode="after")
    def _one_kind(self) -> ModelCacheSpec:
        if self.persistent_volume_claim is not None and self.size_limit is not None:
            raise ValueError(
                "sizeLimit applies to the emptyDir cache only; do not set it with persistentVolumeClaim"
            )
        return self


class SecretKeyRef(_Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in it.")


class SecretsSpec(_Model):
    hugging_face_token: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hugging Face token (HF_TOKEN) for gated models."
    )


class MonitoringSpec(_Model):
    pod_monitor: bool = Field(
        default=False,
        description="Create a Prometheus Operator PodMonitor for the serving pods "
        "(needs the monitoring.coreos.com CRDs).",
    )


class ScalingRules(_Model):
    """One direction's rate limits. Every field has its own default (different for scale-up and
    scale-down), so a partial block such as `scaleDown: {stabilizationSeconds: 60}` is whole."""

    stabilization_seconds: int
    max_step_percent: int
    max_step_pods: int


def _stabilization(default: int, wins: str) -> Any:
    return Field(
        default=default,
        ge=0,
        le=3600,
        description=f"Window over which the {wins} recommendation wins, so a brief swing does not move the "
        "replica count. 0 acts at once.",
    )


def _step_percent(default: int) -> Any:
    return Field(default=default, ge=1, le=1000, description="Largest change in one step, in percent.")


def _step_pods(default: int) -> Any:
    return Field(default=default, ge=1, le=1000, description="Largest change in one step, in pods.")


class ScaleUpRules(ScalingRules):
    stabilization_seconds: int = _stabilization(0, "lowest")
    max_step_percent: int = _step_percent(100)
    max_step_pods: int = _step_pods(4)


class ScaleDownRules(ScalingRules):
    stabilization_seconds: int = _stabilization(300, "highest")
    max_step_percent: int = _step_percent(50)
    max_step_pods: int = _step_pods(1)


_ACTIVATION_MESSAGE = "activation needs activator: true or a query"


class ActivationSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "(has(self.activator) && self.activator) || has(self.query)",
                 "message": _ACTIVATION_MESSAGE}
            ]
        }
    )

    activator: bool = Field(
        default=False,
        description="Route the service to tokenscale's activator while it has no ready replica: the "
        "activator holds requests, wakes the service at once and forwards them when a replica is ready "
        "(needs the chart's activator.enabled).",
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="PromQL for demand that waits outside the pods (e.g. your own gateway's queued "
        "requests for this model). At zero replicas a result above zero scales to one.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ActivationSpec:
        if not self.activator and self.query is None:
            raise ValueError(_ACTIVATION_MESSAGE)
        return self


_MIN_ZERO_MESSAGE = (
    "minReplicas: 0 needs activation (activator: true, or a query): at zero replicas no pod exports "
    "metrics, so only the activator's held requests or a signal from outside the pods can wake the service"
)


class SloSpec(_Model):
    ttft_seconds: float = Field(
        gt=0, le=600, description="Time to first token the service must meet at `percentile`."
    )
    percentile: float = Field(
        default=99.0,
        ge=50,
        le=99.9,
        description="Share of requests (percent) that must meet ttftSeconds. The operator reads the TTFT "
        "histogram's p90 and p99; a percentile is judged on the first of them at or above it (p99 "
        "above 99).",
    )
    itl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="Optional mean inter-token latency target (running requests / generated tokens/s: "
        "one decode step gives each running sequence one token).",
    )


class CapacitySpec(_Model):
    source: CapacitySource = Field(
        default=CapacitySource.Spec,
        description="Spec: targetTokensPerSecondPerReplica is the capacity per replica. Learned: the "
        "operator estimates it at the SLO (autoscaling.slo) from the signals it reads, and uses "
        "targetTokensPerSecondPerReplica until the estimate is confident (status.autoscaler.capacity).",
    )
    max_change_per_hour: float = Field(
        default=8.0,
        ge=1.1,
        le=100,
        description="Learned: the estimate changes by at most this factor per hour, up or down (8: at "
        "most doubling or halving in 20 minutes).",
    )


class AutoscalingSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be less than or equal to maxReplicas",
                },
                {
                    "rule": "!has(self.scaleToZeroAfterSeconds) || self.minReplicas == 0",
                    "message": "scaleToZeroAfterSeconds is only valid with minReplicas: 0",
                },
                {
                    "rule": "self.minReplicas > 0 || !self.enabled || has(self.activation)",
                    "message": _MIN_ZERO_MESSAGE,
                },
                {
                    "rule": "self.onMetricsUnavailable != 'ScaleTo' || has(self.fallbackReplicas)",
                    "message": "onMetricsUnavailable: ScaleTo needs fallbackReplicas",
                },
                {
                    "rule": "!has(self.capacity) || !has(self.capacity.source) || "
                    "self.capacity.source != 'Learned' || has(self.slo)",
                    "message": "capacity.source: Learned needs slo: the capacity is learned at the latency target",
                },
                {
                    "rule": "!has(self.fallbackReplicas) || (self.fallbackReplicas >= self.minReplicas "
                    "&& self.fallbackReplicas <= self.maxReplicas)",
                    "message": "fallbackReplicas must lie within [minReplicas, maxReplicas]",
                },
            ]
        }
    )

    enabled: bool = Field(
        default=True, description="Size the service by throughput. When false, spec.replicas is applied."
    )
    mode: AutoscalingMode = Field(
        default=AutoscalingMode.Active,
        description="Active scales the Deployment; DryRun decides and reports "
        "(status.recommendedReplicas) but never acts.",
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(default=8, ge=1, le=1000, description="Most replicas.")
    target_tokens_per_second_per_replica: float = Field(
        default=1500.0,
        gt=0,
        le=10_000_000,
        description="Generated tokens/s one replica serves within the latency target. Measure it "
        "(tokenscale bench / simulate) for your model, engine and GPU.",
    )
    target_queue_depth_per_replica: float = Field(
        default=4.0,
        gt=0,
        le=100_000,
        description="Waiting requests per replica tolerated before scaling up even when tokens/s is flat.",
    )
    backlog_drain_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Queued work counts as demand to be served within this many seconds.",
    )
    tolerance: float = Field(
        default=0.1,
        ge=0,
        le=0.9,
        description="Utilisation band around the target inside which the replica count is left alone.",
    )
    panic_threshold: float = Field(
        default=2.0,
        gt=1,
        le=100,
        description="Demand at this multiple of ready capacity enters panic mode: scale up at once, "
        "no scale-down for a stabilisation window.",
    )
    scale_up: ScaleUpRules = Field(default_factory=ScaleUpRules, description="Scale-up behaviour.")
    scale_down: ScaleDownRules = Field(default_factory=ScaleDownRules, description="Scale-down behaviour.")
    scale_to_zero_after_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="With minReplicas 0: idle this long (no tokens, no queue) before scaling to zero.",
    )
    activation: ActivationSpec | None = Field(
        default=None, description="The wake-up from zero replicas (required with minReplicas 0): the activator, "
        "a PromQL query, or both."
    )
    on_metrics_unavailable: MetricsUnavailableAction = Field(
        default=MetricsUnavailableAction.Hold,
        description="What to do when metrics are missing, stale or NaN: Hold the replica count, or "
        "ScaleTo fallbackReplicas (never below the current count). Never read as zero.",
    )
    fallback_replicas: int | None = Field(
        default=None, ge=0, le=1000, description="Replicas for onMetricsUnavailable: ScaleTo."
    )
    metrics_stale_after_seconds: int = Field(
        default=60, ge=5, le=3600, description="Samples older than this count as missing."
    )
    target_time_to_first_token_seconds: float | None = Field(
        default=None,
        gt=0,
        le=600,
        description="Optional latency target: TTFT p90 above it scales up (engines that export TTFT).",
    )
    burst_headroom: float = Field(
        default=1.0,
        ge=1,
        le=100,
        description="Hold replicas for this multiple of the baseline demand (burstBaseline over the "
        "last burstWindowSeconds), so bursts are served without waiting for new replicas to start; "
        "scale-ups above it are sized by the target. 1 with burstBaseline Low: no headroom.",
    )
    burst_baseline: BurstBaseline = Field(
        default=BurstBaseline.Low,
        description="Low: the window's lowest generated tokens/s (bursts are a multiple of the quiet "
        "load; a burst does not raise its own headroom). Peak: its highest (hold what the last burst "
        "needed; for traffic that falls to nothing between bursts).",
    )
    burst_window_seconds: int = Field(
        default=1800,
        ge=60,
        le=86_400,
        description="Look-back window of the baseline demand that burstHeadroom multiplies; longer than "
        "the bursts (Low) or than the gaps between them (Peak).",
    )

    slo: SloSpec | None = Field(
        default=None,
        description="The latency target (TTFT at a percentile, optionally mean inter-token latency) "
        "the capacity per replica is learned at (capacity.source: Learned).",
    )
    capacity: CapacitySpec | None = Field(
        default=None,
        description="Where the capacity per replica comes from: the spec's target (default), or learned "
        "at the SLO.",
    )

    @property
    def holds_burst_headroom(self) -> bool:
        """The headroom rule is on: a multiple above 1, or any multiple of the window's peak."""
        return self.burst_headroom > 1 or self.burst_baseline == BurstBaseline.Peak

    @model_validator(mode="after")
    def _cross_field(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be less than or equal to maxReplicas")
        if self.scale_to_zero_after_seconds is not None and self.min_replicas != 0:
            raise ValueError("scaleToZeroAfterSeconds is only valid with minReplicas: 0")
        if self.enabled and self.min_replicas == 0 and self.activation is None:
            raise ValueError(_MIN_ZERO_MESSAGE)
        if self.on_metrics_unavailable == MetricsUnavailableAction.ScaleTo and self.fallback_replicas is None:
            raise ValueError("onMetricsUnavailable: ScaleTo needs fallbackReplicas")
        if self.fallback_replicas is not None and not (
            self.min_replicas <= self.fallback_replicas <= self.max_replicas
        ):
            raise ValueError("fallbackReplicas must lie within [minReplicas, maxReplicas]")
        if self.capacity is not None and self.capacity.source == CapacitySource.Learned and self.slo is None:
            raise ValueError("capacity.source: Learned needs slo: the capacity is learned at the latency target")
        return self


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:  # the values are LabelValues
        _check_key(key)
    if set(labels) & set(RESERVED_POD_LABELS):
        raise ValueError(_RESERVED_LABEL_MESSAGE)
    return labels


def _check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    for key in annotations:
        _check_key(key)
    if MANAGED_ANNOTATIONS in annotations:
        raise ValueError(_RESERVED_ANNOTATION_MESSAGE)
    if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
        raise ValueError("annotations may total at most 256 KiB")
    return annotations


def _check_key(key: str) -> None:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not re.match(DNS_SUBDOMAIN_PATTERN, prefix)):
        raise ValueError(f"key {key!r}: the prefix must be a DNS subdomain (e.g. example.com)")
    if len(name) > 63 or not re.match(LABEL_NAME_PATTERN, name):
        raise ValueError(f"key {key!r}: the name must be at most 63 characters of A-Z, a-z, 0-9, '-', '_' or "
                         "'.', beginning and ending with a letter or digit")


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


class LocalObjectReference(_Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Name of the object.")


class Volume(_Model):
    """A core/v1 Volume: a name and one source, each source a free-form core/v1 object."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": _exactly_one(VOLUME_SOURCES), "message": _VOLUME_SOURCE_MESSAGE}]
        }
    )

    name: str = Field(
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description=f"Volume name (a DNS label); not {', '.join(RESERVED_VOLUMES)} (the operator's).",
    )
    config_map: dict[str, Any] | None = Field(default=None, description="A core/v1 ConfigMapVolumeSource.")
    secret: dict[str, Any] | None = Field(default=None, description="A core/v1 SecretVolumeSource.")
    persistent_volume_claim: dict[str, Any] | None = Field(
        default=None, description="A core/v1 PersistentVolumeClaimVolumeSource."
    )
    empty_dir: dict[str, Any] | None = Field(default=None, description="A core/v1 EmptyDirVolumeSource.")
    host_path: dict[str, Any] | None = Field(default=None, description="A core/v1 HostPathVolumeSource.")
    nfs: dict[str, Any] | None = Field(default=None, description="A core/v1 NFSVolumeSource.")
    csi: dict[str, Any] | None = Field(default=None, description="A core/v1 CSIVolumeSource.")
    projected: dict[str, Any] | None = Field(default=None, description="A core/v1 ProjectedVolumeSource.")
    downward_api: dict[str, Any] | None = Field(
        default=None, alias="downwardAPI", description="A core/v1 DownwardAPIVolumeSource."
    )
    ephemeral: dict[str, Any] | None = Field(default=None, description="A core/v1 EphemeralVolumeSource.")
    image: dict[str, Any] | None = Field(default=None, description="A core/v1 ImageVolumeSource (an OCI image).")
    iscsi: dict[str, Any] | None = Field(default=None, description="A core/v1 ISCSIVolumeSource.")
    fc: dict[str, Any] | None = Field(default=None, description="A core/v1 FCVolumeSource.")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        if _count_set(self, VOLUME_SOURCES) != 1:
            raise ValueError(_VOLUME_SOURCE_MESSAGE)
        return self

    def source(self) -> dict[str, Any]:
        """The volume as core/v1 writes it: {name, <source>: {...}}."""
        return self.model_dump(by_alias=True, exclude_none=True)


class PodSpec(_Model):
    """What a platform team sets on every serving pod, named as in the core PodSpec."""

    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Labels added to every serving pod. The operator's own (app.kubernetes.io/name, instance, "
        "component, managed-by, part-of; tokenscale.io/service, tokenscale.io/engine) are refused.",
        json_schema_extra=_rules((" && ".join(f"!('{key}' in self)" for key in RESERVED_POD_LABELS),
                                  _RESERVED_LABEL_MESSAGE)),
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description=f"Annotations added to every serving pod ({MANAGED_ANNOTATIONS} is the operator's record of them).",
        json_schema_extra=_rules((f"!('{MANAGED_ANNOTATIONS}' in self)", _RESERVED_ANNOTATION_MESSAGE)),
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="ServiceAccount the pods run as (e.g. one bound to a cloud IAM role).",
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the ServiceAccount's API token. Engines never call the Kubernetes API, so off by default.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets holding credentials of a private registry."
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=32,
        description="Extra volumes, mounted by spec.engine.volumeMounts.",
        json_schema_extra=_rules(
            ("self.all(v, self.exists_one(w, w.name == v.name))", _UNIQUE_VOLUMES),
            (f"self.all(v, !(v.name in {_cel_list(RESERVED_VOLUMES)}))", _RESERVED_VOLUME_MESSAGE),
        ),
    )
    termination_grace_period_seconds: int = Field(
        default=DEFAULT_TERMINATION_GRACE_SECONDS,
        ge=MIN_TERMINATION_GRACE_SECONDS,
        le=86_400,
        description="Seconds a stopping pod gets: the preStop delay, then the engine finishes in-flight "
        "requests (the builtin server's drain timeout is this minus 10 s and the delay). Raise it for long "
        "generations.",
    )

    _labels = field_validator("labels")(_check_labels)
    _annotations = field_validator("annotations")(_check_annotations)

    @field_validator("volumes")
    @classmethod
    def _volume_names(cls, volumes: list[Volume]) -> list[Volume]:
        names = [volume.name for volume in volumes]
        if len(set(names)) != len(names):
            raise ValueError(_UNIQUE_VOLUMES)
        if set(names) & set(RESERVED_VOLUMES):
            raise ValueError(_RESERVED_VOLUME_MESSAGE)
        return volumes


_MOUNT_NEEDS_VOLUME = "engine.volumeMounts: each name must be one of pod.volumes"
GPU_ONLY_ENGINES = (EngineType.vllm, EngineType.sglang, EngineType.trtllm)
_GPU_ONLY_MESSAGE = "engines vllm, sglang and trtllm need resources.gpus >= 1 (their images are GPU builds)"


class InferenceServiceSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.engine) || !has(self.engine.type) || "
                    "!(self.engine.type in ['vllm', 'sglang', 'trtllm']) || "
                    "!has(self.resources) || !has(self.resources.gpus) || self.resources.gpus >= 1",
                    "message": _GPU_ONLY_MESSAGE,
                },
                {
                    "rule": "!has(self.engine) || !has(self.engine.volumeMounts) || "
                    "self.engine.volumeMounts.all(m, has(self.pod) && has(self.pod.volumes) && "
                    "self.pod.volumes.exists(v, v.name == m.name))",
                    "message": _MOUNT_NEEDS_VOLUME,
                },
            ]
        }
    )

    model: ModelSpec = Field(description="What to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="How to serve it.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Resources per replica.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Where replicas run.")
    pod: PodSpec = Field(
        default_factory=PodSpec,
        description="Pod settings for a platform: labels, annotations, service account, pull secrets, volumes.",
    )
    model_cache: ModelCacheSpec = Field(
        default_factory=ModelCacheSpec, description="Where model weights are cached."
    )
    secrets: SecretsSpec = Field(default_factory=SecretsSpec, description="Secrets the engine reads.")
    monitoring: MonitoringSpec = Field(
        default_factory=MonitoringSpec, description="Prometheus Operator integration."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Replicas when autoscaling is disabled; `kubectl scale` writes it.",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Throughput-based autoscaling."
    )
    cost_per_gpu_hour: float | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="Price of one GPU-hour; status then reports the cost per million generated tokens.",
    )

    @model_validator(mode="after")
    def _engine_needs_gpu(self) -> InferenceServiceSpec:
        if self.engine.type in GPU_ONLY_ENGINES and self.resources.gpus < 1:
            raise ValueError(_GPU_ONLY_MESSAGE)
        volumes = {volume.name for volume in self.pod.volumes}
        if any(mount.name not in volumes for mount in self.engine.volume_mounts):
            raise ValueError(_MOUNT_NEEDS_VOLUME)
        return self


# --- status -----------------------------------------------------------------------------------


class _Status(_Model):
    # Status is written by the operator: tolerate fields from newer versions when reading it back.
    model_config = ConfigDict(extra="ignore", frozen=False)


# The shape of metav1.Condition, so tools that read standard conditions (kstatus, kubectl wait,
# Argo CD, kube-state-metrics) read these.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_MESSAGE_MAX_LENGTH = 32768


class Condition(_Status):
    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Ready, Progressing, Degraded, MetricsAvailable, ScalingActive or ScalingLimited.",
    )
    status: str = Field(json_schema_extra={"enum": ["True", "False", "Unknown"]}, description="True, False or Unknown.")
    reason: str = Field(
        min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN, description="CamelCase reason."
    )
    message: str = Field(max_length=CONDITION_MESSAGE_MAX_LENGTH, description="Human-readable detail.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(default=None, ge=0, description="The generation this reflects.")

    @model_validator(mode="after")
    def _known_status(self) -> Condition:
        if self.status not in ("True", "False", "Unknown"):
            raise ValueError("status must be True, False or Unknown")
        return self


class SignalsStatus(_Status):
    tokens_per_second: float | None = Field(default=None, description="Generated tokens/s (short window).")
    tokens_per_second_long: float | None = Field(default=None, description="Generated tokens/s (long window).")
    prompt_tokens_per_second: float | None = Field(default=None, description="Prompt tokens/s.")
    queue_depth: float | None = Field(default=None, description="Requests waiting, all replicas.")
    running_requests: float | None = Field(default=None, description="Requests in the batch, all replicas.")
    kv_cache_usage: float | None = Field(default=None, description="Mean KV-cache use, 0..1.")
    ttft_p90_seconds: float | None = Field(default=None, description="Time to first token, p90.")
    activation: float | None = Field(default=None, description="The activation query's value.")
    sample_age_seconds: float | None = Field(default=None, description="Age of the newest sample.")
    sampled_at: str | None = Field(default=None, description="When the signals were read (RFC 3339).")
    heartbeat_seconds: float | None = Field(
        default=None, description="Status is rewritten at least this often even when nothing moved: a sampledAt "
        "older than this (plus one tick) means the autoscaler is behind.")


class DecisionRecord(_Status):
    time: str = Field(description="When the decision was made (RFC 3339).")
    from_replicas: int = Field(description="Replicas before.")
    to_replicas: int = Field(description="Replicas decided.")
    recommendations: dict[str, int] = Field(default_factory=dict, description="Replicas each rule asked for.")
    limited_by: str = Field(default="", description="The rule that limited the result.")
    reason: str = Field(default="", description="Why, in words.")


class RecommendationRecord(_Status):
    time: float = Field(description="Unix time of the recommendation.")
    replicas: int = Field(description="Replicas recommended.")


class DemandSample(_Status):
    time: float = Field(description="Unix time of the sample.")
    tokens_per_second: float = Field(description="Generated tokens/s.")


class LearnedCapacity(_Status):
    tokens_per_second_per_replica: float | None = Field(
        default=None,
        description="The learned capacity per replica at the SLO (none until confident); decisions use 90% of it.",
    )
    samples: int = Field(default=0, description="Observations that bounded the capacity so far.")
    confidence: float = Field(default=0.0, description="0..1: samples against those needed before use.")
    last_moved: float | None = Field(default=None, description="Unix time the estimate last changed.")
    lower_bound: float | None = Field(
        default=None, description="Highest tokens/s per replica served comfortably within the SLO."
    )
    lower_bound_time: float | None = Field(default=None, description="Unix time of lowerBound.")
    upper_bound: float | None = Field(
        default=None, description="Lowest tokens/s per replica seen at or over the SLO."
    )
    upper_bound_time: float | None = Field(default=None, description="Unix time of upperBound.")
    updated_at: float | None = Field(default=None, description="Unix time of the last update.")
    ready: int | None = Field(default=None, description="Ready replicas at the last update.")
    ready_fell_at: float | None = Field(default=None, description="Unix time the ready count last fell.")
    ready_rose_at: float | None = Field(default=None, description="Unix time the ready count last rose.")
    regime: str | None = Field(
        default=None, description="What the last ticks showed: upper (near or over the SLO), lower (unsaturated)."
    )
    regime_since: float | None = Field(default=None, description="Unix time the regime began.")


class AutoscalerState(_Status):
    recommendations: list[RecommendationRecord] = Field(
        default_factory=list, description="Recent recommendations, for the stabilisation windows."
    )
    panic_until: float | None = Field(default=None, description="Unix time panic mode ends.")
    idle_since: float | None = Field(default=None, description="Unix time the service became idle.")
    last_scale_up: float | None = Field(default=None, description="Unix time of the last scale-up.")
    last_scale_down: float | None = Field(default=None, description="Unix time of the last scale-down.")
    last_queue_depth: float | None = Field(
        default=None, description="Queue depth at the last decision (its growth estimates the arrival rate)."
    )
    last_queue_time: float | None = Field(default=None, description="Unix time of lastQueueDepth.")
    demand_extremes: list[DemandSample] = Field(
        default_factory=list,
        description="Generated tokens/s samples of burstWindowSeconds that may still become its low "
        "(or peak): the first is the baseline demand.",
    )
    capacity: LearnedCapacity | None = Field(
        default=None, description="The learned capacity per replica and its evidence (capacity.source: Learned)."
    )


class InferenceServiceStatus(_Status):
    phase: str | None = Field(default=None, description="Pending, Progressing, Ready, Degraded or Idle.")
    replicas: int | None = Field(default=None, description="Pods of the serving Deployment.")
    ready_replicas: int | None = Field(default=None, description="Ready pods.")
    desired_replicas: int | None = Field(default=None, description="Replicas the operator set.")
    recommended_replicas: int | None = Field(default=None, description="Replicas the policy recommends.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    endpoint: str | None = Field(default=None, description="In-cluster OpenAI-compatible base URL.")
    signals: SignalsStatus | None = Field(default=None, description="The last signals read from Prometheus.")
    cost_per_million_tokens: float | None = Field(
        default=None, description="GPU cost per million generated tokens at the current load."
    )
    last_scale_time: str | None = Field(default=None, description="When the replica count last changed.")
    decisions: list[DecisionRecord] = Field(default_factory=list, description="The last 10 scaling decisions.")
    autoscaler: AutoscalerState | None = Field(
        default=None, description="The policy's memory (stabilisation windows), so a restart resumes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Standard conditions (metav1.Condition), one per type.",
    )


class InferenceService(_Model):
    """The whole object, for tools that hold one (examples, the simulator)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default=API_VERSION, pattern=f"^{re.escape(API_VERSION)}$")
    kind: str = Field(default=KIND, pattern=f"^{KIND}$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None

    @model_validator(mode="after")
    def _name_names_children(self) -> InferenceService:
        if "name" in self.metadata and (problems := name_problems(self.metadata["name"])):
            raise ValueError("; ".join(problems))
        return self
