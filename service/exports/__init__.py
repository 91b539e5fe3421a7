"""Exports: a job's adapter (or an epoch checkpoint's) made into a standalone model, in an export
child the runner starts (`python -m service.exports SPEC`).

build.py: one export from its spec (merge into the 16-bit base, then the format's own work, then
the checks), uploaded. gguf.py: GGUF conversion and its checks; llama_cpp.py: llama.cpp's tools;
modelfile.py: Ollama's Modelfile from the chat template. The API side is here too: routes.py (the
HTTP routes), service.py (what may be exported, the file's bytes), store.py (all of the export
rows' SQL, their leases) and rows.py (the table); the child imports none of those.
"""

from __future__ import annotations


class ExportError(Exception):
    """An export that cannot be made, or failed a check: the code and message reach the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
