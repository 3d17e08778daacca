"""Run DSPy against a gateway, in the client's own environment; print the result as JSON.

    python run_dspy.py BASE_URL QUESTION MAX_TOKENS

Prints ``lm``: the text of one ``dspy.LM`` call, ``answer``: ``dspy.Predict("question -> answer")``'s
answer, and ``json_mode``: for each request Predict made, whether it asked for JSON
(``response_format``), which the gateway passes through unaligned.
"""

from __future__ import annotations

import json
import sys

import dspy

SYSTEM = "Answer in one sentence."


def main() -> None:
    base_url, question, max_tokens = sys.argv[1:4]
    lm = dspy.LM(
        "openai/smollm2", api_base=base_url, api_key="unused", max_tokens=int(max_tokens), cache=False, num_retries=0
    )
    [text] = lm(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    before = len(lm.history)
    dspy.configure(lm=lm)
    answer = dspy.Predict("question -> answer")(question=question).answer
    json_mode = ["response_format" in (entry.get("kwargs") or {}) for entry in lm.history[before:]]
    print(json.dumps({"lm": text, "answer": answer, "json_mode": json_mode}))


if __name__ == "__main__":
    main()
