"""Pod classification (pure): a pod that cannot start is named, a loading pod is not a problem."""

from __future__ import annotations

import pytest

from tokenscale.desired import conditions
from tokenscale.desired.pods import PodHealth, classify_pod


def pod(name="chat-abc", *, waiting=None, last=None, terminated=None, restarts=0, started=None, ready=False,
        scheduled=True, message="", init=False):
    container = {"name": "server", "restartCount": restarts, "state": {}, "lastState": {}}
    if waiting:
        container["state"]["waiting"] = {"reason": waiting, "message": message}
    if terminated:
        container["state"]["terminated"] = terminated
    if last:
        container["lastState"]["terminated"] = last
    if started is not None:
        container["started"] = started
    conditions_ = [{"type": "Ready", "status": "True" if ready else "False"}]
    if not scheduled:
        conditions_.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."})
    status = {"phase": "Pending" if not scheduled else "Running", "conditions": conditions_,
              ("initContainerStatuses" if init else "containerStatuses"): [container]}
    return {"metadata": {"name": name}, "status": status}


def test_crash_loop_is_named_with_the_containers_last_words():
    # The real-cluster case: waiting CrashLoopBackOff, restartCount 7, last exit 1 with an OSError.
    problem = classify_pod(pod(waiting="CrashLoopBackOff", restarts=7, message="back-off 5m0s restarting",
                               last={"exitCode": 1, "reason": "Error",
                                     "message": "OSError: meta-llama/x is not a local folder and is not a valid "
                                                "model identifier"}))
    assert problem.state == "CrashLoopBackOff" and problem.restarts == 7 and problem.container == "server"
    assert problem.detail == ("exit code 1: OSError: meta-llama/x is not a local folder and is not a valid "
                              "model identifier")


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"])
def test_waiting_reasons_that_need_a_person(reason):
    message = 'secret "hf-token" not found' if reason == "CreateContainerConfigError" else "pull access denied"
    problem = classify_pod(pod(waiting=reason, message=message))
    assert (problem.state, problem.detail) == (reason, message)


def test_oom_killed_and_killed_by_the_startup_probe():
    oom = classify_pod(pod(waiting="CrashLoopBackOff", restarts=3, last={"exitCode": 137, "reason": "OOMKilled"}))
    assert oom.state == "OOMKilled" and "exit code 137" in oom.detail
    probe = classify_pod(pod(restarts=3, started=False, last={"exitCode": 137, "reason": "Error"}))
    assert probe.state == "StartupProbeFailed" and "startup probe" in probe.detail


def test_loading_ready_and_deleted_pods_are_not_problems():
    assert classify_pod(pod(waiting="ContainerCreating")) is None
    assert classify_pod(pod(started=False)) is None  # loading the model: capacity on its way
    assert classify_pod(pod(ready=True)) is None
    gone = pod(waiting="CrashLoopBackOff")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert classify_pod(gone) is None


def test_unschedulable_is_counted_apart_from_failing():
    health = PodHealth.of([classify_pod(pod("a", scheduled=False)), classify_pod(pod("b", waiting="ErrImagePull")),
                           classify_pod(pod("c", init=True, waiting="CrashLoopBackOff", last={"exitCode": 2}))])
    assert [p.pod for p in health.unschedulable] == ["a"] and [p.pod for p in health.failing] == ["b", "c"]


def test_message_truncates_long_termination_messages():
    health = PodHealth.of([classify_pod(pod(waiting="CrashLoopBackOff", restarts=2,
                                            last={"exitCode": 1, "message": "Traceback " + "x" * 5000}))])
    assert health.reason == "CrashLoopBackOff"
    assert health.message.startswith("1 pod(s) cannot start: CrashLoopBackOff (pod chat-abc container server, "
                                     "2 restart(s)): exit code 1: Traceback")
    assert health.message.endswith("...") and len(health.message) < 320


def test_workload_status_names_the_failure_instead_of_loading():
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 1},
                  "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}}
    health = PodHealth.of([classify_pod(pod(waiting="CrashLoopBackOff", restarts=7, last={"exitCode": 1}))])
    status = conditions.workload_status(deployment, generation=1, conditions=None, endpoint="e", selector="s",
                                        pod_health=health)
    ready = conditions.get_condition(status["conditions"], "Ready")
    degraded = conditions.get_condition(status["conditions"], "Degraded")
    assert (ready["status"], ready["reason"]) == ("False", "CrashLoopBackOff")
    assert "loading the model" not in ready["message"] and "exit code 1" in ready["message"]
    assert (degraded["status"], degraded["reason"]) == ("True", "CrashLoopBackOff") and status["phase"] == "Degraded"
    # Fixed: the next pass clears it.
    healed = conditions.workload_status(deployment, generation=1, conditions=status["conditions"], endpoint="e",
                                        selector="s")
    assert conditions.get_condition(healed["conditions"], "Degraded")["status"] == "False"
