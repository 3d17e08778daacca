"""The main job: align a real MT-bench draft through ``prompt | llm | DiffPOAlign()``.

1. Starts the embedded aligner server (``diffpo serve``) on 127.0.0.1, unless
   ``DIFFPO_ALIGNER_URL`` already points at one (a real TGI serving DiffPO, say).
2. Takes MT-bench question 82 (an email asking a supervisor for feedback) and Llama-3-8B-Instruct's
   recorded answer to it (shipped with the package) and replays that answer as the chain's chat
   model, so the draft is a real one.
3. Runs ``ChatPromptTemplate | llm | DiffPOAlign()`` and prints draft and aligned answer side by side.
4. Runs the same chain with an API chat model class, ``ChatOpenAI``, pointed at the embedded
   server's OpenAI-compatible route, so the base model writes a fresh draft.

5. Prints what to do next: serve a real DiffPO checkpoint and point the chain at it.

SmolLM2-135M-Instruct stands in for a DiffPO checkpoint: its "aligned" answers show the pipeline
working, not DiffPO's quality. An answer that spends its whole budget repeating itself is marked
``finish: length (repeating)``.

Run: ``python examples/quickstart.py [--question-id 82] [--max-new-tokens 128]``
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

import httpx2
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.cli.align import side_by_side
from diffpo_integrations.core.types import AlignResult
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
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{url}/health", timeout=2).status_code == 200:
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


# Why question 82: with the stand-in, 6 kept tokens and 128 new tokens, Llama-3's first-turn drafts of
# MT-bench questions 81 to 91 were aligned and checked for loops (a run of 8 words said more than twice).
# Question 81's answer (the old default) loops ("**Lava and Lava**" 12 times to the budget), as do 85 and
# 88 at some kept prefixes; 82's reads as the email the question asks for, both from Llama-3's draft and
# from the stand-in's own, so the first screen a newcomer sees is an answer. Decoding is untouched:
# the aligned answer is still greedy decoding of prompt + kept prefix.
DEFAULT_QUESTION = 82

NEXT_STEPS = """Next:
  1. Serve a real DiffPO checkpoint on a GPU: diffpo serve --model RuizheChen/DiffPO-9B --port 8080
     (or TGI: docker run --gpus all -p 8080:80 ghcr.io/huggingface/text-generation-inference --model-id RuizheChen/DiffPO-9B)
  2. Point the chain at it: DiffPOAlign(aligner=TGIAligner("http://<gpu-host>:8080", template="gemma")),
     or run this demo again with DIFFPO_ALIGNER_URL=http://<gpu-host>:8080
  3. Guides: docs/quickstart.md, docs/langchain.md, docs/llamaindex.md, docs/serving.md"""


def run(url: str, question_id: int, max_new_tokens: int) -> list[AlignResult]:
    """Run both chains, print each draft beside its aligned answer, and return the two results."""
    question, draft = mt_bench_draft(question_id)
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    aligner = TGIAligner(url, max_new_tokens=max_new_tokens)
    results = []

    print(f"MT-bench question {question_id}: {question}\n")
    print("1) prompt | llm | DiffPOAlign(), llm replaying Llama-3-8B-Instruct's recorded answer", STAND_IN)
    llm = FakeListChatModel(responses=[draft])
    message = (prompt | llm | DiffPOAlign(aligner=aligner)).invoke({"question": question})
    results.append(aligner_result(message))
    print(side_by_side(results[-1]), "\n")

    print("2) prompt | ChatOpenAI(base_url=<embedded server>/v1) | DiffPOAlign()", STAND_IN)
    from langchain_openai import ChatOpenAI

    api_llm = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model="local", temperature=0, max_tokens=96)
    message = (prompt | api_llm | DiffPOAlign(aligner=aligner)).invoke({"question": question})
    results.append(aligner_result(message))
    print(side_by_side(results[-1]), "\n")
    print(NEXT_STEPS)
    return results


def aligner_result(message: AIMessage) -> AlignResult:
    """The AlignResult that DiffPOAlign attached to the aligned message."""
    meta = message.response_metadata["diffpo"]
    return AlignResult(text=str(message.content), **meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question-id", type=int, default=DEFAULT_QUESTION)
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
