"""Fixtures of the LangChain unit tests: a fake aligner that echoes its input, scripted base models."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_fakes import EchoAligner, ScriptedChatModel, draft_message


@pytest.fixture
def aligner() -> EchoAligner:
    return EchoAligner(keep_prefix_tokens=2)


@pytest.fixture
def prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])


@pytest.fixture
def make_llm() -> Callable[..., ScriptedChatModel]:
    """A scripted base model answering with the given messages in turn (the last one repeats)."""

    def make(*answers: AIMessage | str) -> ScriptedChatModel:
        script = list(answers) or [draft_message()]
        return ScriptedChatModel(messages=itertools.chain(script, itertools.repeat(script[-1])))

    return make


@pytest.fixture
def llm(make_llm: Callable[..., ScriptedChatModel]) -> ScriptedChatModel:
    return make_llm()
