"""Run DSPy against a gateway, in the client's own environment; print the result as JSON.

    python run_dspy.py BASE_URL OPERATION QUESTION MAX_TOKENS

``lm``: the text of one ``dspy.LM`` call. ``predict`` and ``chain_of_thought``: the fields
``dspy.Predict("question -> answer")`` or ``dspy.ChainOfThought`` parsed (DSPy's default ChatAdapter),
and ``requests``: how many calls the module made (a second one is DSPy's JSONAdapter fallback after
its field parser failed).
"""

from __future__ import annotations

import json
import sys

import dspy

SYSTEM = "Answer in one sentence."


def main() -> None:
    base_url, operation, question, max_tokens = sys.argv[1:5]
    lm = dspy.LM(
        "openai/smollm2", api_base=base_url, api_key="unused", max_tokens=int(max_tokens), cache=False, num_retries=0
    )
    if operation == "lm":
        [text] = lm(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
        print(json.dumps({"text": text}))
        return
    dspy.configure(lm=lm)
    module = dspy.Predict if operation == "predict" else dspy.ChainOfThought
    prediction = module("question -> answer")(question=question)
    print(json.dumps({"fields": dict(prediction.items()), "requests": len(lm.history)}))


if __name__ == "__main__":
    main()
