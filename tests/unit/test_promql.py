"""PromQL builders: shape of the batched queries, both spellings, and injection attempts."""

from __future__ import annotations

import re

import pytest

from tokenscale.api.models import EngineType
from tokenscale.engines.metric_names import METRIC_NAMES, both_spellings, families, metric_names
from tokenscale.metrics import promql
from tokenscale.metrics.promql import Grouping, PromQLError, Windows, signal_queries

INJECTIONS = [
    'x"} or vector(1) #',
    "x{a=\"b\"}",
    "x) or up",
    "x\n",
    "",
    "x y",
    "x`",
    "x\\",
    "namespace=~\".*\"",
]


def test_every_engine_type_has_names_for_the_core_signals():
    for engine in EngineType:
        names = metric_names(engine)
        assert names.generated_tokens and names.prompt_tokens and names.queue_depth and names.running_requests
    assert metric_names("builtin") is metric_names("vllm")  # the builtin server speaks vLLM's names
    assert set(families()) == {"vllm", "sglang", "tgi", "trtllm"}


def test_colon_names_come_with_their_escaped_spelling():
    assert both_spellings("vllm:num_requests_waiting") == ("vllm:num_requests_waiting", "vllm_num_requests_waiting")
    assert both_spellings("tgi_queue_size") == ("tgi_queue_size",)
    for names in METRIC_NAMES.values():
        for spellings in (names.generated_tokens, names.queue_depth, names.ttft_histogram):
            colon = [n for n in spellings if ":" in n]
            for name in colon:
                assert name.replace(":", "_") in spellings, name


def test_batched_query_selects_all_services_and_groups_by_namespace_and_service():
    query = promql.counter_rate(("vllm:generation_tokens_total",), "1m", Grouping())
    assert query == (
        "sum by (namespace, tokenscale_io_service) (sum by (namespace, tokenscale_io_service, instance) "
        '(rate(vllm:generation_tokens_total{tokenscale_io_service!=""}[1m])))'
    )


def test_two_spellings_are_combined_per_pod_with_max_never_added():
    query = promql.gauge_sum(("vllm:num_requests_waiting", "vllm_num_requests_waiting"), Grouping())
    outer = "sum by (namespace, tokenscale_io_service) (max by (namespace, tokenscale_io_service, instance) ("
    assert query.startswith(outer)
    assert query.count("label_replace(") == 2 and " or " in query
    assert 'vllm:num_requests_waiting{tokenscale_io_service!=""}' in query
    assert 'vllm_num_requests_waiting{tokenscale_io_service!=""}' in query


def test_configured_label_names_are_used_everywhere():
    grouping = Grouping(namespace_label="kubernetes_namespace", service_label="svc", pod_label="pod")
    queries = signal_queries(metric_names("sglang"), Windows("30s", "2m"), grouping)
    for query in queries.values():
        assert "tokenscale_io_service" not in query and "instance" not in query
        assert "kubernetes_namespace, svc" in query
    assert "[30s]" in queries["tokens_per_second"] and "[2m]" in queries["tokens_per_second_long"]


def test_signals_an_engine_does_not_export_are_left_out():
    tgi = signal_queries(metric_names("tgi"), Windows(), Grouping())
    assert "kv_cache_usage" not in tgi and "ttft_p90_seconds" not in tgi
    assert "tgi_request_generated_tokens_sum" in tgi["tokens_per_second"]
    vllm = signal_queries(metric_names("vllm"), Windows(), Grouping())
    assert vllm["ttft_p90_seconds"].startswith("histogram_quantile(0.9, ")
    assert "vllm:time_to_first_token_seconds_bucket" in vllm["ttft_p90_seconds"]
    assert "le)" in vllm["ttft_p90_seconds"]  # buckets kept apart until the quantile


def test_queries_are_balanced():
    for names in families().values():
        for query in signal_queries(names, Windows(), Grouping()).values():
            assert query.count("(") == query.count(")") and query.count("{") == query.count("}")
            assert query.count('"') % 2 == 0


@pytest.mark.parametrize("bad", INJECTIONS + ["9lives", "__name__", "a-b", "a.b"])
def test_label_names_reject_injection(bad):
    with pytest.raises(PromQLError):
        Grouping(service_label=bad)
    with pytest.raises(PromQLError):
        promql.label_name(bad)


@pytest.mark.parametrize("bad", INJECTIONS + ["9x", "x-y"])
def test_metric_names_reject_injection(bad):
    with pytest.raises(PromQLError):
        promql.gauge_sum((bad,), Grouping())


@pytest.mark.parametrize("bad", INJECTIONS + ["Upper", "-lead", "trail-", "a_b", "x" * 254])
def test_label_values_must_be_kubernetes_names(bad):
    with pytest.raises(PromQLError):
        Grouping().one_service("default", bad)
    with pytest.raises(PromQLError):
        Grouping().one_service(bad, "llama")


def test_label_values_that_are_kubernetes_names_pass():
    assert Grouping().one_service("team-a", "llama-3.1-8b") == (
        'namespace="team-a", tokenscale_io_service="llama-3.1-8b"'
    )


@pytest.mark.parametrize("bad", ["1m]) or up #", "5", "m", "1.5m", "1m ", "-1m", "1M"])
def test_windows_reject_anything_but_durations(bad):
    with pytest.raises(PromQLError):
        Windows(short=bad)
    with pytest.raises(PromQLError):
        promql.counter_rate(("x_total",), bad, Grouping())


def test_windows_accept_prometheus_durations():
    for good in ("15s", "500ms", "1m30s", "2h", "1d"):
        assert promql.duration(good) == good


def test_labels_must_differ():
    with pytest.raises(PromQLError):
        Grouping(namespace_label="x", service_label="x")


def test_quantile_bounds():
    with pytest.raises(PromQLError):
        promql.histogram_quantile(1.5, ("x",), "1m", Grouping())


def test_no_name_reaches_a_query_unvalidated():
    # Every identifier in every query is a known metric name, a configured label or PromQL syntax.
    allowed = {n for names in families().values() for field in names.__dataclass_fields__.values()
               if field.name != "family" for n in getattr(names, field.name)}
    for names in families().values():
        for query in signal_queries(names, Windows(), Grouping()).values():
            for selector in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query):
                base = re.sub(r"_bucket$", "", selector)
                assert selector in allowed or base in allowed, selector
