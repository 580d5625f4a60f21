"""`darknetpy serve`: HTTP generation, OpenAI's completions API, continuous batching.

A thin layer over generation.py: every request is a generation.Sample, and one engine thread
steps all of them as slots of one generation.Batch (a batch-invariant many-stream Stepper), so a
request joins at the next step, leaves as soon as it ends, and gets exactly the text it gets
alone. The HTTP side (FastAPI on uvicorn, the `[serve]` extra) validates requests, hands Samples
to the engine and streams what comes back:

    client -> FastAPI handler -> Engine.submit (bounded queue; 503 past it)
           <- pieces (asyncio queue) <- engine thread: Batch.step() over every running Sample

The contract is DESIGN.md's "`darknetpy serve`"; where it is silent this follows OpenAI (and
vLLM, llama.cpp's server): temperature 0 is greedy, the stop text is not part of a completion's
text, `stream_options.include_usage` adds a last chunk with the usage.
"""
import asyncio
import codecs
import collections
import dataclasses
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from importlib import resources
from typing import List, Optional, Union

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException

from . import generation
from .errors import DarknetpyError
from .options import GenerationOptions, ServeLimits

log = logging.getLogger("darknetpy.serve")
# Seconds between two hand-overs of the engine's events to the responses (and at each request's
# end): the steps in between go out together. A step of a small model takes well under a
# millisecond, and waking the event loop and writing to a socket about as long: a hand-over and a
# write per request per step would halve what 32 requests get.
FLUSH = 0.01


class ApiError(Exception):
    """A request that gets one JSON error: {"error": {"message", "type", "param"}}."""

    def __init__(self, status, message, param=None, kind="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers

    def response(self):
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param}},
                            status_code=self.status, headers=self.headers)


# ---- the engine: one thread steps every running request ------------------------------------------

class Job:
    """A request inside the engine: its Sample, the queue its events go to (on the asyncio loop),
    and `cancelled`, set when its client goes away (the engine frees its slots at the next step)."""

    def __init__(self, sample, loop):
        self.sample, self.loop, self.cancelled = sample, loop, False
        self.events = asyncio.Queue()


def deliver(pending):
    """Hand each job its items {job: [events list, ..., None when done]}, from the engine thread,
    with one wake-up of the asyncio loop (every job has the server's one loop)."""
    pending = {job: items for job, items in pending.items() if items}

    def put():
        for job, items in pending.items():
            job.events.put_nowait(items)
    if pending:
        next(iter(pending)).loop.call_soon_threadsafe(put)


class Engine:
    """The loop that drives the Batch: admit waiting jobs in order while their streams fit, drop
    cancelled ones, step, hand each job its events (None when it is done)."""

    def __init__(self, net, limits):
        self.batch = generation.Batch(net, limits.max_streams)
        self.max_queue, self.waiting, self.running = limits.max_queue, collections.deque(), []
        self.wake = threading.Condition()
        self.pending, self.delivered = {}, 0.0  # items not yet handed over, and when they last were
        self.thread = threading.Thread(target=self.run, name="darknetpy-engine", daemon=True)

    def health(self):
        return {"status": "ok", "active_streams": self.batch.used, "queued": len(self.waiting)}

    def submit(self, job):
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise ApiError(503, f"the server is busy: {len(self.waiting)} requests are waiting; retry later",
                               kind="server_busy", headers={"Retry-After": "1"})
            self.waiting.append(job)
            self.wake.notify()

    def run(self):
        while True:
            with self.wake:
                while not self.running and not self.waiting:
                    self.wake.wait()
                while self.waiting and self.waiting[0].sample.streams <= self.batch.free():
                    job = self.waiting.popleft()
                    if not job.cancelled:
                        self.batch.add(job.sample)
                        self.running.append(job)
                for job in [j for j in self.waiting if j.cancelled]:
                    self.waiting.remove(job)
            for job in [j for j in self.running if j.cancelled]:
                self.batch.remove(job.sample)
                self.running.remove(job)
                self.pending.pop(job, None)
            if not self.running:
                continue
            try:
                stepped = self.batch.step()
            except Exception as e:  # a fault of the model: every running request hears of it, once
                log.error("darknetpy: generation failed: %s", e)
                for job in self.running:
                    if job.sample in self.batch.samples:
                        self.batch.remove(job.sample)
                deliver({job: self.pending.pop(job, []) + [e] for job in self.running})
                self.running = []
                continue
            events, finished = dict(stepped), False
            for job in list(self.running):
                items = self.pending.setdefault(job, [])
                if events[job.sample]:
                    items.append(events[job.sample])
                if job.sample.done:
                    items.append(None)
                    self.running.remove(job)
                    finished = True
            if finished or time.monotonic() - self.delivered >= FLUSH:
                deliver(self.pending)
                self.pending, self.delivered = {}, time.monotonic()


# ---- text: bytes to UTF-8 pieces, the stop text held back ----------------------------------------

class Text:
    """One sample's bytes as text pieces for a client: decoded incrementally (a piece never splits a
    character; bytes that are not UTF-8 become U+FFFD), and for a completion the last bytes held
    back while they could still begin a stop text, which OpenAI leaves out of the text."""

    def __init__(self, hold=0):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.hold, self.held = hold, b""

    def piece(self, data):
        self.held += data
        cut = max(0, len(self.held) - self.hold)
        out, self.held = self.held[:cut], self.held[cut:]
        return self.decoder.decode(out)

    def end(self, matched=None):
        """The rest, less the stop text that ended the sample (if any)."""
        rest = self.held[:len(self.held) - len(matched)] if matched else self.held
        return self.decoder.decode(rest, final=True)


# ---- the request bodies --------------------------------------------------------------------------

class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(Body):
    include_usage: bool = False


class CompletionRequest(Body):
    """OpenAI's /v1/completions. Fields that would change the output and cannot be honoured are
    accepted only at their no-op values (checked in `completion_options`)."""
    model: Optional[str] = None
    prompt: str = Field(description="the text to continue, encoded with the model's vocabulary")
    max_tokens: Optional[int] = Field(16, ge=0, description="symbols to generate at most")
    temperature: Optional[float] = Field(1.0, ge=0, description="0 is greedy")
    top_p: Optional[float] = Field(1.0, gt=0, le=1)
    n: Optional[int] = Field(1, ge=1)
    stop: Optional[Union[str, List[str]]] = Field(None, description="up to 4 texts; the first one produced ends a "
                                                                    "choice, and is left out of its text")
    seed: Optional[int] = Field(None, description="with a seed the text is reproducible, alone or batched")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    echo: Optional[bool] = False
    best_of: Optional[int] = None
    logprobs: Optional[int] = None
    logit_bias: Optional[dict] = None
    presence_penalty: Optional[float] = 0.0
    frequency_penalty: Optional[float] = 0.0
    suffix: Optional[str] = None
    user: Optional[str] = None

    def given(self, name):
        """A field's value, or its default where the client sent null (OpenAI's clients may)."""
        value = getattr(self, name)
        return type(self).model_fields[name].default if value is None else value


GenerateRequest = create_model(  # every field of options.GenerationOptions, its type and default; and `stream`
    "GenerateRequest", __base__=Body, __doc__="Every option of `darknetpy generate` (options.GenerationOptions); "
    "with `srand` the text equals its output byte for byte. Ranges are checked by GenerationOptions, so a bad "
    "value gets the line `darknetpy generate` prints.",
    stream=(bool, False), **{f.name: (f.type, f.default) for f in dataclasses.fields(GenerationOptions)})


# ---- the app -------------------------------------------------------------------------------------

def create_app(net, name, limits):
    """The FastAPI app serving `net` (its /docs shows the OpenAPI schema); the engine starts with it."""
    engine = Engine(net, limits)
    engine.thread.start()
    app = FastAPI(title="darknetpy serve", description="Darknet's recurrent networks over OpenAI's completions API")

    @app.exception_handler(ApiError)
    async def api_error(request, e):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "),
                            ).response()
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        field = where[0] if where else None
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid')}"
        return ApiError(400, message, field).response()

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", kind=kind).response()

    @app.exception_handler(Exception)
    async def fault(request, e):  # logged once, by Guard
        return ApiError(500, "internal error", kind="server_error").response()

    def authorize(request: Request):
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {limits.api_key}".encode()):
            raise ApiError(401, "give the API key as the header 'Authorization: Bearer KEY'",
                           kind="authentication_error")

    api = APIRouter(dependencies=[Depends(authorize)] if limits.api_key is not None else [])

    @app.get("/health")
    async def health():
        """{"status": "ok", "active_streams": N, "queued": M}; never needs the key."""
        return engine.health()

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "darknetpy"}]}

    page = resources.files("darknetpy").joinpath("playground.html").read_text("utf-8")
    for f in dataclasses.fields(GenerationOptions):  # the form starts at generate's defaults
        page = page.replace("{{%s}}" % f.name, str(f.default))

    @api.get("/", response_class=HTMLResponse)
    async def playground():
        return page

    async def run(sample):
        """Submit a Sample; yields its lists of (sample, piece, last) events as they come."""
        job = Job(sample, asyncio.get_running_loop())
        engine.submit(job)
        try:
            while True:
                items = await job.events.get()
                while not job.events.empty():  # a backlog goes out as one piece (and so cannot keep
                    items += job.events.get_nowait()  # the loop from noticing a disconnect)
                out = [event for item in items if isinstance(item, list) for event in item]
                if out:
                    yield out
                if isinstance(items[-1], Exception):
                    raise ApiError(500, f"generation failed: {items[-1]}", kind="server_error")
                if items[-1] is None:
                    return
        finally:  # done, or the client went away (the task is cancelled): free the slots
            job.cancelled = True
            with engine.wake:
                engine.wake.notify()

    def make_sample(fields, **options):
        """The request's Sample, after this server's limits; `fields` names the request field of
        each option, for the error."""
        prompt = options["seed"] if isinstance(options["seed"], bytes) else options["seed"].encode("utf-8")
        if len(prompt) > limits.max_prompt:
            raise ApiError(413, f"{fields['seed']}: {len(prompt)} bytes, over this server's limit of "
                                f"{limits.max_prompt} (--max-prompt)", fields["seed"])
        for key, limit, flag in (("length", limits.max_length, "--max-length"),
                                 ("samples", limits.max_samples, "--max-samples"),
                                 ("beam", limits.max_samples, "--max-samples")):
            if options.get(key, 0) > limit:
                raise ApiError(400, f"{fields[key]}: {options[key]} is over this server's limit of {limit} "
                                    f"({flag})", fields[key])
        try:
            return generation.Sample(net, GenerationOptions(**options), vocab=net.vocab, seed_name=fields["seed"])
        except DarknetpyError as e:  # a value out of its range, or one only the model refuses (a stop too long)
            field = getattr(e, "field", None)
            raise ApiError(400, str(e), fields.get(field, field)) from None

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest):
        """OpenAI's completions: `prompt` continued `n` times, each choice up to `max_tokens` symbols."""
        if body.model not in (None, name):
            raise ApiError(404, f"model: this server serves {name!r}, not {body.model!r}", "model",
                           kind="model_not_found")
        for field, ok in (("best_of", body.best_of in (None, body.n)), ("logprobs", body.logprobs is None),
                          ("logit_bias", not body.logit_bias), ("presence_penalty", not body.presence_penalty),
                          ("frequency_penalty", not body.frequency_penalty), ("suffix", body.suffix is None)):
            if not ok:
                raise ApiError(400, f"{field}: darknetpy cannot honour it; leave it out", field)
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            raise ApiError(400, f"stop: {len(stops)} texts, at most 4", "stop")
        if not all(stops):
            raise ApiError(400, "stop: give non-empty texts", "stop")
        n, greedy = body.given("n"), body.temperature == 0
        sample = make_sample(
            {"seed": "prompt", "length": "max_tokens", "samples": "n", "temperature": "temperature",
             "top_p": "top_p", "stop": "stop"},
            seed=body.prompt, length=body.given("max_tokens"),
            temperature=body.given("temperature") or GenerationOptions.temperature,  # 0: greedy, any will do
            greedy=greedy, top_p=body.given("top_p"), samples=n, stop=stops or None, srand=body.seed)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        hold = max(map(len, (s.encode("utf-8") for s in stops)), default=1) - 1
        texts, started = [Text(hold) for _ in range(n)], [False] * n
        prompt_tokens = len(sample.ids)
        echo = body.prompt if body.echo else ""

        def usage():
            return {"prompt_tokens": prompt_tokens, "completion_tokens": sample.symbols,
                    "total_tokens": prompt_tokens + sample.symbols}

        def choices(out):
            """(i, new text, finish_reason or None) of each choice these events touch: the seed's
            echo is left out (or is the prompt, with `echo`), the final newline ends the choice."""
            new = {}
            for i, piece, last in out:
                text, reason = new.get(i, ("", None))
                if last:
                    matched = sample.ends[i].matched
                    text, reason = text + texts[i].end(matched), "stop" if matched else "length"
                elif started[i]:
                    text += texts[i].piece(piece)
                else:
                    started[i], text = True, text + echo
                new[i] = text, reason
            return sorted(new.items())

        def chunk(i, text, reason):
            return {"id": ident, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}]}

        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage

            async def events():
                async for out in run(sample):
                    yield "".join(sse(chunk(i, text, reason)) for i, (text, reason) in choices(out) if text or reason)
                if include_usage:
                    yield sse({"id": ident, "object": "text_completion", "created": created, "model": name,
                               "choices": [], "usage": usage()})
                yield "data: [DONE]\n\n"
            return StreamingResponse(guarded(events()), media_type="text/event-stream")
        parts, finish = [[] for _ in range(n)], [None] * n
        async for out in run(sample):
            for i, (text, reason) in choices(out):
                parts[i].append(text)
                finish[i] = reason or finish[i]
        return {"id": ident, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": i, "text": "".join(parts[i]), "logprobs": None, "finish_reason": finish[i]}
                            for i in range(n)],
                "usage": usage()}

    @api.post("/v1/generate")
    async def generate(body: GenerateRequest):
        """`darknetpy generate` over HTTP: {"texts": [...]} (each sample as that command prints it:
        the seed, the text, a newline), or with `stream` the pieces as `data: {"sample", "text"}`."""
        options = body.model_dump(exclude={"stream"})
        sample = make_sample({k: k for k in options}, **options)
        texts = [Text() for _ in range(body.samples)]

        def pieces_of(out):
            for i, piece, last in out:
                text = texts[i].piece(piece) + (texts[i].end() if last else "")
                if text:
                    yield i, text
        if body.stream:
            async def events():
                async for out in run(sample):
                    yield "".join(sse({"sample": i, "text": text}) for i, text in pieces_of(out))
                yield "data: [DONE]\n\n"
            return StreamingResponse(guarded(events()), media_type="text/event-stream")
        parts = [[] for _ in range(body.samples)]
        async for out in run(sample):
            for i, text in pieces_of(out):
                parts[i].append(text)
        return {"texts": ["".join(p) for p in parts]}

    app.include_router(api)
    return app


def sse(obj):
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def guarded(events):
    """A stream's events; a fault after the headers went out is its last event, an error object."""
    try:
        async for event in events:
            yield event
    except ApiError as e:
        yield sse({"error": {"message": e.message, "type": e.kind, "param": e.param}})


class Guard:
    """ASGI wrapper: an unexpected fault is one log line (and, before any response, a 500 JSON
    error), never a traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        started = False

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, receive, sending)
        except Exception as e:
            log.error("darknetpy: %s %s failed: %s: %s", scope.get("method", ""), scope.get("path", ""),
                      type(e).__name__, e)
            if scope["type"] == "http" and not started:
                await ApiError(500, "internal error", kind="server_error").response()(scope, receive, send)


class Server(uvicorn.Server):
    """uvicorn's server, saying `serving on http://HOST:PORT` on stderr once it accepts connections."""

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"serving on http://{host}:{port}", file=sys.stderr, flush=True)


def serve(net, name, host, port, limits=None, grace=5.0):
    """Serve `net` until SIGTERM or Ctrl-C: then stop accepting, let running requests finish for
    up to `grace` seconds, and return."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    app = Guard(create_app(net, name, limits or ServeLimits()))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=grace, lifespan="off")
    Server(config).run()
