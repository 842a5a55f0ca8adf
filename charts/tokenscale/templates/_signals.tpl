{{/*
The metric names behind each canonical signal, every engine and every spelling Prometheus may store
(vllm:x and vllm_x, see tokenscale/engines/metric_names.py; a unit test keeps the two lists equal).
*/}}
{{- define "tokenscale.signalMetrics" -}}
generated_tokens: [vllm:generation_tokens_total, vllm_generation_tokens_total, sglang:generation_tokens_total, sglang_generation_tokens_total, tgi_request_generated_tokens_sum, trtllm_generation_tokens_total, "trtllm:generation_tokens_total"]
prompt_tokens: [vllm:prompt_tokens_total, vllm_prompt_tokens_total, sglang:prompt_tokens_total, sglang_prompt_tokens_total, tgi_request_input_length_sum, trtllm_prompt_tokens_total, "trtllm:prompt_tokens_total"]
queue_depth: [vllm:num_requests_waiting, vllm_num_requests_waiting, sglang:num_queue_reqs, sglang_num_queue_reqs, tgi_queue_size, trtllm_num_requests_waiting, "trtllm:num_requests_waiting"]
running_requests: [vllm:num_requests_running, vllm_num_requests_running, sglang:num_running_reqs, sglang_num_running_reqs, tgi_batch_current_size, trtllm_num_requests_running, "trtllm:num_requests_running"]
kv_cache_usage: [vllm:kv_cache_usage_perc, vllm_kv_cache_usage_perc, sglang:token_usage, sglang_token_usage, trtllm_kv_cache_utilization, "trtllm:kv_cache_utilization"]
ttft_histogram: [vllm:time_to_first_token_seconds, vllm_time_to_first_token_seconds, sglang:time_to_first_token_seconds, sglang_time_to_first_token_seconds, trtllm_time_to_first_token_seconds, "trtllm:time_to_first_token_seconds"]
{{- end }}

{{/* A selector for any of a list of metric names, optionally with a suffix (e.g. _bucket). */}}
{{- define "tokenscale.nameSelector" -}}
{{- $names := list }}
{{- range .names }}{{ $names = append $names (printf "%s%s" . $.suffix) }}{{ end -}}
{__name__=~"{{ join "|" $names }}",{{ .service }}!=""}
{{- end }}
