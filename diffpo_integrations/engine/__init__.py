"""In-process DiffPO engine: model loading and token-level decoding.

Needs the ``local`` extra (torch, transformers). The decoding functions work on token ids;
prompt building lives in :mod:`diffpo_integrations.core`.

- :func:`load_model` loads the aligner (default: the packaged SmolLM2 GGUF, cached as
  safetensors after the first load); ``pack_weights=True`` packs the linear weights for
  oneDNN on a CPU (:func:`pack_linear_weights`).
- :func:`greedy`, :func:`speculative` and :func:`reference_jacobi` decode one sequence and
  return a :class:`DecodeResult`; :func:`decode` picks one by name. :func:`sample` draws each
  token with :class:`SamplingParams` (the server's sampling routes; alignment stays greedy).
- :class:`BatchScheduler` runs the decodes of several threads as shared forward passes
  (:func:`use_scheduler` routes a thread through it); the embedded server batches with it.
"""

from diffpo_integrations.engine.batching import BatchScheduler, supports_batching, use_scheduler
from diffpo_integrations.engine.decoding import (
    DecodeFinishReason,
    DecodeMethod,
    DecodeResult,
    TokenCallback,
    decode,
    greedy,
    reference_jacobi,
)
from diffpo_integrations.engine.loading import LoadedModel, eos_token_ids, load_model, smollm2_gguf_path
from diffpo_integrations.engine.packing import pack_linear_weights
from diffpo_integrations.engine.sampling import SamplingParams, sample
from diffpo_integrations.engine.speculation import SpeculationConfig, speculative
from diffpo_integrations.engine.testing import tiny_random_model

__all__ = [
    "BatchScheduler",
    "DecodeMethod",
    "DecodeResult",
    "DecodeFinishReason",
    "LoadedModel",
    "SamplingParams",
    "SpeculationConfig",
    "TokenCallback",
    "decode",
    "eos_token_ids",
    "greedy",
    "load_model",
    "pack_linear_weights",
    "reference_jacobi",
    "sample",
    "smollm2_gguf_path",
    "speculative",
    "supports_batching",
    "tiny_random_model",
    "use_scheduler",
]
