"""``DiffPOSynthesizer``: any response synthesizer, with its answers aligned.

The response synthesizer is the slot a RAG pipeline already exposes
(``index.as_query_engine(response_synthesizer=...)``, ``RetrieverQueryEngine(retriever, synth)``),
so wrapping it changes one argument and keeps retrieval, node postprocessors and prompts as they were.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import Any

from llama_index.core.base.response.schema import RESPONSE_TYPE, AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.prompts.mixin import PromptDictType, PromptMixinType
from llama_index.core.response_synthesizers.base import BaseSynthesizer, QueryTextType
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.types import RESPONSE_TEXT_TYPE
from llama_index_instrumentation import get_dispatcher

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.types import FailPolicy
from diffpo_integrations.llama_index._convert import DEFAULT_CONTEXT_TEMPLATE
from diffpo_integrations.llama_index.postprocessor import DiffPOResponsePostprocessor

__all__ = ["DiffPOSynthesizer"]

dispatcher = get_dispatcher(__name__)


class DiffPOSynthesizer(BaseSynthesizer):
    """Wrap a response synthesizer so that every answer it synthesizes is aligned by DiffPO.

    The wrapper is a ``BaseSynthesizer``: ``synthesize``/``asynthesize`` return the inner
    synthesizer's response type (``Response``, ``StreamingResponse``, ``AsyncStreamingResponse``)
    with the answer aligned, source nodes and metadata kept and ``metadata["diffpo"]`` added.
    Prompts (``get_prompts``/``update_prompts``, same keys), the callback manager and the
    ``streaming`` flag are the inner synthesizer's. When nothing was retrieved the inner
    synthesizer's empty-response sentinel is returned unaligned: it is not an answer.

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[llama-index]"
            export DIFFPO_ALIGNER_URL=http://127.0.0.1:8080   # diffpo serve, or a TGI with DiffPO

    Key init args:
        synthesizer: the response synthesizer to wrap (``get_response_synthesizer(...)``).
        aligner, fail_policy, include_context, context_template, align_options:
            see :class:`DiffPOResponsePostprocessor`.

    Instantiate:
        .. code-block:: python

            from llama_index.core import get_response_synthesizer
            from diffpo_integrations.llama_index import DiffPOSynthesizer

            synth = DiffPOSynthesizer(get_response_synthesizer(llm=llm), aligner=aligner)
            query_engine = index.as_query_engine(llm=llm, response_synthesizer=synth)

    Usage:
        .. code-block:: python

            response = query_engine.query("What does DiffPO align?")
            response.response, response.metadata["diffpo"]["draft"]

    Async:
        .. code-block:: python

            response = await query_engine.aquery("What does DiffPO align?")

    Stream:
        .. code-block:: python

            synth = DiffPOSynthesizer(get_response_synthesizer(llm=llm, streaming=True), aligner=aligner)
            for piece in index.as_query_engine(llm=llm, response_synthesizer=synth).query(q).response_gen:
                print(piece, end="")
    """

    def __init__(
        self,
        synthesizer: BaseSynthesizer,
        aligner: Aligner | None = None,
        *,
        fail_policy: FailPolicy = "closed",
        include_context: bool = False,
        context_template: str = DEFAULT_CONTEXT_TEMPLATE,
        align_options: Mapping[str, Any] | None = None,
        postprocessor: DiffPOResponsePostprocessor | None = None,
    ) -> None:
        self._synthesizer = synthesizer
        self.postprocessor = postprocessor or DiffPOResponsePostprocessor(
            aligner,
            fail_policy=fail_policy,
            include_context=include_context,
            context_template=context_template,
            align_options=align_options,
        )
        # The base class holds what code that inspects a synthesizer reads (its LLM, prompt helpers,
        # output class, empty response): the inner synthesizer's, so nothing is resolved anew.
        super().__init__(
            llm=synthesizer._llm,
            callback_manager=synthesizer.callback_manager,
            prompt_helper=synthesizer._prompt_helper,
            chat_prompt_helper=getattr(synthesizer, "_chat_prompt_helper", None),
            streaming=synthesizer._streaming,
            output_cls=synthesizer._output_cls,
            empty_response=synthesizer._empty_response,
            multimodal=getattr(synthesizer, "_multimodal", False),
        )

    @property
    def synthesizer(self) -> BaseSynthesizer:
        """The wrapped synthesizer."""
        return self._synthesizer

    # CondenseQuestionChatEngine flips ``_response_synthesizer._streaming`` around its calls, so
    # the flag must reach the synthesizer that actually produces the draft.
    @property  # type: ignore[override]
    def _streaming(self) -> bool:
        return bool(self._synthesizer._streaming)

    @_streaming.setter
    def _streaming(self, value: bool) -> None:
        self._synthesizer._streaming = value

    @property
    def callback_manager(self) -> CallbackManager:
        return self._synthesizer.callback_manager

    @callback_manager.setter
    def callback_manager(self, callback_manager: CallbackManager) -> None:
        self._callback_manager = callback_manager
        self._synthesizer.callback_manager = callback_manager

    # -- prompts: the inner synthesizer's, under the same keys --------------------------------

    def get_prompts(self) -> PromptDictType:
        return self._synthesizer.get_prompts()

    def update_prompts(self, prompts_dict: PromptDictType) -> None:
        self._synthesizer.update_prompts(prompts_dict)

    def _get_prompts(self) -> PromptDictType:
        return self._synthesizer.get_prompts()

    def _update_prompts(self, prompts: PromptDictType) -> None:
        self._synthesizer.update_prompts(prompts)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    # -- synthesis ----------------------------------------------------------------------------

    @dispatcher.span
    def synthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        response = self._synthesizer.synthesize(query, nodes, additional_source_nodes, **response_kwargs)
        if not nodes:
            return response
        return self.postprocessor.postprocess(response, _query(query), caller="DiffPOSynthesizer.synthesize")

    @dispatcher.span
    async def asynthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        response = await self._synthesizer.asynthesize(query, nodes, additional_source_nodes, **response_kwargs)
        if not nodes:
            return response
        return await self.postprocessor.apostprocess(response, _query(query), caller="DiffPOSynthesizer.asynthesize")

    def get_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        """The inner synthesizer's ``get_response``, aligned (a string, or a generator of pieces)."""
        draft = self._synthesizer.get_response(query_str, text_chunks, **response_kwargs)
        aligned = self.postprocessor.postprocess(
            _as_response(draft, text_chunks), query_str, caller="DiffPOSynthesizer.get_response"
        )
        return _as_text(aligned)

    async def aget_response(
        self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any
    ) -> RESPONSE_TEXT_TYPE:
        """Async :meth:`get_response`."""
        draft = await self._synthesizer.aget_response(query_str, text_chunks, **response_kwargs)
        aligned = await self.postprocessor.apostprocess(
            _as_response(draft, text_chunks), query_str, caller="DiffPOSynthesizer.aget_response"
        )
        return _as_text(aligned)


def _query(query: QueryTextType) -> str | QueryBundle:
    return query if isinstance(query, (str, QueryBundle)) else str(query)


def _as_response(draft: RESPONSE_TEXT_TYPE, text_chunks: Sequence[str]) -> RESPONSE_TYPE:
    # The text chunks become source nodes so that ``include_context`` sees them as it sees retrieved nodes.
    nodes = [NodeWithScore(node=TextNode(text=chunk)) for chunk in text_chunks]
    if isinstance(draft, Generator):
        return StreamingResponse(draft, source_nodes=nodes)
    if isinstance(draft, AsyncGenerator):
        return AsyncStreamingResponse(draft, source_nodes=nodes)
    return Response(str(draft), source_nodes=nodes)


def _as_text(aligned: RESPONSE_TYPE) -> RESPONSE_TEXT_TYPE:
    if isinstance(aligned, (StreamingResponse, AsyncStreamingResponse)):
        return aligned.response_gen
    return aligned.response if isinstance(aligned.response, str) else str(aligned)
