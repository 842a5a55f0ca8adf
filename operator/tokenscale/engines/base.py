"""What every engine adapter shares: the serving container around an engine's command line.

An adapter says only what differs between engines (image, command, flags, health paths,
whether the image runs as non-root); `EngineAdapter.container` assembles the rest the same
way for all: probes, env, GPU resources, /dev/shm, the model cache and a draining preStop.
Pure: plain dicts in the shape of core/v1 objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from tokenscale.api.models import InferenceServiceSpec

CONTAINER_NAME = "engine"
PORT_NAME = "http"
MODEL_CACHE_PATH = "/models"
SHM_VOLUME = "dshm"
CACHE_VOLUME = "model-cache"
TMP_VOLUME = "tmp"
SHUTDOWN_MARGIN_SECONDS = 10  # after the drain, for the process to exit before SIGKILL


@dataclass(frozen=True)
class Probes:
    """Probe timing: loading a model takes minutes, so startup is generous and liveness lenient."""

    startup_period: int = 10
    startup_failures: int = 180  # 30 minutes to download and load weights
    readiness_period: int = 5
    liveness_period: int = 15
    liveness_failures: int = 4  # an engine busy with a huge prefill can miss a probe or two
    timeout: int = 5


@dataclass(frozen=True)
class MetricsEndpoint:
    port: int
    path: str
    port_name: str = PORT_NAME


class EngineAdapter:
    """Base adapter; subclasses set the class attributes and `engine_args`."""

    engine: ClassVar[str]
    image: ClassVar[str]  # release image, tag pinned
    port: ClassVar[int] = 8000
    health_path: ClassVar[str] = "/health"
    ready_path: ClassVar[str] = "/health"
    metrics_path: ClassVar[str] = "/metrics"
    # Whether the image works as an arbitrary non-root user (then runAsNonRoot is enforced).
    runs_as_non_root: ClassVar[bool] = False
    non_root_uid: ClassVar[int] = 1000  # the image's own user where it has one
    read_only_root: ClassVar[bool] = False
    drain_seconds: ClassVar[int] = 10  # preStop: let endpoints drop the pod before SIGTERM
    probes: ClassVar[Probes] = Probes()

    # --- what differs per engine ------------------------------------------------------------

    def command(self) -> list[str] | None:
        """The container command; None keeps the image's entrypoint."""
        return None

    def engine_args(self, spec: InferenceServiceSpec) -> list[str]:
        raise NotImplementedError

    def extra_env(self, spec: InferenceServiceSpec) -> list[dict[str, Any]]:
        return []

    @property
    def metric_names(self) -> Any:
        """The engine's Prometheus metric names (tokenscale.engines.metric_names), looked up lazily."""
        from tokenscale.engines import metric_names

        return metric_names.metric_names(self.engine)

    # --- shared assembly --------------------------------------------------------------------

    def served_name(self, spec: InferenceServiceSpec) -> str:
        return spec.model.served_name or spec.model.source

    def metrics(self) -> MetricsEndpoint:
        return MetricsEndpoint(port=self.port, path=self.metrics_path)

    def termination_grace_seconds(self, spec: InferenceServiceSpec) -> int:
        """The pod's grace period (spec.pod.terminationGracePeriodSeconds): preStop + drain + margin."""
        return spec.pod.termination_grace_period_seconds

    def shutdown_seconds(self, spec: InferenceServiceSpec) -> int:
        """What the engine has after SIGTERM to finish in-flight requests: the grace period less the
        preStop delay and a margin to exit, so the kubelet's SIGKILL never lands mid-drain."""
        return self.termination_grace_seconds(spec) - self.drain_seconds - SHUTDOWN_MARGIN_SECONDS

    def args(self, spec: InferenceServiceSpec) -> list[str]:
        return [*self.engine_args(spec), *spec.engine.args]

    def container(self, spec: InferenceServiceSpec, default_image: str | None = None) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": CONTAINER_NAME,
            "image": spec.engine.image or default_image or self.image,
            "imagePullPolicy": "IfNotPresent",
        }
        command = self.command()
        if command:
            container["command"] = command
        container.update({
            "args": self.args(spec),
            "ports": [{"name": PORT_NAME, "containerPort": self.port, "protocol": "TCP"}],
            "env": self.env(spec),
        })
        if spec.engine.env_from:
            container["envFrom"] = [source.model_dump(by_alias=True, exclude_none=True)
                                    for source in spec.engine.env_from]
        container.update({
            "resources": self.resources(spec),
            "volumeMounts": self.volume_mounts(spec),
            "startupProbe": self._probe(self.health_path, self.probes.startup_period,
                                        self.probes.startup_failures),
            "readinessProbe": self._probe(self.ready_path, self.probes.readiness_period, 3),
            "livenessProbe": self._probe(self.health_path, self.probes.liveness_period,
                                         self.probes.liveness_failures),
            "lifecycle": {"preStop": {"sleep": {"seconds": self.drain_seconds}}},
            "securityContext": self.security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",  # the log's tail when no message was written
        })
        return container

    def _probe(self, path: str, period: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTP"}, "periodSeconds": period,
                "timeoutSeconds": self.probes.timeout, "failureThreshold": failures, "successThreshold": 1}

    def env(self, spec: InferenceServiceSpec) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": MODEL_CACHE_PATH}]
        if self.runs_as_non_root:
            env.append({"name": "HOME", "value": "/tmp"})
        token = spec.secrets.hugging_face_token
        if token is not None:
            ref = {"secretKeyRef": {"name": token.name, "key": token.key}}
            env.append({"name": "HF_TOKEN", "valueFrom": ref})
        env.extend(self.extra_env(spec))
        # The user's variables win over ours with the same name (one entry per name).
        overridden = {item.name for item in spec.engine.env}
        env = [item for item in env if item["name"] not in overridden]
        # An empty value is left out, as the API server stores it (else it would read as drift).
        env.extend(item.model_dump(by_alias=True, exclude_none=True, exclude=None if item.value else {"value"})
                   for item in spec.engine.env)
        return env

    def resources(self, spec: InferenceServiceSpec) -> dict[str, Any]:
        limits: dict[str, Any] = {}
        requests: dict[str, Any] = {}
        res = spec.resources
        if res.gpus:
            limits[res.gpu_resource_name] = str(res.gpus)
            requests[res.gpu_resource_name] = str(res.gpus)
        for name, value in (("cpu", res.cpu), ("memory", res.memory)):
            if value is not None:
                limits[name] = str(value)
                requests[name] = str(value)
        out: dict[str, Any] = {}
        if limits:
            out["limits"] = limits
        if requests:
            out["requests"] = requests
        return out

    def volume_mounts(self, spec: InferenceServiceSpec) -> list[dict[str, Any]]:
        mounts = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"},
                  {"name": CACHE_VOLUME, "mountPath": MODEL_CACHE_PATH}]
        if self.runs_as_non_root:
            mounts.append({"name": TMP_VOLUME, "mountPath": "/tmp"})
        mounts.extend(mount.model_dump(by_alias=True, exclude_none=True) for mount in spec.engine.volume_mounts)
        return mounts

    def volumes(self, spec: InferenceServiceSpec) -> list[dict[str, Any]]:
        shm = {"medium": "Memory", "sizeLimit": str(spec.resources.shared_memory)}
        cache = spec.model_cache
        if cache.persistent_volume_claim:
            cache_source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": cache.persistent_volume_claim}}
        else:
            cache_source = {"emptyDir": {"sizeLimit": str(cache.size_limit)} if cache.size_limit else {}}
        volumes = [{"name": SHM_VOLUME, "emptyDir": shm}, {"name": CACHE_VOLUME, **cache_source}]
        if self.runs_as_non_root:
            volumes.append({"name": TMP_VOLUME, "emptyDir": {}})
        volumes.extend(volume.source() for volume in spec.pod.volumes)
        return volumes

    def security_context(self) -> dict[str, Any]:
        context: dict[str, Any] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        if self.runs_as_non_root:
            context.update(runAsNonRoot=True, runAsUser=self.non_root_uid, runAsGroup=self.non_root_uid)
        if self.read_only_root:
            context["readOnlyRootFilesystem"] = True
        return context

    def pod_security_context(self) -> dict[str, Any]:
        context: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
        if self.runs_as_non_root:
            # fsGroup makes the cache volume writable for the non-root user.
            uid = self.non_root_uid
            context.update(runAsNonRoot=True, runAsUser=uid, runAsGroup=uid,
                           fsGroup=uid, fsGroupChangePolicy="OnRootMismatch")
        return context


def flag(name: str, value: object | None) -> list[str]:
    """`--name value`, or nothing when the value is None."""
    return [] if value is None else [name, str(value)]
