"""DiffPO alignment for LlamaIndex: response postprocessor, synthesizer, query and chat engines, LLM, Workflows.

Every wrapper takes an ``aligner`` (default: ``TGIAligner()`` at ``$DIFFPO_ALIGNER_URL``) and a
``fail_policy`` (``"closed"`` raises the typed error, ``"open"`` returns the draft flagged), adds
DiffPO's result under ``metadata["diffpo"]`` (``additional_kwargs["diffpo"]`` for LLM responses)
and reports each alignment to LlamaIndex's instrumentation dispatcher. See ``docs/llamaindex.md``.
"""

from diffpo_integrations.llama_index._convert import DEFAULT_CONTEXT_TEMPLATE
from diffpo_integrations.llama_index._scope import AlignScope
from diffpo_integrations.llama_index.chat_engine import DiffPOChatEngine
from diffpo_integrations.llama_index.events import DiffPOAlignEndEvent, DiffPOAlignStartEvent, DiffPOFailOpenWarning
from diffpo_integrations.llama_index.llm import DiffPOFunctionCallingLLM, DiffPOLLM
from diffpo_integrations.llama_index.postprocessor import DiffPOResponsePostprocessor, DiffPOStreamingChatResponse
from diffpo_integrations.llama_index.query_engine import DiffPOQueryEngine
from diffpo_integrations.llama_index.synthesizer import DiffPOSynthesizer
from diffpo_integrations.llama_index.workflow import (
    AlignedAnswerDeltaEvent,
    AlignedAnswerEvent,
    AlignedDraftEvent,
    DiffPOAlignAndContinue,
    DiffPOAlignStep,
    DraftAnswerEvent,
)

__all__ = [
    "DEFAULT_CONTEXT_TEMPLATE",
    "AlignScope",
    "AlignedAnswerDeltaEvent",
    "AlignedAnswerEvent",
    "AlignedDraftEvent",
    "DiffPOAlignAndContinue",
    "DiffPOAlignEndEvent",
    "DiffPOAlignStartEvent",
    "DiffPOAlignStep",
    "DiffPOChatEngine",
    "DiffPOFailOpenWarning",
    "DiffPOFunctionCallingLLM",
    "DiffPOLLM",
    "DiffPOQueryEngine",
    "DiffPOResponsePostprocessor",
    "DiffPOStreamingChatResponse",
    "DiffPOSynthesizer",
    "DraftAnswerEvent",
]
