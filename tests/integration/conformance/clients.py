"""The real clients of the conformance tests: where each one is installed, and its versions.

Clients that pin other versions of shared dependencies than this project's test environment
(``langchain-huggingface`` pins ``huggingface_hub<2``; ``text-generation`` and the LlamaIndex TGI
package pin ``huggingface_hub<1``) run in their own environment built from PyPI.
"""

from __future__ import annotations

from throwaway_venvs import VenvSpec

__all__ = ["CLIENT_VENVS", "TEST_ENV_CLIENTS"]

TEST_ENV_CLIENTS = ("huggingface_hub", "openai", "langchain-openai")
"""Installed in the test environment (the ``test`` dependency group)."""

CLIENT_VENVS = {
    "text-generation": VenvSpec("client-text-generation", ("text-generation==0.7.0",)),
    "llama-index-tgi": VenvSpec("client-llama-index-tgi", ("llama-index-llms-text-generation-inference==0.3.3",)),
    "llama-index-openai-like": VenvSpec("client-llama-index-openai-like", ("llama-index-llms-openai-like==0.8.1",)),
    "langchain-huggingface": VenvSpec("client-langchain-huggingface", ("langchain-huggingface==1.2.3",)),
}
"""Clients in throwaway environments, pinned so the compatibility table names what was tested."""
