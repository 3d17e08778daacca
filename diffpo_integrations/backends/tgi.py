"""``TGIAligner``: DiffPO alignment through a Text Generation Inference server.

Against the embedded server (``diffpo serve``) it uses the ``POST /diffpo/align`` route, which
builds the prompt in exact token ids and decodes with the draft as a speed hint. Against a real
TGI it builds the official DiffPO prompt here (tokenized by the server's ``/tokenize``) and calls
``/generate`` (``/generate_stream``) with greedy decoding and the template's end-of-turn stop.
Both give the same answer. Every request goes through the backends' one transport
(:class:`~diffpo_integrations.backends._transport.Transport`): one retry rule, one deadline.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Literal

from diffpo_integrations.backends._probe import check_probe_answer, normalize_base_url
from diffpo_integrations.backends._transport import TransportCalls, parse_sse_line
from diffpo_integrations.core.aligner import (
    DEFAULT_KEEP_PREFIX_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    AnswerStream,
    BaseAligner,
)
from diffpo_integrations.core.errors import ConfigurationError, IncompleteGenerationError
from diffpo_integrations.core.prompt import AlignPrompt, TokenSpan, assemble_answer, build_prompt, render_texts
from diffpo_integrations.core.templates import BUILTIN_TEMPLATES, ChatTemplate, check_template_name, get_template
from diffpo_integrations.core.types import (
    AlignChunk,
    AlignRequest,
    AlignResult,
    DecodeMethod,
    FinishReason,
    PromptMode,
)

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


class TGIAligner(TransportCalls, BaseAligner):
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
        timeout: seconds for one HTTP attempt (connect, send, wait and read together).
        deadline: seconds for one whole call (``align``, ``aalign``, ``stream`` or ``astream``), retries
            included: when it runs out the call raises ``AlignerTimeoutError`` at once.
        max_retries: retries on connection errors, 502/503/504, 429 (after ``Retry-After``) and
            incomplete generations, with jittered backoff (see ``docs/reliability.md``).
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
        method: DecodeMethod | None = None,
    ) -> None:
        super().__init__(
            template=template,
            keep_prefix_tokens=keep_prefix_tokens,
            max_new_tokens=max_new_tokens,
            prompt_mode=prompt_mode,
            prefix_sampling=prefix_sampling,
            seed=seed,
        )
        if isinstance(template, str):
            # An unknown name fails here, at once, listing the built-ins.
            check_template_name(template)
        # A pasted ``.../v1`` or route is dropped: every TGI route lives at the root.
        self._connect(
            normalize_base_url(base_url or default_aligner_url()),
            timeout=timeout,
            deadline=deadline,
            max_retries=max_retries,
            backoff=backoff,
            api_key=api_key,
            headers=headers,
        )
        self.use_align_route = use_align_route
        self.method = method
        self._info: dict[str, Any] | None = None
        self._template: ChatTemplate | None = None

    # -- discovery ----------------------------------------------------------------------------

    def _align_route_from(self, info: dict[str, Any]) -> str | None:
        if self.use_align_route is False:
            return None
        route = (info.get("diffpo") or {}).get("align_route")
        if route is None and self.use_align_route:
            msg = f"{self.base_url} offers no /diffpo/align route; pass use_align_route=None or False"
            raise ConfigurationError(msg)
        return str(route) if route else None

    async def _get_info(self, deadline_at: float | None) -> dict[str, Any]:
        if self._info is None:
            # 404 and 405 come back to be explained: they mean the URL is not a TGI server at all.
            response = await self.transport.request("GET", "/info", deadline_at=deadline_at, ok=(404, 405))
            self._info = check_probe_answer(self.base_url, "/info", response)
        return self._info

    def info(self) -> dict[str, Any]:
        """The server's ``GET /info`` answer (cached after the first call)."""
        return self.transport.call(self._get_info)

    async def ainfo(self) -> dict[str, Any]:
        """Async :meth:`info`."""
        return await self.transport.acall(self._get_info)

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
        elif isinstance(self.template, str):
            # A tokenizer's own template cannot travel: the server would use its model's template instead.
            msg = (
                f"template {self.template!r} is a tokenizer, which {self.base_url}/diffpo/align cannot use: "
                f"pass one of {sorted(BUILTIN_TEMPLATES)}, leave it out to use the server model's own, "
                "or pass use_align_route=False"
            )
            raise ConfigurationError(msg)
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

    def _generate_body(self, request: AlignRequest, prompt: AlignPrompt, *, stream: bool) -> dict[str, Any]:
        parameters = {
            # The text stops before a character the cut splits: its kept tokens are generated again.
            "max_new_tokens": prompt.text_budget(request.max_new_tokens),
            "do_sample": False,
            "stop": [prompt.stop],
            "details": True,
            "return_full_text": False,
        }
        return {"inputs": prompt.text, "parameters": parameters, "stream": stream}

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

    def _result_from_events(
        self, request: AlignRequest, prompt: AlignPrompt, events: list[dict[str, Any]]
    ) -> AlignResult:
        if not events or not events[-1].get("details"):
            msg = "the stream ended without its final event"
            raise IncompleteGenerationError(msg, endpoint=self.endpoint)
        last = events[-1]
        text = last.get("generated_text")
        if text is None:
            tokens = [e.get("token") or {} for e in events]
            text = "".join(str(t.get("text") or "") for t in tokens if not t.get("special"))
        token_ids = [int((e.get("token") or {}).get("id", 0)) for e in events]
        return self._result_from_generation(
            request, prompt, str(text), str(last["details"].get("finish_reason")), token_ids
        )

    # -- the one path of each call style, run on the transport loop ---------------------------------

    def align_body(self, request: AlignRequest, *, stream: bool = False) -> dict[str, Any]:
        """The JSON body this aligner sends to ``POST /diffpo/align`` for ``request`` (for tools and benchmarks)."""
        return self._align_body(request, stream)

    async def _tokenized_prompt(self, request: AlignRequest, deadline_at: float | None) -> AlignPrompt:
        template = self._chat_template()
        response = await self.transport.request(
            "POST", "/tokenize", self._tokenize_body(request, template), deadline_at=deadline_at
        )
        return self._prompt(request, response.json(), template)

    async def _run_align(self, request: AlignRequest, deadline_at: float | None) -> AlignResult:
        if self._align_route_from(await self._get_info(deadline_at)):
            body = self._align_body(request, stream=False)
            response = await self.transport.request("POST", "/diffpo/align", body, deadline_at=deadline_at)
            return self._result_from_align(request, response.json(), response.headers)
        prompt = await self._tokenized_prompt(request, deadline_at)
        body = self._generate_body(request, prompt, stream=False)
        data = (await self.transport.request("POST", "/", body, deadline_at=deadline_at)).json()
        if isinstance(data, list):  # TGI answers a list on "/", an object on "/generate"
            data = data[0]
        details = data.get("details") or {}
        tokens = [int(t["id"]) for t in details.get("tokens") or []]
        return self._result_from_generation(
            request, prompt, str(data.get("generated_text") or ""), str(details.get("finish_reason")), tokens
        )

    async def _run_stream(self, request: AlignRequest, deadline_at: float | None) -> AsyncIterator[AlignChunk]:
        if self._align_route_from(await self._get_info(deadline_at)):
            body = self._align_body(request, stream=True)
            headers: dict[str, str] = {}
            lines = self.transport.lines("POST", "/diffpo/align", body, deadline_at=deadline_at, headers=headers)
            async for line in lines:
                event = parse_sse_line(line)
                if event is not None:
                    yield self._chunk_from_event(request, event, headers)
            return
        prompt = await self._tokenized_prompt(request, deadline_at)
        answer = AnswerStream(stop=prompt.stop)
        first = answer.feed(prompt.kept_text)
        if first:
            yield AlignChunk(text=first)
        events: list[dict[str, Any]] = []
        body = self._generate_body(request, prompt, stream=True)
        async for line in self.transport.lines("POST", "/", body, deadline_at=deadline_at):
            event = parse_sse_line(line)
            if event is None:
                continue
            events.append(event)
            token = event.get("token") or {}
            piece = answer.feed("" if token.get("special") else str(token.get("text") or ""))
            if piece:
                yield AlignChunk(text=piece)
        yield AlignChunk(text="", result=self._result_from_events(request, prompt, events))

    def _chunk_from_event(self, request: AlignRequest, event: dict[str, Any], headers: Any) -> AlignChunk:
        result = event.get("result")
        return AlignChunk(
            text=event.get("text", ""),
            result=self._result_from_align(request, result, headers) if result is not None else None,
        )
