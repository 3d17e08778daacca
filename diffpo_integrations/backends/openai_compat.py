"""``OpenAICompatAligner``: DiffPO alignment through an OpenAI-compatible ``/v1/completions`` (vLLM, SGLang).

The client builds the official DiffPO prompt and asks for a greedy continuation (``temperature=0``,
``max_tokens``, ``stop=[end of turn]``). With a local tokenizer it sends the prompt as token ids
(vLLM and SGLang accept ``prompt`` as a list of ids), which is exact: no re-tokenisation of the cut
draft on the server. Without one it sends text, cut with the server's TGI-style ``/tokenize``
(token ids *and character offsets*, as TGI and ``diffpo serve`` answer).

Limitation: vLLM's ``POST /tokenize`` returns ids without character offsets, so it cannot locate
the draft in the prompt; against vLLM pass ``tokenizer=`` (or ``template=`` a tokenizer path).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from diffpo_integrations.backends._transport import TransportCalls, parse_sse_line
from diffpo_integrations.core.aligner import (
    DEFAULT_KEEP_PREFIX_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    AnswerStream,
    BaseAligner,
)
from diffpo_integrations.core.errors import (
    AlignerError,
    ConfigurationError,
    ContextLengthError,
    IncompleteGenerationError,
    ServerValidationError,
)
from diffpo_integrations.core.prompt import (
    AlignPrompt,
    TokenSpan,
    assemble_answer,
    build_prompt,
    hf_token_spans,
    render_texts,
)
from diffpo_integrations.core.templates import ChatTemplate, TokenizerTemplate, get_template
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, FinishReason, PromptMode

__all__ = ["OpenAICompatAligner"]

_log = logging.getLogger(__name__)

_FINISH: dict[str, FinishReason] = {"stop": "eos_token", "length": "length"}


def _load_tokenizer(location: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        msg = "a tokenizer path needs transformers: pip install 'diffpo-integrations[local]'"
        raise ConfigurationError(msg) from exc
    try:
        if location.endswith(".gguf"):
            return AutoTokenizer.from_pretrained(os.path.dirname(location) or ".", gguf_file=os.path.basename(location))
        return AutoTokenizer.from_pretrained(location)
    except Exception as exc:
        msg = f"could not load a tokenizer from {location!r}: {exc}"
        raise ConfigurationError(msg) from exc


class OpenAICompatAligner(TransportCalls, BaseAligner):
    """Align drafts with a DiffPO aligner behind an OpenAI-compatible completions API (vLLM, SGLang).

    Setup:
        .. code-block:: bash

            vllm serve RuizheChen/DiffPO-9B --port 8000

    Key init args:
        base_url: the server (``http://host:8000`` or ``http://host:8000/v1``).
        model: the served model's name; ``None`` asks ``/v1/models`` (and omits it if that route is absent).
        template: the aligner's chat template: ``"gemma"``, ``"llama3"``, ``"chatml"``, ``"smollm2"``, or a
            tokenizer path (which also gives the local tokenizer). ``None`` uses ``tokenizer``'s own.
        tokenizer: a loaded Hugging Face *fast* tokenizer, or its path. With one, the prompt goes as ids.
        use_token_ids: ``None`` sends ids when a local tokenizer is available; ``False`` always sends text.
        keep_prefix_tokens, max_new_tokens, prompt_mode, prefix_sampling, seed: see :class:`BaseAligner`.
        timeout, deadline, max_retries, backoff, api_key, headers: as for :class:`TGIAligner`.

    Instantiate:
        .. code-block:: python

            from diffpo_integrations.backends import OpenAICompatAligner

            aligner = OpenAICompatAligner("http://127.0.0.1:8000", model="RuizheChen/DiffPO-9B",
                                          template="RuizheChen/DiffPO-9B")

    Invoke:
        .. code-block:: python

            result = aligner.align([{"role": "user", "content": "Name a prime."}], "7 is a prime.")

    Stream:
        .. code-block:: python

            for chunk in aligner.stream([{"role": "user", "content": "Name a prime."}], "7 is a prime."):
                print(chunk.text, end="")
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        template: str | ChatTemplate | None = None,
        tokenizer: Any | None = None,
        use_token_ids: bool | None = None,
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
    ) -> None:
        super().__init__(
            template=template,
            keep_prefix_tokens=keep_prefix_tokens,
            max_new_tokens=max_new_tokens,
            prompt_mode=prompt_mode,
            prefix_sampling=prefix_sampling,
            seed=seed,
        )
        root = base_url.rstrip("/").removesuffix("/v1")
        self._connect(
            root,
            timeout=timeout,
            deadline=deadline,
            max_retries=max_retries,
            backoff=backoff,
            api_key=api_key,
            headers=headers,
        )
        if template is None and tokenizer is None:
            msg = (
                "OpenAICompatAligner needs the aligner's chat template: template='gemma' (DiffPO-2B/9B), "
                "'llama3' (DiffPO-8B), 'chatml', a tokenizer path, or tokenizer=<a loaded tokenizer>"
            )
            raise ConfigurationError(msg)
        self.model = model
        self.tokenizer = tokenizer
        self.use_token_ids = use_token_ids
        self._resolved: tuple[ChatTemplate, Any | None] | None = None
        self._model_checked = model is not None
        self._ids_refused = False
        self.max_model_len: int | None = None
        """The server's context in tokens, when its ``/v1/models`` says (vLLM's ``max_model_len``)."""

    # -- template, tokenizer and model name -----------------------------------------------------

    def _template_and_tokenizer(self) -> tuple[ChatTemplate, Any | None]:
        if self._resolved is None:
            tok = _load_tokenizer(self.tokenizer) if isinstance(self.tokenizer, str) else self.tokenizer
            if self.template is None:
                template: ChatTemplate = TokenizerTemplate(tok, name=getattr(tok, "name_or_path", "tokenizer"))
            else:
                template = get_template(self.template)
                if tok is None and isinstance(template, TokenizerTemplate):
                    tok = template.tokenizer
            self._resolved = (template, tok)
        return self._resolved

    @property
    def sends_token_ids(self) -> bool:
        """Whether prompts go to the server as token ids (a local tokenizer is available and allowed)."""
        if self.use_token_ids is False or self._ids_refused:
            return False
        return self._template_and_tokenizer()[1] is not None

    def _refuses_ids(self, exc: AlignerError) -> bool:
        """Whether ``exc`` is a server refusing a token-id prompt, and the next try should send text.

        llama.cpp's server (llama-cpp-python 0.3) types ``prompt`` as text only and answers a list of
        ids with an HTTP 500 whose message is pydantic's "Input should be a valid string" for
        ``('body', 'prompt', ...)``.
        """
        text = str(exc)
        if not self.sends_token_ids or "'prompt'" not in text or "valid string" not in text:
            return False
        self._ids_refused = True
        _log.warning("%s refuses token-id prompts; sending text from now on (use_token_ids=False)", self.base_url)
        return True

    def _model_from(self, listing: dict[str, Any] | None) -> None:
        data = (listing or {}).get("data") or []
        self.model = str(data[0]["id"]) if data else None
        limit = data[0].get("max_model_len") if data else None
        self.max_model_len = limit if isinstance(limit, int) and limit > 0 else None
        self._model_checked = True

    # -- the server's context window ----------------------------------------------------------------

    def _too_long(self, prompt_tokens: int, max_tokens: int, limit: int | None, seen: str) -> ContextLengthError:
        where = f"{self.base_url} serves a context of {limit} tokens" if limit else f"{self.base_url} {seen}"
        larger = "restart the server with a larger context (vLLM: --max-model-len; llama.cpp: --n_ctx)"
        if limit is not None and prompt_tokens >= limit:
            msg = (
                f"the prompt alone is {prompt_tokens} tokens and {where}: shorten the conversation or the "
                f"draft, or {larger}"
            )
        else:
            room = f"lower max_new_tokens to {limit - prompt_tokens} or less" if limit else "lower max_new_tokens"
            msg = (
                f"the prompt is {prompt_tokens} tokens and max_new_tokens={max_tokens} asks for "
                f"{prompt_tokens + max_tokens} in all, but {where}: {room}, shorten the conversation or "
                f"the draft, or {larger}"
            )
        return ContextLengthError(msg, endpoint=self.endpoint, status=400)

    def _check_fits(self, request: AlignRequest, prompt: AlignPrompt) -> None:
        assert request.max_new_tokens is not None
        limit = self.max_model_len
        if limit is not None and _sent(prompt) + request.max_new_tokens > limit:
            raise self._too_long(_sent(prompt), request.max_new_tokens, limit, "")

    def _rejected(self, exc: AlignerError, request: AlignRequest, prompt: AlignPrompt) -> BaseException:
        # vLLM: "This model's maximum context length is N tokens. However, your prompt contains ...";
        # llama.cpp's server: "Requested tokens (N) exceed context window of M".
        text = str(exc).lower()
        if isinstance(exc, ServerValidationError) and ("context length" in text or "context window" in text):
            assert request.max_new_tokens is not None
            seen = f"rejected it for its context length ({exc})"
            return self._too_long(_sent(prompt), request.max_new_tokens, self.max_model_len, seen)
        return exc

    def _check_budget(
        self, request: AlignRequest, prompt: AlignPrompt, body: dict[str, Any], finish: str | None, generated: int
    ) -> None:
        # vLLM silently lowers max_tokens to what its context leaves (max_model_len - prompt): the answer
        # would end early with "length". Say so instead of returning a cut answer.
        if finish == "length" and 0 < generated < int(body["max_tokens"]):
            assert request.max_new_tokens is not None
            seen = (
                f"stopped the answer for length after {generated} of the {body['max_tokens']} tokens asked, "
                "at the end of its context window"
            )
            raise self._too_long(_sent(prompt), request.max_new_tokens, self.max_model_len, seen)

    # -- pure request building and parsing ------------------------------------------------------

    def _texts(self, request: AlignRequest) -> tuple[ChatTemplate, Any]:
        template, _ = self._template_and_tokenizer()
        return template, render_texts(template, request.messages, request.draft, mode=self.prompt_mode)

    def _prompt(self, request: AlignRequest, texts: Any, spans: list[TokenSpan], template: ChatTemplate) -> AlignPrompt:
        assert request.keep_prefix_tokens is not None
        return build_prompt(
            texts,
            spans,
            keep_prefix_tokens=request.keep_prefix_tokens,
            mode=self.prompt_mode,
            stop=template.end_of_turn,
        )

    def _local_spans(self, texts: Any) -> list[TokenSpan] | None:
        tok = self._template_and_tokenizer()[1]
        return hf_token_spans(tok, texts.full) if tok is not None else None

    def _no_offsets(self, why: str) -> ConfigurationError:
        return ConfigurationError(
            f"{self.base_url}/tokenize {why}, so the draft cannot be cut in text (vLLM's /tokenize gives no "
            "offsets): pass tokenizer= (or template=<tokenizer path>) to send token ids instead"
        )

    def _tokenize_failed(self, exc: AlignerError) -> BaseException:
        # A 4xx here means the server has no TGI-style /tokenize (vLLM wants {"model", "prompt"}).
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 429):
            return self._no_offsets(f"answered HTTP {exc.status} ({exc})")
        return exc

    def _server_spans(self, payload: Any) -> list[TokenSpan]:
        if not isinstance(payload, list) or (payload and "start" not in payload[0]):
            raise self._no_offsets("returned no character offsets")
        return [TokenSpan(int(t["id"]), int(t["start"]), int(t["stop"])) for t in payload]

    def _body(self, request: AlignRequest, prompt: AlignPrompt, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt.ids if self.sends_token_ids else prompt.text,
            # A text prompt stops before a character the cut splits: its kept tokens come again.
            "max_tokens": request.max_new_tokens
            if self.sends_token_ids
            else prompt.text_budget(request.max_new_tokens),
            "temperature": 0,
            "stop": [prompt.stop],
            "stream": stream,
        }
        if self._decodes_ids(prompt):
            body["return_token_ids"] = True
        if self.model:
            body["model"] = self.model
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _decodes_ids(self, prompt: AlignPrompt) -> bool:
        # Token ids that end inside a character: vLLM 0.32's detokenizer then answers the *prompt's*
        # text followed by garbled pieces. Ask for the generated ids and decode them here instead.
        return self.sends_token_ids and prompt.split_tokens > 0

    def _decode(self, prompt: AlignPrompt, generated: list[int]) -> str:
        """The answer's text after ``kept_text``: kept and generated tokens decoded together (the official decode)."""
        tokenizer = self._template_and_tokenizer()[1]
        assert tokenizer is not None  # token ids are sent only with a local tokenizer
        kept = prompt.ids[prompt.prompt_tokens :]
        whole = str(tokenizer.decode([*kept, *generated], skip_special_tokens=True))
        # The split tokens' text can start before the text cut (a space merged with an emoji's first
        # bytes): that part is in ``kept_text`` already, so cut the whole decode at its end.
        if whole.startswith(prompt.kept_text):
            return whole[len(prompt.kept_text) :]
        # A kept special token the decode skips: fall back to the split and generated tokens alone.
        split = kept[len(kept) - prompt.split_tokens :]
        return str(tokenizer.decode([*split, *generated], skip_special_tokens=True))

    def _result(
        self, request: AlignRequest, prompt: AlignPrompt, text: str, finish: str | None, usage: dict[str, Any] | None
    ) -> AlignResult:
        usage = usage or {}
        generated = int(usage.get("completion_tokens") or 0)
        if generated and not self.sends_token_ids:
            # Given text, the server generated the split character's kept tokens again: they are no
            # more "generated" than in the official count, which starts after the fixed prompt.
            generated = max(0, generated - prompt.split_tokens)
        return AlignResult(
            text=assemble_answer(prompt.kept_text, text, prompt.stop),
            draft=request.draft,
            kept_prefix=prompt.kept_text.strip(),
            kept_prefix_tokens=prompt.kept_draft_tokens,
            generated_tokens=generated,
            finish_reason=_FINISH.get(str(finish), "eos_token"),
            endpoint=self.endpoint,
            details={
                "prompt_tokens": prompt.prompt_tokens,
                "kept_tokens": prompt.kept_tokens,
                "prompt_as": "token_ids" if self.sends_token_ids else "text",
                "route": "v1/completions",
            },
        )

    def _from_completion(self, request: AlignRequest, prompt: AlignPrompt, data: dict[str, Any]) -> AlignResult:
        choices = data.get("choices") or []
        if not choices:
            msg = f"{self.base_url}/v1/completions answered without choices"
            raise AlignerError(msg, endpoint=self.endpoint)
        choice = choices[0]
        text = str(choice.get("text") or "")
        if self._decodes_ids(prompt):
            text = self._decode(prompt, _token_ids(choice, self.base_url))
        return self._result(request, prompt, text, choice.get("finish_reason"), data.get("usage"))

    # -- the one path of each call style, run on the transport loop -----------------------------------

    async def _prepare(self, request: AlignRequest, deadline_at: float | None) -> AlignPrompt:
        if not self._model_checked:
            response = await self.transport.request("GET", "/v1/models", deadline_at=deadline_at, ok=(404,))
            self._model_from(None if response.status_code == 404 else dict(response.json()))
        template, texts = self._texts(request)
        spans = self._local_spans(texts)
        if spans is None:
            try:
                tokenized = await self.transport.request(
                    "POST", "/tokenize", {"inputs": texts.full}, deadline_at=deadline_at
                )
            except AlignerError as exc:
                raise self._tokenize_failed(exc) from exc
            spans = self._server_spans(tokenized.json())
        prompt = self._prompt(request, texts, spans, template)
        self._check_fits(request, prompt)
        return prompt

    async def _run_align(self, request: AlignRequest, deadline_at: float | None) -> AlignResult:
        prompt = await self._prepare(request, deadline_at)
        body = self._body(request, prompt, False)
        try:
            try:
                response = await self.transport.request("POST", "/v1/completions", body, deadline_at=deadline_at)
            except AlignerError as exc:
                if not self._refuses_ids(exc):
                    raise
                body = self._body(request, prompt, False)
                response = await self.transport.request("POST", "/v1/completions", body, deadline_at=deadline_at)
        except AlignerError as exc:
            raise self._rejected(exc, request, prompt) from exc
        data = response.json()
        choice = (data.get("choices") or [{}])[0]
        completion = int((data.get("usage") or {}).get("completion_tokens") or 0)
        self._check_budget(request, prompt, body, choice.get("finish_reason"), completion)
        return self._from_completion(request, prompt, data)

    async def _run_stream(self, request: AlignRequest, deadline_at: float | None) -> AsyncIterator[AlignChunk]:
        prompt = await self._prepare(request, deadline_at)
        state = _StreamState(prompt)
        first = state.answer.feed(prompt.kept_text)
        if first:
            yield AlignChunk(text=first)
        try:
            body, lines = await self._open_stream(request, prompt, deadline_at)
            state.decode = self._decode if self._decodes_ids(prompt) else None
            async for line in lines:
                piece = state.feed(line)
                if piece:
                    yield AlignChunk(text=piece)
        except AlignerError as exc:
            raise self._rejected(exc, request, prompt) from exc
        self._check_budget(request, prompt, body, state.finish, state.completion_tokens())
        yield AlignChunk(text="", result=state.result(self, request))

    async def _open_stream(
        self, request: AlignRequest, prompt: AlignPrompt, deadline_at: float | None
    ) -> tuple[dict[str, Any], AsyncIterator[str]]:
        """The streamed request's body and its lines, sent again as text if the server refuses ids."""
        body = self._body(request, prompt, True)
        lines = self.transport.lines("POST", "/v1/completions", body, deadline_at=deadline_at)
        try:
            first = await lines.__anext__()
        except StopAsyncIteration:
            return body, _replay([], lines)
        except AlignerError as exc:
            if not self._refuses_ids(exc):
                raise
            body = self._body(request, prompt, True)
            lines = self.transport.lines("POST", "/v1/completions", body, deadline_at=deadline_at)
            try:
                first = await lines.__anext__()
            except StopAsyncIteration:
                return body, _replay([], lines)
        return body, _replay([first], lines)


async def _replay(head: list[str], rest: AsyncIterator[str]) -> AsyncIterator[str]:
    for line in head:
        yield line
    async for line in rest:
        yield line


def _sent(prompt: AlignPrompt) -> int:
    """Tokens of the fixed prompt the server receives: the template, then the kept draft tokens."""
    return prompt.prompt_tokens + prompt.kept_tokens


def _token_ids(choice: dict[str, Any], base_url: str) -> list[int]:
    ids = choice.get("token_ids")
    if not isinstance(ids, list):
        msg = (
            f"{base_url}/v1/completions answered no token_ids for return_token_ids=true; the prompt ends inside a "
            "character, so its text cannot be trusted: use a server that returns token ids (vLLM), or "
            "use_token_ids=False"
        )
        raise AlignerError(msg, endpoint=base_url)
    return [int(i) for i in ids]


class _StreamState:
    """What a completions stream has said so far; shared by the sync and async streams.

    With ``decode`` the pieces come from the events' ``token_ids``, decoded here (a trailing
    incomplete character waits for its next bytes); otherwise from their ``text``.
    """

    def __init__(self, prompt: AlignPrompt, decode: Callable[[AlignPrompt, list[int]], str] | None = None) -> None:
        self.prompt = prompt
        self.decode = decode
        self.ids: list[int] = []
        self.decoded = ""
        self.answer = AnswerStream(stop=prompt.stop)
        self.pieces: list[str] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, line: str | bytes) -> str:
        """Take one SSE line; return the answer text it adds."""
        if line.strip() in ("data: [DONE]", b"data: [DONE]", "data:[DONE]", b"data:[DONE]"):
            self.done = True
        event = parse_sse_line(line)
        if event is None:
            return ""
        self.usage = event.get("usage") or self.usage
        choices = event.get("choices") or []
        if not choices:
            return ""
        self.finish = choices[0].get("finish_reason") or self.finish
        if self.decode is not None:
            # The last event may carry no ids (its finish reason only).
            self.ids += [int(i) for i in choices[0].get("token_ids") or []]
            text = self.decode(self.prompt, self.ids)
            stable = text if self.finish else text.rstrip("\ufffd")
            piece, self.decoded = stable[len(self.decoded) :], stable
        else:
            piece = str(choices[0].get("text") or "")
        self.pieces.append(piece)
        return self.answer.feed(piece)

    def completion_tokens(self) -> int:
        """Tokens the server generated: its usage, else one per streamed piece (as vLLM streams)."""
        return int((self.usage or {}).get("completion_tokens") or 0) or sum(1 for p in self.pieces if p)

    def result(self, aligner: OpenAICompatAligner, request: AlignRequest) -> AlignResult:
        if self.finish is None and not self.done:
            msg = "the completions stream ended before its last event"
            raise IncompleteGenerationError(msg, endpoint=aligner.endpoint)
        result = aligner._result(request, self.prompt, "".join(self.pieces), self.finish, self.usage)
        if not result.generated_tokens:
            # Without usage in the stream, count the streamed pieces (one per token on vLLM).
            result = result.model_copy(update={"generated_tokens": sum(1 for p in self.pieces if p)})
        return result
