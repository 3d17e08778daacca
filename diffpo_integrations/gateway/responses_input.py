"""A Responses API request as the Chat Completions request the upstream answers.

``instructions`` and ``input`` (a string, or message, ``function_call`` and ``function_call_output``
items) become ``messages``; ``max_output_tokens``, ``temperature``, ``top_p``, function ``tools``,
``tool_choice``, ``parallel_tool_calls`` and ``text.format`` become their chat equivalents. What the
gateway cannot honour is refused with a 400 naming the parameter, never dropped: a stored
conversation (``previous_response_id``, ``conversation``), ``background`` runs, built-in tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffpo_integrations.gateway.wire import GatewayError

__all__ = ["chat_request", "chat_messages"]

_COPIED = ("model", "temperature", "top_p", "parallel_tool_calls", "user", "diffpo")
"""Parameters with the same name and meaning in both APIs."""
_NO_STORE = {
    "previous_response_id": "the gateway stores no responses: send the whole conversation in 'input' instead",
    "conversation": "the gateway stores no conversations: send the whole conversation in 'input' instead",
    "background": "the gateway answers while the request is open: leave out 'background' (or set it to false)",
    "prompt": "the gateway has no stored prompts: send the prompt's text in 'instructions' and 'input'",
}
_ROLES = ("user", "assistant", "system", "developer")


def _refuse(param: str, message: str) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param=param)


def chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Chat Completions body for a Responses request (``stream`` asks for usage in the last chunk).

    Raises:
        GatewayError: 400 in OpenAI's error shape, ``param`` naming what the gateway cannot honour or
            what is malformed.

    Example:
        >>> chat_request({"model": "m", "instructions": "Be brief.", "input": "Hi", "max_output_tokens": 8})
        {'messages': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}], 'model': 'm', 'max_tokens': 8}
    """
    for param, why in _NO_STORE.items():
        if body.get(param) not in (None, False):
            raise _refuse(param, f"'{param}' is not supported by the gateway: {why}")
    chat: dict[str, Any] = {"messages": chat_messages(body.get("instructions"), body.get("input"))}
    chat.update({k: body[k] for k in _COPIED if body.get(k) is not None})
    limit = body.get("max_output_tokens")
    if limit is not None:
        # max_tokens, not max_completion_tokens: TGI, diffpo serve and older servers read only this one.
        chat["max_tokens"] = limit
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def chat_messages(instructions: Any, items: Any) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages.

    Consecutive ``function_call`` items become one assistant turn with several ``tool_calls``;
    ``reasoning`` items are left out (chat upstreams take no reasoning back).

    Raises:
        GatewayError: 400 naming the first item the gateway cannot read.
    """
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _refuse("instructions", "'instructions' must be a string")
        messages.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _refuse("input", "'input' must be a string or a non-empty list of items")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _refuse(f"input[{i}]", f"input[{i}] must be an object (a message or a function_call item)")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, i))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", i),
                "type": "function",
                "function": {"name": _string(item, "name", i), "arguments": str(item.get("arguments") or "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _text_parts(output, f"input[{i}].output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", i), "content": content})
        elif kind != "reasoning":
            msg = (
                f"input[{i}] is a {kind!r} item, which the gateway cannot pass to a chat upstream; "
                "it reads message, function_call and function_call_output items"
            )
            raise _refuse(f"input[{i}].type", msg)
    return messages


def _string(item: Mapping[str, Any], key: str, i: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _refuse(f"input[{i}].{key}", f"input[{i}] needs a non-empty string '{key}'")
    return value


def _message(item: Mapping[str, Any], i: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise _refuse(f"input[{i}].role", f"input[{i}] has role {role!r}; the roles are {', '.join(_ROLES)}")
    content = item.get("content")
    if not isinstance(content, str):
        content = _parts(content, f"input[{i}].content")
    return {"role": role, "content": content}


def _parts(parts: Any, where: str) -> list[dict[str, Any]]:
    """Responses content parts as chat content parts (text and images)."""
    if not isinstance(parts, list):
        raise _refuse(where, f"{where} must be a string or a list of content parts")
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            out.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            msg = f"{where}[{j}] is a {kind!r} part; the gateway passes text parts and input_image parts with an image_url"
            raise _refuse(f"{where}[{j}].type", msg)
    return out


def _text_parts(parts: Any, where: str) -> str:
    return "".join(p["text"] for p in _parts(parts, where) if p["type"] == "text")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _refuse("tools", "'tools' must be a list of function tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            msg = (
                f"tools[{i}] is a {kind!r} tool: the gateway runs no built-in tools, only function tools "
                "(type 'function') that the client runs"
            )
            raise _refuse(f"tools[{i}].type", msg)
        if not isinstance(tool.get("name"), str):
            raise _refuse(f"tools[{i}].name", f"tools[{i}] needs a string 'name'")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    msg = "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}"
    raise _refuse("tool_choice", msg)


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, Mapping) else None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, Mapping) and isinstance(fmt.get("name"), str):
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    msg = '\'text.format\' must be {"type": "text"}, {"type": "json_object"} or a named json_schema'
    raise _refuse("text.format", msg)
