"""The OpenAI-compatible HTTP server: `create_app` puts `tfchat.serving.
openai_api` behind FastAPI, and `serve` runs it with uvicorn.

Routes:
  * `POST /v1/chat/completions`, `POST /v1/completions` (streamed as
    server-sent events with `"stream": true`), `GET /v1/models`;
  * `GET /health` (no key needed: for load balancers);
  * `GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`, shaped as
    vLLM's, which lm-evaluation-harness's `local-completions` reads;
  * `GET /` the web chat page, and `POST /feedback`, where its judgements
    are appended to the `--feedback` file as `python -m tfchat.chat
    --feedback` appends them.

The stream is written as plain `StreamingResponse` lines (`data: {json}`
and a blank line, then `data: [DONE]`): OpenAI's stream uses no event
names, ids or retries, so sse-starlette would add a dependency for nothing.
FastAPI's request models are not used: their validation errors are 422s
in FastAPI's shape, and the API owes OpenAI's 400 body for every bad field.
"""

import asyncio
import json
import logging
import os
import secrets

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tfchat.inference.batching import QueueFull
from tfchat.serving import openai_api as api

log = logging.getLogger("tfchat.serve")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a long conversation is well under it
PAGE = os.path.join(os.path.dirname(__file__), "web", "chat.html")


def _error(status, message, kind="invalid_request_error", param=None, code=None):
    return JSONResponse(api.ApiError(message, param, status, kind, code).body, status_code=status)


def loop_time():
    return asyncio.get_running_loop().time()


def _sse(body):
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(served, api_key=None, feedback=None):
    """The app for `served` (an `openai_api.ServedRun`); `feedback` is a
    `tfchat.data.preferences.FeedbackLog` or None."""
    app = FastAPI(title="tfchat", docs_url=None, redoc_url=None, openapi_url=None)

    def authorize(request):
        if not api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
            raise api.ApiError("Missing or wrong API key: send 'Authorization: Bearer KEY'.",
                               status=401, code="invalid_api_key")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error):
        # Unknown routes and methods answer in the API's shape too.
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return _error(error.status_code, f"{request.method} {request.url.path}: {error.detail}.",
                      kind=kind)

    @app.exception_handler(Exception)
    async def internal_error(request, error):
        # A bug answers 500 in the API's shape; the server stays up.
        log.error("error serving %s", request.url.path, exc_info=error)
        return _error(500, "Internal error; see the server's log.", kind="server_error")

    async def read_body(request):
        authorize(request)
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > MAX_BODY_BYTES:
            raise api.ApiError(f"The request body is over {MAX_BODY_BYTES} bytes.", status=413)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise api.ApiError(f"The request body is over {MAX_BODY_BYTES} bytes.", status=413)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise api.ApiError(f"The request body is not valid JSON: {e}.") from None

    @app.exception_handler(api.ApiError)
    async def api_error(request, error):
        return JSONResponse(error.body, status_code=error.status)

    @app.get("/health")
    async def health():
        generating, waiting = served.engine.load
        return {"status": "ok", "model": served.name, "generating": generating,
                "waiting": waiting}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [
            {"id": served.name, "object": "model", "created": served.created,
             "owned_by": "tfchat", "max_model_len": served.context}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        parsed = await run_in_threadpool(api.chat_request, body, served)
        return await respond(request, parsed, api.chat_response)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        parsed = await run_in_threadpool(api.completion_request, body, served)
        return await respond(request, parsed, api.completion_response)

    async def respond(request, parsed, build):
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()
        for index, job in enumerate(parsed.jobs):
            job.on_text = (lambda i: lambda piece: loop.call_soon_threadsafe(
                events.put_nowait, ("text", i, piece)))(index)
            job.on_done = (lambda i: lambda job: loop.call_soon_threadsafe(
                events.put_nowait, ("done", i, job)))(index)
        try:
            served.engine.submit(parsed.jobs)
        except QueueFull as e:
            return _error(429, str(e), kind="rate_limit_error", code="server_busy")
        if parsed.stream:
            return StreamingResponse(stream(parsed, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            await wait_all(request, parsed, events)
        finally:
            for job in parsed.jobs:
                job.cancel()
        for job in parsed.jobs:
            api.trim_to_stop(job, served)
        return await run_in_threadpool(build, parsed, served)

    async def wait_all(request, parsed, events):
        """Until every job ended; returns early when the client went away
        (checked twice a second whether or not text is coming)."""
        remaining = len(parsed.jobs)
        checked = loop_time()
        while remaining:
            try:
                kind, _, job = await asyncio.wait_for(events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                kind = None
            if loop_time() - checked >= 0.25:
                if await request.is_disconnected():
                    return
                checked = loop_time()
            if kind == "done":
                remaining -= 1
                if job.finish_reason == "error":
                    raise RuntimeError(f"generation failed: {job.error!r}")

    async def stream(parsed, events):
        remaining = len(parsed.jobs)
        try:
            if parsed.is_chat:
                for i in range(len(parsed.jobs)):
                    yield _sse(api.chunk(parsed, served, i, first=True))
            while remaining:
                kind, index, value = await events.get()
                if kind == "text":
                    yield _sse(api.chunk(parsed, served, index, text=value))
                    continue
                remaining -= 1
                if value.finish_reason == "error":
                    yield _sse({"error": {"message": "generation failed; see the server's log",
                                          "type": "server_error", "param": None, "code": None}})
                    return
                api.trim_to_stop(value, served)
                yield _sse(api.chunk(parsed, served, index, finish=api.finish_reason(value)))
            if parsed.include_usage:
                yield _sse(api.usage_chunk(parsed, served))
            yield "data: [DONE]\n\n"
        finally:
            # A client that went away frees its rows at the next chunk.
            for job in parsed.jobs:
                job.cancel()

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request):
        authorize(request)
        tokenizer = served.tokenizer
        bos = tokenizer.start_ids[0] if tokenizer.start_ids else None
        return {"eos_token": served.special_token_text(tokenizer.eos_id),
                "bos_token": None if bos is None else served.special_token_text(bos),
                "pad_token": served.special_token_text(tokenizer.pad_id),
                "chat_template": tokenizer.chat_template.to_jinja() if served.chats else None,
                "model_max_length": served.context}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await read_body(request)
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise api.ApiError("'prompt' must be a string.", param="prompt")
        special = body.get("add_special_tokens", True)
        tokens = await run_in_threadpool(served.tokenize, text, bool(special))
        return {"tokens": tokens, "count": len(tokens), "max_model_len": served.context}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await read_body(request)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        size = served.tokenizer.vocabulary_size
        if not (isinstance(tokens, list) and all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < size for t in tokens)):
            raise api.ApiError(f"'tokens' must be a list of token ids in 0..{size - 1}.",
                               param="tokens")
        return {"prompt": await run_in_threadpool(served.detokenize, tokens)}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            html = f.read()
        settings = {"model": served.name, "chats": served.chats,
                    "feedback": feedback is not None, "needsKey": bool(api_key)}
        return html.replace("/*TFCHAT_SETTINGS*/{}", json.dumps(settings))

    @app.post("/feedback")
    async def record_feedback(request: Request):
        if feedback is None:
            raise api.ApiError("This server records no feedback: start it with --feedback FILE.",
                               status=404, kind="not_found_error")
        body = await read_body(request)
        record = await run_in_threadpool(api.feedback_record, body)
        await run_in_threadpool(feedback.add, record)
        return {"recorded": True, "file": feedback.path, "records": feedback.records}

    return app


def serve(app, host="127.0.0.1", port=8000, on_ready=None):
    """Runs `app` with uvicorn until interrupted."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            on_ready()

        server.startup = startup
    server.run()
