"""Responses API answers from Chat Completions answers: whole ones, and streams event by event.

A stream is ``response.created`` and ``response.in_progress``, then for each output item
``response.output_item.added``, its content (``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``, ``response.content_part.done``
for a message; ``response.function_call_arguments.delta``..., ``...done`` for a function call) and
``response.output_item.done``, then ``response.completed`` (``response.incomplete`` when the output
budget ran out). Every event has its ``sequence_number``; the deltas of a message add up to its text.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from diffpo_integrations.gateway.answers import passthrough_meta
from diffpo_integrations.wire.responses import (
    ResponseEvents,
    function_call_item,
    message_item,
    new_id,
    output_text,
    response_object,
    responses_usage,
)

__all__ = ["ResponseStream", "response_from_completion", "replay"]


def response_from_completion(
    payload: dict[str, Any], request: dict[str, Any], response_id: str, created_at: int
) -> dict[str, Any]:
    """The ``response`` object for a whole chat completion (its first choice), ``diffpo`` metadata kept."""
    choices = payload.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    calls = message.get("tool_calls") or []
    output = []
    if message.get("content") or not calls:
        status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
        output.append(message_item(new_id("msg"), str(message.get("content") or ""), status))
    for call in calls:
        fn = call.get("function") or {}
        call_id = str(call.get("id") or new_id("call"))
        output.append(function_call_item(new_id("fc"), call_id, str(fn.get("name")), str(fn.get("arguments") or "")))
    answer = response_object(
        response_id,
        request,
        model=str(payload.get("model") or request.get("model") or ""),
        created_at=created_at,
        status="incomplete" if choice.get("finish_reason") == "length" else "completed",
        output=output,
        usage=responses_usage(payload.get("usage")),
    )
    if "diffpo" in payload:
        answer["diffpo"] = payload["diffpo"]
    return answer


@dataclass
class _Item:
    item: dict[str, Any]
    index: int
    text: str = ""


@dataclass
class ResponseStream:
    """Turns the events of a streamed chat answer into Responses stream events, as SSE frames.

    Feed it ``chat.completion.chunk`` objects, error bodies (``{"error": {...}}``) and ``"[DONE]"``
    with :meth:`translate`.
    """

    request: dict[str, Any]
    response_id: str
    created_at: int
    meta: dict[str, Any] | None = None
    """The ``diffpo`` metadata, when it is known before the answer (a pass-through)."""
    events: ResponseEvents = field(default_factory=ResponseEvents)
    _output: list[dict[str, Any]] = field(default_factory=list)
    _open: _Item | None = None
    _calls: dict[int, _Item] = field(default_factory=dict)
    _model: str = ""
    _finish: str | None = None
    _usage: dict[str, Any] | None = None

    async def translate(self, chunks: AsyncGenerator[dict[str, Any] | str, None]) -> AsyncGenerator[bytes, None]:
        """The whole Responses stream for ``chunks``; it ends at an error event when the answer failed.

        Closes ``chunks`` when it ends or is closed, so a client that leaves frees the upstream at once.
        """
        async with aclosing(chunks):
            self._model = self._model or str(self.request.get("model") or "")
            yield self.events.frame("response.created", response=self._response("in_progress"))
            yield self.events.frame("response.in_progress", response=self._response("in_progress"))
            async for chunk in chunks:
                if chunk == "[DONE]":
                    break
                assert isinstance(chunk, dict)
                if "error" in chunk:
                    yield self.events.error(chunk)
                    return
                for frame in self._feed(chunk):
                    yield frame
            for frame in self._finish_stream():
                yield frame

    def _response(self, status: str) -> dict[str, Any]:
        answer = response_object(
            self.response_id,
            self.request,
            model=self._model,
            created_at=self.created_at,
            status=status,
            output=list(self._output),
            usage=self._usage if status != "in_progress" else None,
        )
        if self.meta is not None and status != "in_progress":
            answer["diffpo"] = self.meta
        return answer

    def _feed(self, chunk: dict[str, Any]) -> list[bytes]:
        self._model = str(chunk.get("model") or self._model)
        if chunk.get("usage"):
            self._usage = responses_usage(chunk["usage"])
        if "diffpo" in chunk:
            self.meta = chunk["diffpo"]
        frames: list[bytes] = []
        if "output_item" in chunk:  # an item of another kind, from an upstream's own Responses API: as it is
            frames += self._close()
            item = chunk["output_item"]
            index = len(self._output)
            frames.append(self.events.frame("response.output_item.added", output_index=index, item=item))
            frames.append(self.events.frame("response.output_item.done", output_index=index, item=item))
            self._output.append(item)
        for choice in chunk.get("choices") or []:
            if int(choice.get("index") or 0) != 0:
                continue  # the Responses API has one answer: n is not one of its parameters
            delta = choice.get("delta") or {}
            self._finish = choice.get("finish_reason") or self._finish
            if delta.get("content"):
                frames += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                frames += self._call(call)
        return frames

    def _start(self, item: dict[str, Any]) -> tuple[_Item, list[bytes]]:
        frames = self._close()
        opened = self._open = _Item(item, len(self._output))
        frames.append(self.events.frame("response.output_item.added", output_index=opened.index, item=item))
        return opened, frames

    def _text(self, piece: str) -> list[bytes]:
        frames: list[bytes] = []
        current = self._open
        if current is None or current.item["type"] != "message":
            current, frames = self._start(message_item(new_id("msg"), "", "in_progress"))
            frames.append(self._part_event("response.content_part.added", current, ""))
        current.text += piece
        frames.append(
            self.events.frame(
                "response.output_text.delta",
                item_id=current.item["id"],
                output_index=current.index,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        )
        return frames

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        index = call.get("index")
        if index is None:  # some upstreams send each call whole, without an index
            index = len(self._calls) if call.get("id") or not self._calls else max(self._calls)
        fn = call.get("function") or {}
        frames: list[bytes] = []
        current = self._calls.get(int(index))
        if current is None:
            item = function_call_item(
                new_id("fc"), str(call.get("id") or new_id("call")), str(fn.get("name") or ""), "", "in_progress"
            )
            current, frames = self._start(item)
            self._calls[int(index)] = current
        elif fn.get("name"):
            current.item["name"] += fn["name"]
        if fn.get("arguments"):
            current.text += fn["arguments"]
            frames.append(
                self.events.frame(
                    "response.function_call_arguments.delta",
                    item_id=current.item["id"],
                    output_index=current.index,
                    delta=fn["arguments"],
                )
            )
        return frames

    def _part_event(self, kind: str, current: _Item, text: str) -> bytes:
        return self.events.frame(
            kind, item_id=current.item["id"], output_index=current.index, content_index=0, part=output_text(text)
        )

    def _close(self) -> list[bytes]:
        current, self._open = self._open, None
        if current is None:
            return []
        item, frames = current.item, []
        if item["type"] == "message":
            status = "incomplete" if self._finish == "length" else "completed"
            done = message_item(item["id"], current.text, status)
            frames.append(
                self.events.frame(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=current.index,
                    content_index=0,
                    text=current.text,
                    logprobs=[],
                )
            )
            frames.append(self._part_event("response.content_part.done", current, current.text))
        else:
            done = function_call_item(item["id"], item["call_id"], item["name"], current.text)
            frames.append(
                self.events.frame(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=current.index,
                    name=item["name"],
                    arguments=current.text,
                )
            )
        frames.append(self.events.frame("response.output_item.done", output_index=current.index, item=done))
        self._output.append(done)
        return frames

    def _finish_stream(self) -> list[bytes]:
        frames: list[bytes] = []
        if self._open is None and not self._output:
            # An empty answer is still one (empty) message, as in the whole answer.
            current, frames = self._start(message_item(new_id("msg"), "", "in_progress"))
            frames.append(self._part_event("response.content_part.added", current, ""))
        frames += self._close()
        if self.meta is None and self._calls:
            self.meta = passthrough_meta("tool_calls")
        if self._finish == "length":
            frames.append(self.events.frame("response.incomplete", response=self._response("incomplete")))
        else:
            frames.append(self.events.frame("response.completed", response=self._response("completed")))
        return frames


async def replay(answer: dict[str, Any]) -> AsyncGenerator[bytes, None]:
    """A finished ``response`` object as the stream that would have produced it (one delta per text)."""

    async def chunks() -> AsyncGenerator[dict[str, Any] | str, None]:
        for item in answer.get("output") or []:
            if item.get("type") == "message":
                text = "".join(str(p.get("text") or "") for p in item.get("content") or [])
                yield {"choices": [{"index": 0, "delta": {"content": text}}]}
            elif item.get("type") == "function_call":
                fn = {"name": item.get("name"), "arguments": item.get("arguments")}
                yield {
                    "choices": [{"index": 0, "delta": {"tool_calls": [{"id": item.get("call_id"), "function": fn}]}}]
                }
            else:
                yield {"output_item": item}
        finish = "length" if answer.get("status") == "incomplete" else "stop"
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        yield "[DONE]"

    stream = ResponseStream(answer, str(answer.get("id")), int(answer.get("created_at") or 0), answer.get("diffpo"))
    stream._usage = answer.get("usage")
    stream._model = str(answer.get("model") or "")
    async for frame in stream.translate(chunks()):
        yield frame
