"""``POST /v1/chat/completions`` and ``GET /v1/models``, as OpenAI's clients speak them.

A chat request becomes one bus ``ask``: the last user message is the question, the earlier
turns its history, and the conversation's one picture (a ``data:`` URL, or a camera's frame
named ``edged://cameras/<name>/latest`` or ``.../frames/<seq>``) what it is about. Every ask
is made with ``remember``, so a client that sends the conversation back with one more user
message (what OpenAI clients do) continues the saved state: the picture and the turns are not
read again. Errors come in OpenAI's error shape.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edged.bus.local import LocalBus
from edged.bus.schema import AskRequest, Turn
from edged.http.exchange import RequestFailed, call, replies

CAMERA_URL = re.compile(r"^edged://cameras/(?P<camera>[A-Za-z0-9_.:-]+)/(?:latest|frames/(?P<seq>\d+))$")
DATA_URL = re.compile(r"^data:image/(?:jpeg|jpg|png);base64,(?P<data>.+)$", re.DOTALL)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send options edged has no use for


class ImageUrl(_Lenient):
    url: str


class ContentPart(_Lenient):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class JsonSchemaFormat(_Lenient):
    name: str = "answer"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")


def openai_error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
            413: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status)


def routes(bus: LocalBus) -> list[web.RouteDef]:
    def model_ids() -> list[str]:
        model = bus.status().model
        return [model, "edged"] if model else ["edged"]

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "edged"} for name in model_ids()]})

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return openai_error(400, "the body is not JSON", "invalid_json")
        try:
            chat = ChatRequest.model_validate(body)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            return openai_error(400, f"{where}: {first['msg']}", "invalid_request", param=where)
        if chat.model not in model_ids():
            return openai_error(404, f"no model {chat.model!r}; this daemon serves {', '.join(model_ids())}",
                                "model_not_found", param="model")
        try:
            ask = ask_from_chat(chat)
        except ValidationError as error:
            first = error.errors()[0]
            return openai_error(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}", "invalid_request")
        except ValueError as error:
            return openai_error(400, str(error), "invalid_request", param="messages")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if chat.stream:
            return await _stream(request, bus, ask, chat, completion_id, created)
        try:
            final = await call(bus, ask)
        except RequestFailed as failed:
            return openai_error(failed.http_status, failed.error.message, failed.error.code)
        return web.json_response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": chat.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": final["text"]},
                         "finish_reason": final["finish_reason"]}],
            "usage": _usage(final), "edged": {"session": final["session"], "provenance": final["provenance"]},
        })

    return [web.get("/v1/models", models), web.post("/v1/chat/completions", chat_completions)]


async def _stream(request: web.Request, bus: LocalBus, ask: AskRequest, chat: ChatRequest, completion_id: str,
                  created: int) -> web.StreamResponse:
    """The answer as server-sent chunks, as OpenAI streams: a role, text deltas, the finish
    reason, optionally the usage, then ``[DONE]``. An error after the first byte is sent as an
    ``error`` object in the stream, since the status line has gone."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": chat.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta or finish else [], **extra}
        return f"data: {json.dumps(body)}\n\n".encode()

    stream = replies(bus, ask)
    try:
        try:
            first = await anext(stream)  # an error before any text still gets its HTTP status
        except RequestFailed as failed:
            return openai_error(failed.http_status, failed.error.message, failed.error.code)
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        try:
            reply = first
            while reply.partial:
                await response.write(chunk({"content": reply.data["text"]}))
                reply = await anext(stream)
            final = reply.data
            await response.write(chunk({}, final["finish_reason"], edged={"session": final["session"],
                                                                          "provenance": final["provenance"]}))
            if chat.stream_options is not None and chat.stream_options.include_usage:
                await response.write(chunk({}, usage=_usage(final)))
        except RequestFailed as failed:
            error = {"error": {"message": failed.error.message, "code": failed.error.code}}
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response
    finally:
        await stream.aclose()  # a client that left frees the request's place at once


def _usage(final: dict[str, Any]) -> dict[str, int]:
    prompt, completion = final.get("prompt_tokens") or 0, final.get("completion_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def ask_from_chat(chat: ChatRequest) -> AskRequest:
    """The bus ask a chat request stands for; ValueError says what in it edged cannot take."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    picture: dict[str, Any] = {"without_picture": True}
    pictures = 0
    for index, message in enumerate(chat.messages):
        text, images = _content(message)
        if message.role in ("system", "developer"):
            if turns:
                raise ValueError(f"messages[{index}]: a system message goes before the conversation")
            system.append(text)
            continue
        if images:
            pictures += len(images)
            if pictures > 1 or message.role != "user" or any(role == "user" for role, _ in turns):
                raise ValueError("edged reads one picture per conversation, in its first user message")
            picture = _picture(images[0])
        if turns and turns[-1][0] == message.role:  # two user messages in a row read as one
            turns[-1] = (message.role, f"{turns[-1][1]}\n{text}")
        else:
            turns.append((message.role, text))
    if not turns or turns[-1][0] != "user":
        raise ValueError("the last message must be the user's")
    if turns[0][0] != "user":
        raise ValueError("the conversation must start with a user message")
    if system:  # the daemon's own system prompt stays first: the client's is read as the start of its first turn
        turns[0] = ("user", "\n".join(system) + "\n\n" + turns[0][1])
    question = turns[-1][1]
    if not question.strip():
        raise ValueError("the last user message has no text")
    stop = [chat.stop] if isinstance(chat.stop, str) else (chat.stop or [])
    schema = None
    if chat.response_format is not None and chat.response_format.type != "text":
        json_schema = chat.response_format.json_schema
        schema = json_schema.schema_ if json_schema is not None else {"type": "object"}
    return AskRequest(
        id=f"http-{uuid.uuid4().hex[:12]}", question=question, **picture,
        history=[Turn(role=role, text=text) for role, text in turns[:-1]], remember=True,  # type: ignore[arg-type]
        max_tokens=chat.max_completion_tokens or chat.max_tokens or 256, temperature=chat.temperature,
        stop=stop, json_schema=schema)


def _content(message: Message) -> tuple[str, list[str]]:
    """A message's text (its text parts joined) and its image URLs."""
    if message.content is None or isinstance(message.content, str):
        return message.content or "", []
    texts = [part.text or "" for part in message.content if part.type == "text"]
    images = [part.image_url.url for part in message.content if part.type == "image_url" and part.image_url]
    return "\n".join(texts), images


def _picture(url: str) -> dict[str, Any]:
    named = CAMERA_URL.match(url)
    if named:
        seq = named.group("seq")
        return {"camera": named.group("camera"), "frame_seq": int(seq) if seq is not None else None}
    data = DATA_URL.match(url)
    if data:
        return {"image": data.group("data")}
    raise ValueError("image_url: give a data:image/jpeg;base64,... or data:image/png;base64,... URL, or "
                     "edged://cameras/<name>/latest or edged://cameras/<name>/frames/<seq> (edged fetches no URLs)")
