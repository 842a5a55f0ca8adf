"""The OpenAI-compatible HTTP front: FastAPI routes over the engine thread."""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from . import __version__
from .engine import Engine, EngineConfig
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse
from .sampling import SamplingParams
from .scheduler import QueueFull
from .sequence import Output

log = logging.getLogger(__name__)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI legacy completions default


@dataclass
class ServerSettings:
    model: str
    served_model_names: list[str]
    revision: str | None = None  # hub revision (branch, tag or commit) of a hub id
    device: str = "auto"
    dtype: str = "auto"
    max_batch: int | None = None
    max_model_len: int | None = None
    token_budget: int | None = None
    max_waiting: int = 256
    api_key: str | None = None
    drain_timeout_s: float = 30.0
    retry_after_s: int = 1


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    engine: Engine | None = None
    # The HTTP side's own tokenizer: a Rust tokenizer shared with the engine thread can fail with
    # "Already borrowed" when one thread encodes while the other decodes.
    tokenizer: object = None
    load_error: str | None = None
    draining: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    streams: dict[str, asyncio.Queue] = field(default_factory=dict)
    on_fatal: Callable[[str], None] | None = None

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.draining

    @property
    def in_flight(self) -> int:
        return len(self.streams)

    def deliver(self, outputs: list[Output]) -> None:
        """Engine thread -> event loop, once per step for all requests."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[Output]) -> None:
        for output in outputs:
            queue = self.streams.get(output.request_id)
            if queue is not None:
                queue.put_nowait(output)


def load_engine(state: ServerState) -> None:
    """Load the model and start the engine (in a thread: /health answers meanwhile, /ready does not)."""
    from .model_runner import derive_limits, load_model, resolve_device, resolve_dtype

    settings = state.settings
    try:
        started = time.monotonic()
        device = resolve_device(settings.device)
        loaded = load_model(settings.model, device, resolve_dtype(settings.dtype, device),
                            revision=settings.revision)
        max_batch, max_model_len = derive_limits(loaded, settings.max_batch, settings.max_model_len)
        budget = settings.token_budget or max(512, 2 * max_batch)
        config = EngineConfig(max_batch=max_batch, max_model_len=max_model_len, token_budget=budget,
                              max_waiting=settings.max_waiting)
        engine = Engine(loaded, config, state.metrics, state.deliver)
        engine.start()
        state.tokenizer = copy.deepcopy(loaded.tokenizer)
        state.engine = engine
        log.info("model %s loaded on %s (%s) in %.1f s: %d slots x %d tokens", settings.model, device,
                 loaded.dtype, time.monotonic() - started, max_batch, max_model_len)
    except Exception as error:  # the process must say why and stop, not hang unready
        log.exception("loading %s failed", settings.model)
        state.load_error = f"{type(error).__name__}: {error}"
        if state.on_fatal:
            state.on_fatal(state.load_error)


def create_app(settings: ServerSettings) -> FastAPI:
    import prometheus_client

    prometheus_client.disable_created_metrics()
    state = ServerState(settings, ServerMetrics(settings.served_model_names[0]))

    async def lifespan(app: FastAPI):
        state.loop = asyncio.get_running_loop()
        loader = threading.Thread(target=load_engine, args=(state,), name="model-loader", daemon=True)
        loader.start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="tokenscale-server", version=__version__, lifespan=lifespan)
    app.state.server = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        log.exception("unexpected error serving %s", request.url.path)
        return JSONResponse(ApiError(500, f"internal error: {type(error).__name__}", kind="internal_error").body(),
                            status_code=500)

    @app.get("/health")
    async def health():
        if state.load_error or (state.engine is not None and not state.engine.alive):
            return JSONResponse({"status": "unhealthy", "error": state.load_error or "engine thread died"}, 500)
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.ready:
            return {"status": "ready"}
        reason = "draining" if state.draining else "loading"
        return JSONResponse({"status": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.exposition(), media_type=None, headers={"Content-Type": CONTENT_TYPE})

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(state, request)
        max_len = state.engine.config.max_model_len if state.engine else None
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tokenscale", "root": settings.model,
                 "max_model_len": max_len} for name in settings.served_model_names]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        engine = _admit(state, request)
        body = parse(ChatCompletionRequest, await request.body())
        model = _check_model(state, body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = state.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=body.add_generation_prompt)
        except Exception as error:
            raise ApiError(400, f"messages could not be rendered by the chat template: {error}",
                           param="messages") from None
        prompt_ids = state.tokenizer(text, add_special_tokens=False).input_ids
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = _sampling(engine, body, len(prompt_ids), max_tokens)
        return await _generate(state, request, engine, prompt_ids=prompt_ids, params=params, body=body, model=model,
                               chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        engine = _admit(state, request)
        body = parse(CompletionRequest, await request.body())
        model = _check_model(state, body.model)
        prompt_ids = _completion_prompt(state, engine, body.prompt)
        max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        params = _sampling(engine, body, len(prompt_ids), max_tokens)
        return await _generate(state, request, engine, prompt_ids=prompt_ids, params=params, body=body, model=model,
                               chat=False)

    return app


# --- request handling ------------------------------------------------------------------------------

def _authorize(state: ServerState, request: Request) -> None:
    key = state.settings.api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(401, "invalid or missing API key", kind="authentication_error", code="invalid_api_key")


def _admit(state: ServerState, request: Request) -> Engine:
    _authorize(state, request)
    if state.draining:
        raise ApiError(503, "the server is shutting down", kind="service_unavailable",
                       headers={"Retry-After": str(state.settings.retry_after_s)})
    if state.engine is None:
        raise ApiError(503, "the model is still loading", kind="service_unavailable",
                       headers={"Retry-After": str(state.settings.retry_after_s)})
    return state.engine


def _check_model(state: ServerState, model: str | None) -> str:
    names = state.settings.served_model_names
    if model is None:
        return names[0]
    if model not in names:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {names[0]!r}",
                       param="model", code="model_not_found")
    return model


def _completion_prompt(state: ServerState, engine: Engine, prompt) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return state.tokenizer(prompt).input_ids
    if prompt and all(isinstance(t, int) for t in prompt):
        vocab = engine.runner.vocab_size
        if any(t < 0 or t >= vocab for t in prompt):
            raise ApiError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
        return list(prompt)
    raise ApiError(400, "prompt must be one non-empty string or one list of token ids", param="prompt")


def _sampling(engine: Engine, body, prompt_len: int, max_tokens: int | None) -> SamplingParams:
    limit = engine.config.max_model_len
    if prompt_len == 0:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if prompt_len >= limit:
        raise ApiError(400, f"the prompt has {prompt_len} tokens; this model's maximum context length is "
                       f"{limit} tokens", param="messages" if hasattr(body, "messages") else "prompt",
                       code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = limit - prompt_len
    if max_tokens < 1 or prompt_len + max_tokens > limit:
        raise ApiError(400, f"max_tokens must be between 1 and {limit - prompt_len} for this prompt "
                       f"({prompt_len} prompt tokens, context length {limit})", param="max_tokens")
    if body.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    if body.logprobs not in (None, False, 0):
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    if getattr(body, "echo", False):
        raise ApiError(400, "echo is not supported", param="echo")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        seed=body.seed,
        stop=body.stop or [],
        stop_token_ids=body.stop_token_ids or [],
        ignore_eos=bool(body.ignore_eos),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
    )


async def _generate(state: ServerState, request: Request, engine: Engine, *, prompt_ids: list[int],
                    params: SamplingParams, body, model: str, chat: bool):
    prefix = "chatcmpl" if chat else "cmpl"
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    queue: asyncio.Queue[Output] = asyncio.Queue()
    state.streams[request_id] = queue  # before submitting: the first output may come at once
    try:
        engine.submit(prompt_ids, params, request_id)
    except QueueFull:
        state.streams.pop(request_id, None)
        retry = str(state.settings.retry_after_s)
        raise ApiError(429, "the server's request queue is full; retry later", kind="rate_limit_exceeded",
                       headers={"Retry-After": retry}) from None
    created = int(time.time())
    if body.stream:
        options = body.stream_options
        chunks = _stream_chunks(state, engine, queue, request_id=request_id, model=model, created=created, chat=chat,
                                include_usage=bool(options and options.include_usage),
                                continuous_usage=bool(options and options.continuous_usage_stats))
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _complete(state, request, engine, queue, request_id=request_id, model=model, created=created,
                           chat=chat)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _complete(state, request, engine, queue, *, request_id, model, created, chat) -> JSONResponse:
    """Non-streaming: gather the whole output; a client that hangs up frees its slot at once."""
    text: list[str] = []
    watcher = asyncio.create_task(_wait_disconnect(request))
    finished: Output | None = None
    try:
        while finished is None:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                log.info("client of %s disconnected; aborting", request_id)
                return JSONResponse({}, status_code=499)
            output = getter.result()
            text.append(output.text_delta)
            if output.finish_reason:
                finished = output
    finally:
        watcher.cancel()
        state.streams.pop(request_id, None)
        if finished is None:
            engine.abort(request_id)
    if finished.finish_reason == "error":
        raise ApiError(500, finished.error or "generation failed", kind="internal_error")
    usage = _usage(finished)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                  "finish_reason": finished.finish_reason, "logprobs": None}
        return JSONResponse({"id": request_id, "object": "chat.completion", "created": created, "model": model,
                             "choices": [choice], "usage": usage})
    choice = {"index": 0, "text": "".join(text), "finish_reason": finished.finish_reason, "logprobs": None}
    return JSONResponse({"id": request_id, "object": "text_completion", "created": created, "model": model,
                         "choices": [choice], "usage": usage})


def _usage(output: Output) -> dict[str, int]:
    return {"prompt_tokens": output.prompt_tokens, "completion_tokens": output.completion_tokens,
            "total_tokens": output.prompt_tokens + output.completion_tokens}


def _sse(payload) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _stream_chunks(state, engine, queue, *, request_id, model, created, chat, include_usage,
                         continuous_usage) -> AsyncIterator[str]:
    """SSE chunks as OpenAI sends them; if the client goes away, Starlette cancels us and we abort."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    finished = False

    def chunk(choice, usage=None):
        payload = {"id": request_id, "object": kind, "created": created, "model": model, "choices": choice}
        if usage is not None:
            payload["usage"] = usage
        return _sse(payload)

    try:
        if chat:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        while True:
            output = await queue.get()
            if output.finish_reason == "error":
                finished = True
                yield _sse(ApiError(500, output.error or "generation failed", kind="internal_error").body())
                break
            usage = _usage(output) if continuous_usage else None
            if output.text_delta or output.finish_reason:
                delta = {"content": output.text_delta} if output.text_delta else {}
                choice = ({"index": 0, "delta": delta} if chat else {"index": 0, "text": output.text_delta})
                choice.update(logprobs=None, finish_reason=output.finish_reason)
                yield chunk([choice], usage)
            if output.finish_reason:
                finished = True
                if include_usage:
                    yield chunk([], _usage(output))
                break
        yield "data: [DONE]\n\n"
    finally:
        state.streams.pop(request_id, None)
        if not finished:
            log.info("client of %s disconnected; aborting", request_id)
            engine.abort(request_id)
