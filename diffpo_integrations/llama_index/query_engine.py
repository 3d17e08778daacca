"""``DiffPOQueryEngine``: any query engine, with its answers aligned."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.prompts.mixin import PromptDictType, PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index_instrumentation import get_dispatcher

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.types import FailPolicy
from diffpo_integrations.llama_index._convert import DEFAULT_CONTEXT_TEMPLATE
from diffpo_integrations.llama_index.postprocessor import DiffPOResponsePostprocessor

__all__ = ["DiffPOQueryEngine"]

dispatcher = get_dispatcher(__name__)


class DiffPOQueryEngine(BaseQueryEngine):
    """Wrap a query engine so that its answers are aligned by DiffPO.

    ``query``/``aquery`` return what the inner engine returns (``Response``, ``StreamingResponse``,
    ``AsyncStreamingResponse``; ``PydanticResponse`` passes through unaligned) with the answer
    aligned, ``source_nodes`` and metadata kept and DiffPO's result under ``metadata["diffpo"]``.
    The aligner's conversation is the user's query, or, with ``include_context=True``, the query
    with the retrieved context. ``retrieve`` and prompts are the inner engine's (same prompt keys).

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[llama-index]"
            export DIFFPO_ALIGNER_URL=http://127.0.0.1:8080

    Key init args:
        query_engine: the engine to wrap (``index.as_query_engine(...)``, a router, a sub-question engine...).
        aligner, fail_policy, include_context, context_template, align_options:
            see :class:`DiffPOResponsePostprocessor`.

    Instantiate:
        .. code-block:: python

            from diffpo_integrations.llama_index import DiffPOQueryEngine

            engine = DiffPOQueryEngine(index.as_query_engine(llm=llm), aligner=aligner)

    Usage:
        .. code-block:: python

            response = engine.query("What is DiffPO?")
            response.response, response.source_nodes, response.metadata["diffpo"]["kept_prefix"]

    Async:
        .. code-block:: python

            response = await engine.aquery("What is DiffPO?")

    Stream:
        .. code-block:: python

            engine = DiffPOQueryEngine(index.as_query_engine(llm=llm, streaming=True), aligner=aligner)
            engine.query("What is DiffPO?").print_response_stream()
    """

    def __init__(
        self,
        query_engine: BaseQueryEngine,
        aligner: Aligner | None = None,
        *,
        fail_policy: FailPolicy = "closed",
        include_context: bool = False,
        context_template: str = DEFAULT_CONTEXT_TEMPLATE,
        align_options: Mapping[str, Any] | None = None,
        postprocessor: DiffPOResponsePostprocessor | None = None,
    ) -> None:
        self._query_engine = query_engine
        self.postprocessor = postprocessor or DiffPOResponsePostprocessor(
            aligner,
            fail_policy=fail_policy,
            include_context=include_context,
            context_template=context_template,
            align_options=align_options,
        )
        super().__init__(callback_manager=query_engine.callback_manager)

    @property
    def query_engine(self) -> BaseQueryEngine:
        """The wrapped engine."""
        return self._query_engine

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        response = self._query_engine.query(query_bundle)
        return self.postprocessor.postprocess(response, query_bundle, caller="DiffPOQueryEngine.query")

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        response = await self._query_engine.aquery(query_bundle)
        return await self.postprocessor.apostprocess(response, query_bundle, caller="DiffPOQueryEngine.aquery")

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._query_engine.retrieve(query_bundle)

    def synthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> RESPONSE_TYPE:
        response = self._query_engine.synthesize(query_bundle, nodes, additional_source_nodes)
        return self.postprocessor.postprocess(response, query_bundle, caller="DiffPOQueryEngine.synthesize")

    async def asynthesize(
        self,
        query_bundle: QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
    ) -> RESPONSE_TYPE:
        response = await self._query_engine.asynthesize(query_bundle, nodes, additional_source_nodes)
        return await self.postprocessor.apostprocess(response, query_bundle, caller="DiffPOQueryEngine.asynthesize")

    # Prompts stay under the inner engine's keys, so existing ``update_prompts`` calls keep working.
    def get_prompts(self) -> PromptDictType:
        return self._query_engine.get_prompts()

    def update_prompts(self, prompts_dict: PromptDictType) -> None:
        self._query_engine.update_prompts(prompts_dict)

    def _get_prompts(self) -> PromptDictType:
        return self._query_engine.get_prompts()

    def _update_prompts(self, prompts: PromptDictType) -> None:
        self._query_engine.update_prompts(prompts)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}
