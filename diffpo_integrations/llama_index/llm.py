"""``DiffPOLLM``: a LlamaIndex LLM that wraps any LLM and aligns its answers with DiffPO."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, SerializeAsAny
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen
from pydantic import BaseModel

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.core.types import AlignChunk, AlignResult, FailPolicy, Message
from diffpo_integrations.llama_index._align import DiffPOAlignment, current_span_id
from diffpo_integrations.llama_index._convert import conversation_from_chat, has_tool_calls, text_of
from diffpo_integrations.llama_index._scope import (
    AlignScope,
    CallKind,
    call_kind,
    internal_prompt,
    passing,
    react_answer,
)

__all__ = ["DiffPOFunctionCallingLLM", "DiffPOLLM"]

_M = TypeVar("_M", bound=BaseModel)


class DiffPOLLM(FunctionCallingLLM):
    """Wrap any LlamaIndex LLM; align the answers a user reads with DiffPO.

    Sync, async and streaming forms of ``chat`` and ``complete`` are aligned. ``metadata`` is the
    inner LLM's, so ``DiffPOLLM`` goes wherever the inner one went: ``Settings.llm``, query
    engines, chat engines, agents. It is a ``FunctionCallingLLM``: tools are prepared and parsed by
    the inner LLM (which must be one to call tools). DiffPO's result is added under
    ``additional_kwargs["diffpo"]`` (streams: on the last chunk).

    What is aligned (``align_scope="answers"``, the default): final answers of query engines,
    chat engines and agents. What passes through unaligned: responses that call tools;
    structured output (``structured_predict`` and its forms, Pydantic programs, prompts with an
    output parser); internal calls (router selectors, sub-question generation, condensing a
    follow-up question, keyword and metadata extraction, rerankers, tools an agent calls, told
    apart by ``PromptType`` and the call path); a ReAct agent's reasoning steps (of its last step
    only the text after ``Answer:`` is aligned). ``align_scope="all"`` aligns every text answer.
    The conversation the aligner sees includes tool calls and results
    (:func:`~diffpo_integrations.core.build_conversation`).

    Streams read the whole draft before the first aligned piece: the aligner conditions on it.
    For the aligner's conversation, earlier assistant turns that this wrapper aligned are mapped
    back to their drafts, since DiffPO conditions on the base model's own earlier answers.

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[llama-index]"
            export DIFFPO_ALIGNER_URL=http://127.0.0.1:8080

    Key init args:
        llm: the LLM to wrap.
        aligner: any :class:`~diffpo_integrations.core.Aligner` (default: ``TGIAligner()``).
        fail_policy: ``"closed"`` (raise the typed error) or ``"open"`` (return the draft, flagged).
        align_options: options for every aligner call, e.g. ``{"max_new_tokens": 128}``.
        align_scope: ``"answers"`` (default: internal calls pass through) or ``"all"``.

    Instantiate:
        .. code-block:: python

            from llama_index.core import Settings
            from diffpo_integrations.llama_index import DiffPOLLM

            llm = DiffPOLLM(llm=base_llm, aligner=aligner)
            Settings.llm = llm

    Usage:
        .. code-block:: python

            from llama_index.core.llms import ChatMessage

            response = llm.chat([ChatMessage(role="user", content="Name a prime.")])
            response.message.content, response.additional_kwargs["diffpo"]["draft"]
            llm.complete("Name a prime.").text

    Async:
        .. code-block:: python

            response = await llm.achat([ChatMessage(role="user", content="Name a prime.")])

    Stream:
        .. code-block:: python

            for chunk in llm.stream_complete("Name a prime."):
                print(chunk.delta, end="")
    """

    llm: SerializeAsAny[LLM] = Field(description="The wrapped LLM, which writes the drafts.")
    fail_policy: FailPolicy = Field(default="closed", description="'closed' raises; 'open' returns the draft flagged.")
    align_options: dict[str, Any] = Field(default_factory=dict, description="Options for every aligner call.")
    align_scope: AlignScope = Field(
        default="answers",
        description="'answers' aligns only what the user reads (internal calls pass through); 'all' aligns every answer.",
    )

    _alignment: DiffPOAlignment = PrivateAttr()

    def __init__(
        self,
        llm: LLM,
        aligner: Aligner | None = None,
        *,
        fail_policy: FailPolicy = "closed",
        align_options: Mapping[str, Any] | None = None,
        align_scope: AlignScope = "answers",
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        # Prompt formatting happens in the outer LLM (``predict`` calls ``self._get_prompt``), so it
        # copies the inner LLM's so that wrapping changes no prompt.
        for name in ("system_prompt", "messages_to_prompt", "completion_to_prompt", "output_parser"):
            kwargs.setdefault(name, getattr(llm, name))
        kwargs.setdefault("pydantic_program_mode", llm.pydantic_program_mode)
        kwargs.setdefault("query_wrapper_prompt", llm.query_wrapper_prompt)
        fields: dict[str, Any] = {
            "llm": llm,
            "fail_policy": fail_policy,
            "align_options": dict(align_options or {}),
            "align_scope": align_scope,
        }
        super().__init__(callback_manager=callback_manager or llm.callback_manager, **fields, **kwargs)
        self._alignment = DiffPOAlignment(aligner, fail_policy=fail_policy, align_options=align_options)

    @classmethod
    def class_name(cls) -> str:
        return "DiffPOLLM"

    @property
    def aligner(self) -> Aligner:
        """The aligner in use."""
        return self._alignment.aligner

    @property
    def metadata(self) -> LLMMetadata:
        """The inner LLM's metadata (context window, chat or completion, function calling)."""
        return self.llm.metadata

    # -- which calls are aligned -------------------------------------------------------------

    def _kind(self) -> CallKind:
        return "answer" if self.align_scope == "all" else call_kind(self)

    def _react_convo(self, messages: Sequence[ChatMessage]) -> list[Message]:
        return conversation_from_chat(messages, original=self._alignment.original_draft, react=True)

    # -- chat ---------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        kind = self._kind()
        response = self.llm.chat(messages, **kwargs)
        if kind == "internal" or has_tool_calls(response.message):
            return response
        text = text_of(response.message)
        head, draft, convo = self._split(kind, messages, text)
        if convo is None:
            return response
        return _aligned_chat(response, self._alignment.align(convo, draft, "DiffPOLLM.chat"), head)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        kind = self._kind()
        response = await self.llm.achat(messages, **kwargs)
        if kind == "internal" or has_tool_calls(response.message):
            return response
        head, draft, convo = self._split(kind, messages, text_of(response.message))
        if convo is None:
            return response
        return _aligned_chat(response, await self._alignment.aalign(convo, draft, "DiffPOLLM.achat"), head)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        kind = self._kind()
        inner = self.llm.stream_chat(messages, **kwargs)
        if kind == "internal":
            return inner
        span = current_span_id()

        def gen() -> ChatResponseGen:
            chunks = list(inner)
            if any(has_tool_calls(c.message) for c in chunks):
                yield from chunks
                return
            head, draft, convo = self._split(kind, messages, _chat_draft(chunks))
            if convo is None:
                yield from chunks
                return
            pieces = self._alignment.stream(convo, draft, "DiffPOLLM.stream_chat", span)
            yield from _chat_chunks(pieces, chunks, head)

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        kind = self._kind()
        inner = await self.llm.astream_chat(messages, **kwargs)
        if kind == "internal":
            return inner
        span = current_span_id()

        async def gen() -> ChatResponseAsyncGen:
            chunks = [c async for c in inner]
            head, draft, convo = self._split(kind, messages, _chat_draft(chunks))
            if convo is None or any(has_tool_calls(c.message) for c in chunks):
                for c in chunks:
                    yield c
                return
            pieces = self._alignment.astream(convo, draft, "DiffPOLLM.astream_chat", span)
            async for out in _achat_chunks(pieces, chunks, head):
                yield out

        return gen()

    def _split(
        self, kind: CallKind, messages: Sequence[ChatMessage], text: str
    ) -> tuple[str, str, list[Message] | None]:
        """The part before the answer, the answer to align, and the conversation (``None``: pass through)."""
        if kind != "react":
            return "", text, self._conversation(messages)
        found = react_answer(text)
        if found is None:
            return "", text, None
        head, answer = found
        return head, answer, self._react_convo(messages)

    # -- completion ---------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        kind = self._kind()
        response = self.llm.complete(prompt, formatted=formatted, **kwargs)
        if kind != "answer":
            return response
        result = self._alignment.align(_prompt_conversation(prompt), response.text, "DiffPOLLM.complete")
        return _aligned_completion(response, result)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        kind = self._kind()
        response = await self.llm.acomplete(prompt, formatted=formatted, **kwargs)
        if kind != "answer":
            return response
        result = await self._alignment.aalign(_prompt_conversation(prompt), response.text, "DiffPOLLM.acomplete")
        return _aligned_completion(response, result)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        kind = self._kind()
        inner = self.llm.stream_complete(prompt, formatted=formatted, **kwargs)
        if kind != "answer":
            return inner
        span = current_span_id()

        def gen() -> CompletionResponseGen:
            draft = _completion_draft(list(inner))
            yield from _completion_chunks(
                self._alignment.stream(_prompt_conversation(prompt), draft, "DiffPOLLM.stream_complete", span)
            )

        return gen()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        kind = self._kind()
        inner = await self.llm.astream_complete(prompt, formatted=formatted, **kwargs)
        if kind != "answer":
            return inner
        span = current_span_id()

        async def gen() -> CompletionResponseAsyncGen:
            draft = _completion_draft([c async for c in inner])
            pieces = self._alignment.astream(_prompt_conversation(prompt), draft, "DiffPOLLM.astream_complete", span)
            text = ""
            async for chunk in pieces:
                text += chunk.text
                if chunk.text or chunk.result is not None:
                    yield _completion_piece(chunk, text)

        return gen()

    # -- prompts: internal prompt types pass through ------------------------------------------

    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        with passing(internal_prompt(prompt)):
            return super().predict(prompt, **prompt_args)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        with passing(internal_prompt(prompt)):
            return await super().apredict(prompt, **prompt_args)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        with passing(internal_prompt(prompt)):
            return super().stream(prompt, **prompt_args)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        with passing(internal_prompt(prompt)):
            return await super().astream(prompt, **prompt_args)

    # -- structured output: the inner LLM's, unaligned ----------------------------------------

    def structured_predict(
        self, output_cls: type[_M], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **args: Any
    ) -> _M:
        result: _M = self.llm.structured_predict(output_cls, prompt, llm_kwargs, **args)
        return result

    async def astructured_predict(
        self, output_cls: type[_M], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **args: Any
    ) -> _M:
        result: _M = await self.llm.astructured_predict(output_cls, prompt, llm_kwargs, **args)
        return result

    def stream_structured_predict(
        self, output_cls: type[_M], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **args: Any
    ) -> Generator[Any, None, None]:
        return self.llm.stream_structured_predict(output_cls, prompt, llm_kwargs, **args)

    async def astream_structured_predict(
        self, output_cls: type[_M], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None, **args: Any
    ) -> AsyncGenerator[Any, None]:
        return await self.llm.astream_structured_predict(output_cls, prompt, llm_kwargs, **args)

    def _conversation(self, messages: Sequence[ChatMessage]) -> list[Message]:
        return conversation_from_chat(messages, original=self._alignment.original_draft)

    # -- tools: prepared and parsed by the inner LLM ------------------------------------------
    # ``chat_with_tools`` and its forms run through the aligned ``chat``: answers that call tools
    # pass through untouched, final text answers are aligned.

    @property
    def _tool_llm(self) -> FunctionCallingLLM:
        if not isinstance(self.llm, FunctionCallingLLM):
            msg = (
                f"the wrapped {type(self.llm).__name__} is not a FunctionCallingLLM, so it cannot call tools; "
                "wrap a function-calling LLM, or use an agent that does not need one (ReActAgent)"
            )
            raise ConfigurationError(msg)
        return self.llm

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        return self._tool_llm._prepare_chat_with_tools_compat(
            tools,
            user_msg=user_msg,
            chat_history=chat_history,
            verbose=verbose,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            tool_required=tool_required,
            **kwargs,
        )

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[Any], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        return self._tool_llm._validate_chat_with_tools_response(
            response, tools, allow_parallel_tool_calls=allow_parallel_tool_calls, **kwargs
        )

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        return self._tool_llm.get_tool_calls_from_response(
            response, error_on_no_tool_call=error_on_no_tool_call, **kwargs
        )


# -- response building ------------------------------------------------------------------------


def _prompt_conversation(prompt: str) -> list[Message]:
    return [Message(role="user", content=prompt)]


DiffPOFunctionCallingLLM = DiffPOLLM
"""The former name of :class:`DiffPOLLM` around a function-calling LLM: one class serves both now."""


def _with_text(message: ChatMessage, text: str) -> ChatMessage:
    # Non-text blocks (thinking, citations) are kept; the text blocks become the aligned text.
    blocks = [b for b in message.blocks if not isinstance(b, TextBlock)]
    return ChatMessage(
        role=message.role or MessageRole.ASSISTANT,
        blocks=[*blocks, TextBlock(text=text)],
        additional_kwargs=dict(message.additional_kwargs),
    )


def _aligned_chat(response: ChatResponse, result: AlignResult, head: str = "") -> ChatResponse:
    return ChatResponse(
        message=_with_text(response.message, head + result.text),
        raw=response.raw,
        additional_kwargs={**response.additional_kwargs, "diffpo": result.metadata()},
    )


def _aligned_completion(response: CompletionResponse, result: AlignResult) -> CompletionResponse:
    return CompletionResponse(
        text=result.text,
        raw=response.raw,
        additional_kwargs={**response.additional_kwargs, "diffpo": result.metadata()},
    )


def _chat_draft(chunks: list[ChatResponse]) -> str:
    deltas = "".join(c.delta or "" for c in chunks)
    return deltas or (text_of(chunks[-1].message) if chunks else "")


def _completion_draft(chunks: list[CompletionResponse]) -> str:
    deltas = "".join(c.delta or "" for c in chunks)
    return deltas or (chunks[-1].text if chunks else "")


def _chat_piece(chunk: AlignChunk, text: str, template: ChatMessage) -> ChatResponse:
    extra = {"diffpo": chunk.result.metadata()} if chunk.result is not None else {}
    return ChatResponse(message=_with_text(template, text), delta=chunk.text, additional_kwargs=extra)


def _chat_chunks(pieces: Iterator[AlignChunk], chunks: list[ChatResponse], head: str = "") -> ChatResponseGen:
    template = chunks[-1].message if chunks else ChatMessage(role=MessageRole.ASSISTANT)
    if head:
        yield ChatResponse(message=_with_text(template, head), delta=head)
    text = head
    for chunk in pieces:
        text += chunk.text
        if chunk.text or chunk.result is not None:
            yield _chat_piece(chunk, text, template)


async def _achat_chunks(
    pieces: AsyncIterator[AlignChunk], chunks: list[ChatResponse], head: str = ""
) -> ChatResponseAsyncGen:
    template = chunks[-1].message if chunks else ChatMessage(role=MessageRole.ASSISTANT)
    if head:
        yield ChatResponse(message=_with_text(template, head), delta=head)
    text = head
    async for chunk in pieces:
        text += chunk.text
        if chunk.text or chunk.result is not None:
            yield _chat_piece(chunk, text, template)


def _completion_piece(chunk: AlignChunk, text: str) -> CompletionResponse:
    extra = {"diffpo": chunk.result.metadata()} if chunk.result is not None else {}
    return CompletionResponse(text=text, delta=chunk.text, additional_kwargs=extra)


def _completion_chunks(pieces: Iterator[AlignChunk]) -> CompletionResponseGen:
    text = ""
    for chunk in pieces:
        text += chunk.text
        if chunk.text or chunk.result is not None:
            yield _completion_piece(chunk, text)
