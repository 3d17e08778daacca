"""``TGIAligner``: DiffPO alignment through a Text Generation Inference server.

Against the embedded server (``diffpo serve``) it uses the ``POST /diffpo/align`` route, which
builds the prompt in exact token ids and decodes with the draft as a speed hint. Against a real
TGI it builds the official DiffPO prompt here (tokenized by the server's ``/tokenize``) and calls
``huggingface_hub``'s ``text_generation`` with greedy decoding and the template's end-of-turn stop.
Both give the same answer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import httpx2
from huggingface_hub import AsyncInferenceClient, InferenceClient, get_session

from diffpo_integrations.backends._transport import (
    RetryPolicy,
    async_session,
    map_error,
    parse_sse_line,
    raise_for_answer,
)
from diffpo_integrations.core.aligner import (
    DEFAULT_KEEP_PREFIX_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    AnswerStream,
    BaseAligner,
)
from diffpo_integrations.core.errors import ConfigurationError, IncompleteGenerationError
from diffpo_integrations.core.prompt import AlignPrompt, TokenSpan, assemble_answer, build_prompt, render_texts
from diffpo_integrations.core.templates import BUILTIN_TEMPLATES, ChatTemplate, get_template
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, FinishReason, PromptMode

__all__ = ["DEFAULT_ALIGNER_URL", "TGIAligner", "default_aligner_url"]

DEFAULT_ALIGNER_URL = "http://127.0.0.1:8080"
"""Where ``diffpo serve`` listens by default."""

_TIMING_HEADERS = (
    "x-compute-time",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)


_FINISH: dict[str, FinishReason] = {"eos_token": "eos_token", "length": "length", "stop_sequence": "stop_sequence"}


def default_aligner_url() -> str:
    """``$DIFFPO_ALIGNER_URL``, or the embedded server's default address."""
    return os.environ.get("DIFFPO_ALIGNER_URL", DEFAULT_ALIGNER_URL).rstrip("/")


def _timings(headers: Any) -> dict[str, str]:
    return {h: str(headers[h]) for h in _TIMING_HEADERS if h in headers}


class TGIAligner(BaseAligner):
    """Align drafts with a DiffPO aligner served by TGI or by ``diffpo serve``.

    Setup:
        .. code-block:: bash

            pip install diffpo-integrations
            diffpo serve            # or: a TGI serving RuizheChen/DiffPO-9B

    Key init args:
        base_url: the server's URL; default ``$DIFFPO_ALIGNER_URL`` or ``http://127.0.0.1:8080``.
        template: the aligner's chat template (``"gemma"`` for DiffPO-2B/9B, ``"llama3"`` for DiffPO-8B,
            ``"chatml"``, ``"smollm2"`` or a tokenizer path). Needed for a real TGI; the embedded
            server uses its model's own template when none is given.
        keep_prefix_tokens, max_new_tokens, prompt_mode, prefix_sampling, seed: see :class:`BaseAligner`.
        timeout: seconds for one HTTP request.
        deadline: seconds for one call, retries included.
        max_retries: retries on overload (429), 5xx and connection errors, with jittered backoff.
        use_align_route: ``None`` detects the embedded server's ``/diffpo/align`` route through
            ``/info``; ``False`` always uses plain ``/generate`` (as with a real TGI).
        method: decoding method asked of the embedded server (``auto``, ``greedy``, ``speculative``,
            ``jacobi``); ignored by a real TGI, which decodes greedily.

    Instantiate:
        .. code-block:: python

            from diffpo_integrations.backends import TGIAligner

            aligner = TGIAligner("http://127.0.0.1:8080", keep_prefix_tokens=6)

    Invoke:
        .. code-block:: python

            result = aligner.align([{"role": "user", "content": "Name a prime."}], "7 is a prime.")
            result.text, result.kept_prefix, result.finish_reason

    Stream:
        .. code-block:: python

            for chunk in aligner.stream([{"role": "user", "content": "Name a prime."}], "7 is a prime."):
                print(chunk.text, end="")

    Async:
        .. code-block:: python

            result = await aligner.aalign([{"role": "user", "content": "Name a prime."}], "7 is a prime.")
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        template: str | ChatTemplate | None = None,
        keep_prefix_tokens: int = DEFAULT_KEEP_PREFIX_TOKENS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt_mode: PromptMode = "official",
        prefix_sampling: Literal["fixed", "paper"] = "fixed",
        seed: int = 0,
        timeout: float | None = 120.0,
        deadline: float | None = None,
        max_retries: int = 3,
        backoff: float = 0.25,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        use_align_route: bool | None = None,
        method: Literal["auto", "greedy", "speculative", "jacobi"] | None = None,
    ) -> None:
        super().__init__(
            template=template,
            keep_prefix_tokens=keep_prefix_tokens,
            max_new_tokens=max_new_tokens,
            prompt_mode=prompt_mode,
            prefix_sampling=prefix_sampling,
            seed=seed,
        )
        self.base_url = (base_url or default_aligner_url()).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            msg = f"base_url must start with http:// or https://, got {self.base_url!r}"
            raise ConfigurationError(msg)
        self.endpoint = self.base_url
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, deadline=deadline)
        self.api_key = api_key or os.environ.get("DIFFPO_API_KEY")
        self.headers = dict(headers or {})
        if self.api_key:
            self.headers.setdefault("Authorization", f"Bearer {self.api_key}")
        self.use_align_route = use_align_route
        self.method = method
        self._info: dict[str, Any] | None = None
        self._template: ChatTemplate | None = None
        self.client = InferenceClient(base_url=self.base_url, timeout=timeout, headers=self.headers)
        self.async_client = AsyncInferenceClient(base_url=self.base_url, timeout=timeout, headers=self.headers)

    # -- discovery ----------------------------------------------------------------------------

    def _align_route_from(self, info: dict[str, Any]) -> str | None:
        if self.use_align_route is False:
            return None
        route = (info.get("diffpo") or {}).get("align_route")
        if route is None and self.use_align_route:
            msg = f"{self.base_url} offers no /diffpo/align route; pass use_align_route=None or False"
            raise ConfigurationError(msg)
        return str(route) if route else None

    def info(self) -> dict[str, Any]:
        """The server's ``GET /info`` answer (cached after the first call)."""
        if self._info is None:
            response = self.retry.call(lambda: self._get("/info"), self.endpoint)
            self._info = dict(response)
        return self._info

    async def ainfo(self) -> dict[str, Any]:
        """Async :meth:`info`."""
        if self._info is None:
            response = await self.retry.acall(lambda: self._aget("/info"), self.endpoint)
            self._info = dict(response)
        return self._info

    def _chat_template(self) -> ChatTemplate:
        if self._template is None:
            if self.template is None:
                msg = (
                    f"{self.base_url} is a plain TGI server, so the aligner's chat template must be given: "
                    "TGIAligner(..., template='gemma') for DiffPO-2B/9B, 'llama3' for DiffPO-8B, or a tokenizer path"
                )
                raise ConfigurationError(msg)
            self._template = get_template(self.template)
        return self._template

    # -- HTTP helpers -------------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        response = get_session().get(self.base_url + path, headers=self.headers, timeout=self.timeout)
        raise_for_answer(response, self.endpoint)
        return response.json()

    def _post(self, path: str, body: dict[str, Any]) -> httpx2.Response:
        response = get_session().post(self.base_url + path, json=body, headers=self.headers, timeout=self.timeout)
        raise_for_answer(response, self.endpoint)
        return response

    async def _aget(self, path: str) -> Any:
        async with async_session() as session:
            response = await session.get(self.base_url + path, headers=self.headers, timeout=self.timeout)
        raise_for_answer(response, self.endpoint)
        return response.json()

    async def _apost(self, path: str, body: dict[str, Any]) -> httpx2.Response:
        async with async_session() as session:
            response = await session.post(self.base_url + path, json=body, headers=self.headers, timeout=self.timeout)
        raise_for_answer(response, self.endpoint)
        return response

    # -- request building (pure, shared by sync and async) --------------------------------------

    def _align_body(self, request: AlignRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [m.model_dump() for m in request.messages],
            "draft": request.draft,
            "keep_prefix_tokens": request.keep_prefix_tokens,
            "max_new_tokens": request.max_new_tokens,
            "prompt_mode": self.prompt_mode,
            "stream": stream,
        }
        if isinstance(self.template, str) and self.template in BUILTIN_TEMPLATES:
            body["template"] = self.template
        if self.method is not None:
            body["method"] = self.method
        return body

    def _result_from_align(self, request: AlignRequest, data: dict[str, Any], headers: Any) -> AlignResult:
        return AlignResult(
            text=data["text"],
            draft=request.draft,
            kept_prefix=data.get("kept_prefix", ""),
            kept_prefix_tokens=data.get("kept_prefix_tokens", 0),
            generated_tokens=data.get("generated_tokens", 0),
            finish_reason=data.get("finish_reason", "eos_token"),
            endpoint=self.endpoint,
            timings=_timings(headers),
            details=data.get("details", {}),
        )

    def _prompt(self, request: AlignRequest, tokens: list[dict[str, Any]], template: ChatTemplate) -> AlignPrompt:
        texts = render_texts(template, request.messages, request.draft, mode=self.prompt_mode)
        spans = [TokenSpan(int(t["id"]), int(t["start"]), int(t["stop"])) for t in tokens]
        assert request.keep_prefix_tokens is not None
        return build_prompt(
            texts,
            spans,
            keep_prefix_tokens=request.keep_prefix_tokens,
            mode=self.prompt_mode,
            stop=template.end_of_turn,
        )

    def _tokenize_body(self, request: AlignRequest, template: ChatTemplate) -> dict[str, Any]:
        texts = render_texts(template, request.messages, request.draft, mode=self.prompt_mode)
        return {"inputs": texts.full}

    def _generation_kwargs(self, request: AlignRequest, template: ChatTemplate, prompt: AlignPrompt) -> dict[str, Any]:
        budget = request.max_new_tokens
        return {
            # The text stops before a character the cut splits: its kept tokens are generated again.
            "max_new_tokens": None if budget is None else budget + prompt.split_tokens,
            "do_sample": False,
            "stop": [template.end_of_turn],
            "details": True,
            "return_full_text": False,
        }

    def _result_from_generation(
        self,
        request: AlignRequest,
        prompt: AlignPrompt,
        generated_text: str,
        finish_reason: str,
        token_ids: list[int],
    ) -> AlignResult:
        if finish_reason == "stop_sequence":
            # The only stop sequence sent is the template's end-of-turn token, so this is the end of
            # turn, as /diffpo/align reports it (servers differ on whether the stop text is kept).
            finish_reason = "eos_token"
        return AlignResult(
            text=assemble_answer(prompt.kept_text, generated_text, prompt.stop),
            draft=request.draft,
            kept_prefix=prompt.kept_text.strip(),
            kept_prefix_tokens=prompt.kept_draft_tokens,
            generated_tokens=len(token_ids),
            finish_reason=_FINISH.get(finish_reason, "eos_token"),
            endpoint=self.endpoint,
            details={
                "prompt_tokens": prompt.prompt_tokens,
                "kept_tokens": prompt.kept_tokens,
                "token_ids": token_ids,
                "route": "generate",
            },
        )

    def _result_from_output(self, request: AlignRequest, prompt: AlignPrompt, output: Any) -> AlignResult:
        details = output.details
        return self._result_from_generation(
            request, prompt, output.generated_text, str(details.finish_reason), [t.id for t in details.tokens]
        )

    def _result_from_events(self, request: AlignRequest, prompt: AlignPrompt, events: list[Any]) -> AlignResult:
        if not events or events[-1].details is None:
            msg = "the stream ended without its final event"
            raise IncompleteGenerationError(msg, endpoint=self.endpoint)
        last = events[-1]
        text = last.generated_text
        if text is None:
            text = "".join(e.token.text for e in events if not e.token.special)
        return self._result_from_generation(
            request, prompt, text, str(last.details.finish_reason), [e.token.id for e in events]
        )

    # -- sync ---------------------------------------------------------------------------------

    def _align(self, request: AlignRequest) -> AlignResult:
        if self._align_route_from(self.info()):

            def call() -> AlignResult:
                response = self._post("/diffpo/align", self._align_body(request, stream=False))
                return self._result_from_align(request, response.json(), response.headers)

            return self.retry.call(call, self.endpoint)
        template = self._chat_template()
        tokens = self.retry.call(
            lambda: self._post("/tokenize", self._tokenize_body(request, template)).json(), self.endpoint
        )
        prompt = self._prompt(request, tokens, template)
        output = self.retry.call(
            lambda: self.client.text_generation(prompt.text, **self._generation_kwargs(request, template, prompt)),
            self.endpoint,
        )
        return self._result_from_output(request, prompt, output)

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        if self._align_route_from(self.info()):
            yield from self._stream_align_route(request)
            return
        template = self._chat_template()
        tokens = self.retry.call(
            lambda: self._post("/tokenize", self._tokenize_body(request, template)).json(), self.endpoint
        )
        prompt = self._prompt(request, tokens, template)
        answer = AnswerStream(stop=prompt.stop)
        first = answer.feed(prompt.kept_text)
        if first:
            yield AlignChunk(text=first)
        try:
            events = self.retry.call(
                lambda: self.client.text_generation(
                    prompt.text, stream=True, **self._generation_kwargs(request, template, prompt)
                ),
                self.endpoint,
            )
            seen = []
            for event in events:
                seen.append(event)
                piece = answer.feed("" if event.token.special else event.token.text)
                if piece:
                    yield AlignChunk(text=piece)
        except Exception as exc:
            raise map_error(exc, self.endpoint) from exc
        yield AlignChunk(text="", result=self._result_from_events(request, prompt, seen))

    def _stream_align_route(self, request: AlignRequest) -> Iterator[AlignChunk]:
        body = self._align_body(request, stream=True)
        try:
            with get_session().stream(
                "POST", self.base_url + "/diffpo/align", json=body, headers=self.headers, timeout=self.timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_answer(response, self.endpoint)
                for line in response.iter_lines():
                    event = parse_sse_line(line)
                    if event is not None:
                        yield self._chunk_from_event(request, event, response.headers)
        except Exception as exc:
            raise map_error(exc, self.endpoint) from exc

    def _chunk_from_event(self, request: AlignRequest, event: dict[str, Any], headers: Any) -> AlignChunk:
        result = event.get("result")
        return AlignChunk(
            text=event.get("text", ""),
            result=self._result_from_align(request, result, headers) if result is not None else None,
        )

    # -- async --------------------------------------------------------------------------------

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        if self._align_route_from(await self.ainfo()):

            async def call() -> AlignResult:
                response = await self._apost("/diffpo/align", self._align_body(request, stream=False))
                return self._result_from_align(request, response.json(), response.headers)

            return await self.retry.acall(call, self.endpoint)
        template = self._chat_template()
        tokenized = await self.retry.acall(
            lambda: self._apost("/tokenize", self._tokenize_body(request, template)), self.endpoint
        )
        prompt = self._prompt(request, tokenized.json(), template)
        output = await self.retry.acall(
            lambda: self.async_client.text_generation(
                prompt.text, **self._generation_kwargs(request, template, prompt)
            ),
            self.endpoint,
        )
        return self._result_from_output(request, prompt, output)

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        if self._align_route_from(await self.ainfo()):
            async for chunk in self._astream_align_route(request):
                yield chunk
            return
        template = self._chat_template()
        tokenized = await self.retry.acall(
            lambda: self._apost("/tokenize", self._tokenize_body(request, template)), self.endpoint
        )
        prompt = self._prompt(request, tokenized.json(), template)
        answer = AnswerStream(stop=prompt.stop)
        first = answer.feed(prompt.kept_text)
        if first:
            yield AlignChunk(text=first)
        try:
            events = await self.retry.acall(
                lambda: self.async_client.text_generation(
                    prompt.text, stream=True, **self._generation_kwargs(request, template, prompt)
                ),
                self.endpoint,
            )
            seen = []
            async for event in events:
                seen.append(event)
                piece = answer.feed("" if event.token.special else event.token.text)
                if piece:
                    yield AlignChunk(text=piece)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise map_error(exc, self.endpoint) from exc
        yield AlignChunk(text="", result=self._result_from_events(request, prompt, seen))

    async def _astream_align_route(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        body = self._align_body(request, stream=True)
        try:
            async with (
                async_session() as session,
                session.stream(
                    "POST", self.base_url + "/diffpo/align", json=body, headers=self.headers, timeout=self.timeout
                ) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    raise_for_answer(response, self.endpoint)
                async for line in response.aiter_lines():
                    event = parse_sse_line(line)
                    if event is not None:
                        yield self._chunk_from_event(request, event, response.headers)
        except (asyncio.CancelledError, GeneratorExit):
            # Leaving the ``async with`` closes the HTTP stream, so the server stops generating.
            raise
        except Exception as exc:
            raise map_error(exc, self.endpoint) from exc
