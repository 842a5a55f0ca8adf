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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

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
        description="The model to serve: a Hugging Face hub id (org/name) or an absolute path "
        "inside the model cache volume.",
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


class EnvVar(_Model):
    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256, description="Variable name.")
    value: str = Field(default="", max_length=32768, description="Variable value.")


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
        description="Container image. Defaults to the engine's release image configured in the operator.",
    )
    args: list[str] = Field(
        default_factory=list,
        max_length=128,
        description="Extra arguments appended to the engine's command line.",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Extra environment variables for the engine."
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
    stabilization_seconds: int = Field(
        ge=0,
        le=3600,
        description="Window over which the highest recommendation wins (for scale-down) or the lowest "
        "(for scale-up). 0 acts at once.",
    )
    max_step_percent: int = Field(ge=1, le=1000, description="Largest change in one step, in percent.")
    max_step_pods: int = Field(ge=1, le=1000, description="Largest change in one step, in pods.")


def _scale_up_defaults() -> ScalingRules:
    return ScalingRules(stabilization_seconds=0, max_step_percent=100, max_step_pods=4)


def _scale_down_defaults() -> ScalingRules:
    return ScalingRules(stabilization_seconds=300, max_step_percent=50, max_step_pods=1)


class ActivationSpec(_Model):
    query: str = Field(
        min_length=1,
        max_length=4096,
        description="PromQL for demand that waits outside the pods (e.g. a gateway's queued requests "
        "for this model). At zero replicas a result above zero scales to one.",
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
                    "message": "minReplicas: 0 needs activation.query: at zero replicas no pod exports "
                    "metrics, so only a signal from outside the pods can wake the service",
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
    scale_up: ScalingRules = Field(default_factory=_scale_up_defaults, description="Scale-up behaviour.")
    scale_down: ScalingRules = Field(
        default_factory=_scale_down_defaults, description="Scale-down behaviour."
    )
    scale_to_zero_after_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="With minReplicas 0: idle this long (no tokens, no queue) before scaling to zero.",
    )
    activation: ActivationSpec | None = Field(
        default=None, description="The wake-up signal from zero replicas (required with minReplicas 0)."
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
            raise ValueError(
                "minReplicas: 0 needs activation.query: at zero replicas no pod exports metrics, "
                "so only a signal from outside the pods can wake the service"
            )
        if self.on_metrics_unavailable == MetricsUnavailableAction.ScaleTo and self.fallback_replicas is None:
            raise ValueError("onMetricsUnavailable: ScaleTo needs fallbackReplicas")
        if self.fallback_replicas is not None and not (
            self.min_replicas <= self.fallback_replicas <= self.max_replicas
        ):
            raise ValueError("fallbackReplicas must lie within [minReplicas, maxReplicas]")
        if self.capacity is not None and self.capacity.source == CapacitySource.Learned and self.slo is None:
            raise ValueError("capacity.source: Learned needs slo: the capacity is learned at the latency target")
        return self


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
                }
            ]
        }
    )

    model: ModelSpec = Field(description="What to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="How to serve it.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Resources per replica.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Where replicas run.")
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
        return self


# --- status -----------------------------------------------------------------------------------


class _Status(_Model):
    # Status is written by the operator: tolerate fields from newer versions when reading it back.
    model_config = ConfigDict(extra="ignore", frozen=False)


class Condition(_Status):
    type: str = Field(description="Ready, Progressing, Degraded, MetricsAvailable, ScalingActive or ScalingLimited.")
    status: str = Field(json_schema_extra={"enum": ["True", "False", "Unknown"]}, description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(default=None, description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The generation this reflects.")


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
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")


class InferenceService(_Model):
    """The whole object, for tools that hold one (examples, the simulator)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default=API_VERSION, pattern=f"^{re.escape(API_VERSION)}$")
    kind: str = Field(default=KIND, pattern=f"^{KIND}$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None
