"""An Ollama Modelfile for an exported GGUF: the base model's chat template, as Ollama's Go
template, and its stop tokens.

A Jinja chat template cannot be translated in general, but most chat models wrap each message
in a fixed prefix and suffix per role (ChatML, Llama 3, Zephyr, Phi-3, …). We learn those
wrappers by rendering the base's own template around marker strings, write the Go template that
applies them, and check it: the wrappers must reproduce the Jinja rendering of conversations
they were not learned from (`matches`). A template that is not of this shape gets a Modelfile
without TEMPLATE (Ollama then guesses from the GGUF's embedded template), and the export says so.
tests/e2e/test_exports.py renders the Go template with Go's own text/template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text
ROLES = ("system", "user", "assistant")
_MARK = "\x00TDMARK{}\x00"

# Conversations the learned wrappers are checked against (not the ones they were learned from).
CHECK_CHATS = (
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another?"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "Thanks\nbye"}],
)


@dataclass(frozen=True)
class Wrappers:
    prefix: dict[str, str]  # role -> text before the content
    suffix: dict[str, str]  # role -> text after it
    generation: str  # what add_generation_prompt appends
    default_system: str | None  # the system message the template adds when there is none
    start: str  # text before the first message (a BOS the template writes itself)

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        """What the Go template renders, in Python (the export's own check)."""
        out = self.start
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        for msg in messages:
            out += self.prefix[msg["role"]] + msg["content"] + self.suffix[msg["role"]]
        return out + (self.generation if generation_prompt else "")


def learn(render: Render) -> Wrappers | None:
    """The per-role wrappers of `render`'s template, or None if it is not of that shape.

    With contents S, U, A, U2 as markers, the template renders P0 S G1 U G2 A G3 U2 G4; alone,
    [U] renders H U G4 and [U, A] renders H U G2 A T. Then: user suffix G4, assistant prefix
    G2 - G4, assistant suffix T, user prefix G3 - T, system suffix G1 - user prefix; H less
    the user prefix is what the template writes before a conversation without a system
    message: nothing, a fixed start (a BOS), or a default system message."""
    try:
        s, u, a, u2 = (_MARK.format(i) for i in range(4))
        full = render([{"role": "system", "content": s}, {"role": "user", "content": u},
                       {"role": "assistant", "content": a}, {"role": "user", "content": u2}], False)
        with_gen = render([{"role": "system", "content": s}, {"role": "user", "content": u},
                           {"role": "assistant", "content": a}, {"role": "user", "content": u2}], True)
        pieces = _split(full, [s, u, a, u2])
        alone = _split(render([{"role": "user", "content": u}], False), [u])
        pair = _split(render([{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                             False), [u, a])
        if pieces is None or alone is None or pair is None or not with_gen.startswith(full):
            return None
        p0, g1, g2, g3, g4 = pieces
        h, t = alone[0], pair[2]
        user_suffix, asst_suffix = g4, t
        if not (g2.startswith(user_suffix) and g3.startswith(asst_suffix)):
            return None
        asst_prefix, user_prefix = g2[len(user_suffix):], g3[len(asst_suffix):]
        if not (g1.endswith(user_prefix) and h.endswith(user_prefix)):
            return None
        sys_suffix = g1[:len(g1) - len(user_prefix)]
        head = h[:len(h) - len(user_prefix)]
        start, sys_prefix, default_system = "", p0, None
        if head and head.startswith(p0) and sys_suffix and head.endswith(sys_suffix) \
                and len(head) >= len(p0) + len(sys_suffix):
            # A default system message: SYSTEM in the Modelfile, so a system message always
            # comes first and where the start ends and the system prefix begins does not matter.
            default_system = head[len(p0):len(head) - len(sys_suffix)]
        elif head:
            if not p0.startswith(head):
                return None
            start, sys_prefix = head, p0[len(head):]
        wrappers = Wrappers(
            prefix={"system": sys_prefix, "user": user_prefix, "assistant": asst_prefix},
            suffix={"system": sys_suffix, "user": user_suffix, "assistant": asst_suffix},
            generation=with_gen[len(full):], default_system=default_system, start=start)
    except Exception:  # noqa: BLE001 - a template that raises on our probes is not of this shape
        return None
    return wrappers if matches(wrappers, render) else None


def _split(text: str, marks: list[str]) -> list[str] | None:
    """The text between the marks (each exactly once, in order), or None."""
    out, rest = [], text
    for mark in marks:
        if rest.count(mark) != 1:
            return None
        head, rest = rest.split(mark)
        out.append(head)
    return [*out, rest]


def matches(w: Wrappers, render: Render) -> bool:
    return all(w.render(list(c), g) == render(list(c), g) for c in CHECK_CHATS for g in (False, True))


def _go_text(text: str) -> str:
    """Literal text inside a Go template: `{{` must not start an action."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(w: Wrappers) -> str:
    """Ollama's TEMPLATE: `.Messages` holds the conversation (the Modelfile's SYSTEM, if any,
    comes first as a system message); the last assistant turn is left open for the model."""
    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
        f"{_go_text(w.prefix[role])}{{{{ .Content }}}}{_go_text(w.suffix[role])}"
        for i, role in enumerate(ROLES))
    return (f"{_go_text(w.start)}{{{{- range .Messages }}}}{branches}{{{{ end }}}}{{{{- end }}}}"
            f"{_go_text(w.generation)}")


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def modelfile(gguf_name: str, model: str, wrappers: Wrappers | None, stops: list[str]) -> str:
    lines = [f"# {model}, exported by tunedock", f"FROM ./{gguf_name}"]
    if wrappers is not None:
        body = go_template(wrappers)
        if '"""' in body + (wrappers.default_system or ""):  # cannot be quoted in a Modelfile
            wrappers = None
        else:
            lines.append(f'TEMPLATE """{body}"""')
            if wrappers.default_system is not None:
                lines.append(f'SYSTEM """{wrappers.default_system}"""')
    if wrappers is None:
        lines.append("# The chat template is not a fixed wrapper per role: Ollama reads the one in "
                     "the GGUF.")
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stops]
    return "\n".join(lines) + "\n"
