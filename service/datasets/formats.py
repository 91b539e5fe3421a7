"""The accepted JSONL shapes, each checked and normalised into one of three kinds of example.

  chat               {"messages": [...], "tools"?: [...]}  OpenAI's fine-tuning format, in full:
                     content as a string or a list of text parts, `name`, `weight` (0 or 1) on
                     assistant messages, assistant `tool_calls` and `role: "tool"` results.
  sharegpt           {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}]}
  instruction        {"instruction", "input"?, "output"}                      (Alpaca)
  prompt_completion  {"prompt", "completion"}
  text               {"text"}                                                  (all of it trained)

Preference pairs, for DPO jobs (method.type "dpo"):
  preference         {"input": {"messages": [...], "tools"?}, "preferred_output": [assistant],
                      "non_preferred_output": [assistant]}                     (OpenAI's DPO format)
  chosen_rejected    {"prompt", "chosen", "rejected"}: strings (raw text, as TRL reads them), or
                     a list of messages for the prompt and one assistant message for each answer

Prompts, for reinforcement jobs (method.type "reinforcement"):
  chat               {"messages": [... ending with the user's turn], "tools"?, any other fields}
                     OpenAI's RFT format: the model's answer is sampled in training, and the
                     whole row is the item its grader reads ({{item.field}})

chat and sharegpt become a Chat; instruction and prompt_completion a Pair; text a Text; the two
preference shapes a Preference; a reinforcement row a Prompt. What each trains on is decided in
render.py (a Prompt: service/training/reinforce.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHAT, SHAREGPT, INSTRUCTION, PROMPT_COMPLETION, TEXT = (
    "chat", "sharegpt", "instruction", "prompt_completion", "text")
PREFERENCE, CHOSEN_REJECTED = "preference", "chosen_rejected"
PREFERENCE_FORMATS = frozenset({PREFERENCE, CHOSEN_REJECTED})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}
# OpenAI joins a message's text parts; vLLM's chat path joins them with a newline, as we do.
PART_SEPARATOR = "\n"


class ExampleError(ValueError):
    pass


@dataclass
class Chat:
    messages: list[dict[str, Any]]  # role, content (a string), and weight / tool_calls / name
    tools: list[dict[str, Any]] | None = None

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(m["role"] == "tool" or m.get("tool_calls")
                                       for m in self.messages)


@dataclass
class Pair:
    prompt: str
    completion: str


@dataclass
class Text:
    text: str


@dataclass
class Preference:
    """A prompt and two answers, the first preferred. A Chat prompt (no final answer) is
    rendered with the chat template; a string prompt is raw text."""

    prompt: Chat | str
    chosen: str
    rejected: str


@dataclass
class Prompt:
    """A reinforcement example: the chat up to the question, and the row as the grader's item."""

    chat: Chat
    item: dict[str, Any]


Example = Chat | Pair | Text | Preference


def detect_format(obj: Any) -> str:
    """The format of one parsed line, by its keys; ExampleError if it fits none."""
    if not isinstance(obj, dict):
        raise ExampleError("each line must be a JSON object")
    keys = set(obj)
    if {"input", "preferred_output", "non_preferred_output"} <= keys:
        return PREFERENCE
    if {"prompt", "chosen", "rejected"} <= keys:
        return CHOSEN_REJECTED
    if "messages" in keys:
        return CHAT
    if "conversations" in keys:
        return SHAREGPT
    if {"instruction", "output"} <= keys:
        return INSTRUCTION
    if {"prompt", "completion"} <= keys:
        return PROMPT_COMPLETION
    if "text" in keys:
        return TEXT
    raise ExampleError(
        "unknown format: expected 'messages' (OpenAI chat), 'conversations' (ShareGPT), "
        "'instruction'+'output' (Alpaca), 'prompt'+'completion' or 'text'; for DPO, "
        "'input'+'preferred_output'+'non_preferred_output' or 'prompt'+'chosen'+'rejected'; "
        f"got keys {sorted(keys)[:8]}"
    )


def _string(obj: dict, key: str, *, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ExampleError(f"'{key}' must be a string")
    return value


def _content(value: Any, where: str, *, optional: bool) -> str:
    """A message's content: a string, or a list of text parts joined (OpenAI allows both)."""
    if value is None and optional:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ExampleError(f"{where}.content[{j}] is a {kind!r} part; only text parts "
                                   "({\"type\": \"text\", \"text\": ...}) can be trained on")
            if not isinstance(part.get("text"), str):
                raise ExampleError(f"{where}.content[{j}].text must be a string")
            texts.append(part["text"])
        return PART_SEPARATOR.join(texts)
    raise ExampleError(f"{where}.content must be a string or a non-empty list of text parts")


def _tool_calls(value: Any, where: str) -> list[dict]:
    """OpenAI's tool_calls, with `arguments` parsed: chat templates expect a mapping there."""
    if not isinstance(value, list) or not value:
        raise ExampleError(f"{where}.tool_calls must be a non-empty list")
    calls = []
    for j, call in enumerate(value):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ExampleError(f"{where}.tool_calls[{j}] needs function.name "
                               "({\"type\": \"function\", \"function\": {\"name\", \"arguments\"}})")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise ExampleError(f"{where}.tool_calls[{j}].function.arguments is not valid "
                                   "JSON") from None
        if not isinstance(args, dict):
            raise ExampleError(f"{where}.tool_calls[{j}].function.arguments must be a JSON object")
        entry: dict[str, Any] = {"type": "function",
                                 "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return calls


def _message(m: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ExampleError(f"{where} needs a role of system, user, assistant or tool")
    role = "system" if m["role"] == "developer" else m["role"]
    out: dict[str, Any] = {"role": role}
    calls = m.get("tool_calls")
    if calls is not None and role != "assistant":
        raise ExampleError(f"{where}: only assistant messages may have tool_calls")
    out["content"] = _content(m.get("content"), where, optional=calls is not None)
    if calls is not None:
        out["tool_calls"] = _tool_calls(calls, where)
    if "weight" in m:
        if role != "assistant":
            raise ExampleError(f"{where}: 'weight' applies to assistant messages only")
        if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
            raise ExampleError(f"{where}.weight must be 0 or 1, got {m['weight']!r}")
        out["weight"] = int(m["weight"])
    if "name" in m:
        if not isinstance(m["name"], str):
            raise ExampleError(f"{where}.name must be a string")
        out["name"] = m["name"]
    if role == "tool" and isinstance(m.get("tool_call_id"), str):
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _tools(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in value):
        raise ExampleError("'tools' must be a list of {\"type\": \"function\", \"function\": "
                           "{\"name\", \"description\", \"parameters\"}}")
    return value


def _chat(messages: Any, tools: Any, key: str) -> Chat:
    if not isinstance(messages, list) or not messages:
        raise ExampleError(f"'{key}' must be a non-empty list")
    chat = Chat([_message(m, i) for i, m in enumerate(messages)], _tools(tools))
    assistants = [m for m in chat.messages if m["role"] == "assistant"]
    if not assistants:
        raise ExampleError("a chat example needs at least one assistant message")
    if not any(m.get("weight", 1) for m in assistants):
        raise ExampleError("every assistant message has weight 0, so nothing would be trained")
    return chat


def parse_prompt(obj: Any) -> Prompt:
    """One reinforcement row (OpenAI's RFT format); ExampleError says what is wrong."""
    if not isinstance(obj, dict) or "messages" not in obj:
        raise ExampleError("a reinforcement example is {\"messages\": [the chat up to the question, "
                           "ending with the user's turn], plus the fields the grader reads}")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise ExampleError("'messages' must be a non-empty list")
    if obj.get("tools"):
        raise ExampleError("'tools' in a reinforcement example are not supported yet: the completions "
                           "are sampled and graded as text")
    chat = Chat([_message(m, i) for i, m in enumerate(messages)])
    if chat.messages[-1]["role"] != "user":
        raise ExampleError("a reinforcement example's messages end with the user's turn: training "
                           f"samples the answer, so the last message must not be {chat.messages[-1]['role']!r}")
    return Prompt(chat, obj)


def _sharegpt(turns: Any) -> Chat:
    if not isinstance(turns, list) or not turns:
        raise ExampleError("'conversations' must be a non-empty list")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("from") not in SHAREGPT_ROLES:
            raise ExampleError(f"conversations[{i}] needs 'from' of system, human or gpt")
        if not isinstance(t.get("value"), str):
            raise ExampleError(f"conversations[{i}].value must be a string")
        messages.append({"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]})
    return _chat(messages, None, "conversations")


def _prompt(messages: Any, tools: Any, key: str) -> Chat:
    """The conversation a preference pair answers: it must not end with an answer."""
    if not isinstance(messages, list) or not messages:
        raise ExampleError(f"'{key}' must be a non-empty list of messages")
    chat = Chat([_message(m, i) for i, m in enumerate(messages)], _tools(tools))
    if chat.messages[-1]["role"] == "assistant":
        raise ExampleError(f"'{key}' ends with an assistant message; the answers belong in the "
                           "preferred and non-preferred outputs")
    return chat


def _answer(value: Any, key: str) -> str:
    """One answer of a pair: a string, or a list holding one assistant message (OpenAI)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        m = value[0]
        if m.get("role") != "assistant":
            raise ExampleError(f"'{key}' must be one assistant message")
        if m.get("tool_calls"):
            raise ExampleError(f"'{key}': tool calls cannot be compared; give text answers")
        text = _content(m.get("content"), key, optional=False)
    else:
        raise ExampleError(f"'{key}' must be a string or a list with one assistant message")
    if not text.strip():
        raise ExampleError(f"'{key}' must not be empty")
    return text


def _preference(obj: dict, fmt: str) -> Preference:
    if fmt == PREFERENCE:
        source = obj["input"]
        if not isinstance(source, dict):
            raise ExampleError("'input' must be an object with 'messages'")
        prompt: Chat | str = _prompt(source.get("messages"), source.get("tools"), "input.messages")
        chosen = _answer(obj["preferred_output"], "preferred_output")
        rejected = _answer(obj["non_preferred_output"], "non_preferred_output")
    else:
        raw = obj["prompt"]
        prompt = raw if isinstance(raw, str) else _prompt(raw, obj.get("tools"), "prompt")
        if isinstance(prompt, str) and not prompt.strip():
            raise ExampleError("'prompt' must not be empty")
        chosen, rejected = _answer(obj["chosen"], "chosen"), _answer(obj["rejected"], "rejected")
    if chosen == rejected:
        raise ExampleError("the two answers are the same, so there is no preference to learn")
    return Preference(prompt, chosen, rejected)


def parse_example(obj: dict, fmt: str) -> Example:
    """Check one example of format `fmt` and normalise it; ExampleError says what is wrong."""
    if fmt in PREFERENCE_FORMATS:
        return _preference(obj, fmt)
    if fmt == CHAT:
        return _chat(obj["messages"], obj.get("tools"), "messages")
    if fmt == SHAREGPT:
        return _sharegpt(obj["conversations"])
    if fmt == INSTRUCTION:
        out = _string(obj, "output")
        if not out:
            raise ExampleError("'output' must not be empty")
        inp = _string(obj, "input", optional=True)
        extra = f"\n\n### Input:\n{inp}" if inp else ""
        return Pair(f"### Instruction:\n{_string(obj, 'instruction')}{extra}\n\n### Response:\n", out)
    if fmt == PROMPT_COMPLETION:
        completion = _string(obj, "completion")
        if not completion:
            raise ExampleError("'completion' must not be empty")
        return Pair(_string(obj, "prompt"), completion)
    text = _string(obj, "text")
    if not text.strip():
        raise ExampleError("'text' must not be empty")
    return Text(text)


def pieces(example: Example) -> list[str]:
    """The example's text, for estimating tokens when the tokenizer is not at hand."""
    if isinstance(example, Chat):
        return [m["content"] + (json.dumps(m["tool_calls"]) if m.get("tool_calls") else "")
                for m in example.messages]
    if isinstance(example, Pair):
        return [example.prompt, example.completion]
    if isinstance(example, Preference):
        prompt = example.prompt if isinstance(example.prompt, str) else "".join(pieces(example.prompt))
        return [prompt, prompt, example.chosen, example.rejected]  # two sequences share the prompt
    return [example.text]
