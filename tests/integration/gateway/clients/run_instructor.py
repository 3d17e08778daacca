"""Run instructor against a gateway, in the client's own environment; print the parsed model as JSON.

    python run_instructor.py BASE_URL MODE

MODE is ``tools`` (``from_openai``'s default, ``Mode.TOOLS``) or ``json`` (``Mode.JSON``).
"""

from __future__ import annotations

import json
import sys

import instructor
from openai import OpenAI
from pydantic import BaseModel


class Weather(BaseModel):
    city: str
    celsius: int


def main() -> None:
    base_url, mode = sys.argv[1:3]
    openai_client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    client = (
        instructor.from_openai(openai_client)
        if mode == "tools"
        else instructor.from_openai(openai_client, mode=instructor.Mode.JSON)
    )
    weather = client.chat.completions.create(
        model="scripted",
        response_model=Weather,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        max_retries=0,
    )
    print(json.dumps(weather.model_dump()))


if __name__ == "__main__":
    main()
