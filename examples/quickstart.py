"""The main job: align a real MT-bench draft through ``prompt | llm | DiffPOAlign()``.

1. Starts the embedded aligner server (``diffpo serve``) on 127.0.0.1, unless
   ``DIFFPO_ALIGNER_URL`` already points at one (a real TGI serving DiffPO, say).
2. Takes MT-bench question 81 and Llama-3-8B-Instruct's recorded answer to it (shipped with the
   package) and replays that answer as the chain's chat model, so the draft is a real one.
3. Runs ``ChatPromptTemplate | llm | DiffPOAlign()`` and prints draft and aligned answer side by side.
4. Runs the same chain with an API chat model class, ``ChatOpenAI``, pointed at the embedded
   server's OpenAI-compatible route, so the base model writes a fresh draft.

SmolLM2-135M-Instruct stands in for a DiffPO checkpoint: its "aligned" answers show the pipeline
working, not DiffPO's quality.

Run: ``python examples/quickstart.py [--question-id 81] [--max-new-tokens 128]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.prompts import ChatPromptTemplate

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.cli.align import side_by_side
from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path
from diffpo_integrations.langchain import DiffPOAlign

STAND_IN = "(aligner: SmolLM2-135M-Instruct standing in for a DiffPO checkpoint)"


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start ``diffpo serve`` on a free loopback port; stop it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "diffpo_integrations.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"diffpo serve exited with status {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("diffpo serve did not become healthy in 10 minutes")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def mt_bench_draft(question_id: int) -> tuple[str, str]:
    """The first-turn question and Llama-3-8B-Instruct's recorded answer for ``question_id``."""
    questions = {q["question_id"]: q for q in map(json.loads, mt_bench_questions_path().read_text().splitlines())}
    answers = {
        a["question_id"]: a
        for a in map(json.loads, mt_bench_answers_path("llama-3-it-vanilla").read_text().splitlines())
    }
    return questions[question_id]["turns"][0], answers[question_id]["choices"][0]["turns"][0]


def run(url: str, question_id: int, max_new_tokens: int) -> None:
    question, draft = mt_bench_draft(question_id)
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    aligner = TGIAligner(url, max_new_tokens=max_new_tokens)

    print(f"MT-bench question {question_id}: {question}\n")
    print("1) prompt | llm | DiffPOAlign(), llm replaying Llama-3-8B-Instruct's recorded answer", STAND_IN)
    llm = FakeListChatModel(responses=[draft])
    message = (prompt | llm | DiffPOAlign(aligner=aligner)).invoke({"question": question})
    print(side_by_side(aligner_result(message)), "\n")

    print("2) prompt | ChatOpenAI(base_url=<embedded server>/v1) | DiffPOAlign()", STAND_IN)
    from langchain_openai import ChatOpenAI

    api_llm = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model="local", temperature=0, max_tokens=96)
    message = (prompt | api_llm | DiffPOAlign(aligner=aligner)).invoke({"question": question})
    print(side_by_side(aligner_result(message)))


def aligner_result(message: object) -> object:
    """The AlignResult that DiffPOAlign attached to the aligned message."""
    from diffpo_integrations.core.types import AlignResult

    meta = message.response_metadata["diffpo"]  # type: ignore[attr-defined]
    return AlignResult(text=message.content, **meta)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question-id", type=int, default=81)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    url = os.environ.get("DIFFPO_ALIGNER_URL")
    if url:
        run(url, args.question_id, args.max_new_tokens)
        return
    with embedded_server() as url:
        run(url, args.question_id, args.max_new_tokens)


if __name__ == "__main__":
    main()
