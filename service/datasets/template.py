"""A base model's chat template and tokenizer, behind the two calls the renderer needs.

Two implementations with the same results: `HFTokens` wraps the transformers tokenizer the
training child loads; `LocalTokens` reads the same files (tokenizer.json, the template, the special
tokens) with `tokenizers` and jinja2 only, so the API can validate and preview data exactly as it
will be trained without importing transformers. tests/unit/test_formats.py checks they agree.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

# For tokenizers that ship no chat template (base models). It renders no tools.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")

# A conversation that uses every tool feature; a template supports tools when all three marks
# come out in its rendering (most templates without tool support silently drop them).
_PROBE_TOOL = "tunedock_probe_lookup"
_PROBE_DESCRIPTION = "tunedock-probe-description"
_PROBE_RESULT = "tunedock-probe-result"
PROBE_TOOLS = [{"type": "function", "function": {
    "name": _PROBE_TOOL, "description": _PROBE_DESCRIPTION,
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
PROBE_MESSAGES = [
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "call_1", "function": {"name": _PROBE_TOOL, "arguments": {"q": "x"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": _PROBE_RESULT},
]


class TemplateTokens(Protocol):
    eos_token: str

    def render(self, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    @property
    def supports_tools(self) -> bool: ...


def _probe(tokens: TemplateTokens) -> bool:
    try:
        text = tokens.render(PROBE_MESSAGES, PROBE_TOOLS, False)
    except Exception:  # noqa: BLE001 - a template that raises on tools does not support them
        return False
    return all(mark in text for mark in (_PROBE_TOOL, _PROBE_DESCRIPTION, _PROBE_RESULT))


class HFTokens:
    """A transformers tokenizer (the training child's)."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = FALLBACK_TEMPLATE
        self.tok = tokenizer
        self.eos_token = tokenizer.eos_token or ""

    def render(self, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                            add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @cached_property
    def supports_tools(self) -> bool:
        return _probe(self)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<|im_end|>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


class LocalTokens:
    """The same tokenizer and template read from a model folder with `tokenizers` and jinja2."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: transformers uses "default"
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        jinja_file = model_dir / "chat_template.jinja"
        if jinja_file.is_file():
            template = jinja_file.read_text()
        self.specials = {k: v for k in SPECIAL_TOKENS if (v := _token_text(config.get(k))) is not None}
        self.eos_token = self.specials.get("eos_token", "")
        self.template = _compile(template or FALLBACK_TEMPLATE)

    def render(self, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
        return self.template.render(messages=messages, tools=tools, documents=None,
                                    add_generation_prompt=generation_prompt, **self.specials)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens included (the preview shows them)."""
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @cached_property
    def supports_tools(self) -> bool:
        return _probe(self)


def local_tokens(model_dir: Path | None) -> LocalTokens | None:
    """LocalTokens for a base model folder that has tokenizer.json; None otherwise (estimate)."""
    if model_dir is None or not (model_dir / "tokenizer.json").is_file():
        return None
    return LocalTokens(model_dir)


def _compile(source: str) -> Any:
    """The environment transformers renders chat templates in (chat_template_utils.py)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    class Generation(jinja2.ext.Extension):
        """Accepts {% generation %} blocks (assistant masks) and renders their body as is."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
