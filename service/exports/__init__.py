"""Exports: a job's adapter (or an epoch checkpoint's) made into a standalone model, in an export
child the runner starts (`python -m service.training --export SPEC`).

build.py: one export from its spec (merge into the 16-bit base, then the format's own work, then
the checks), uploaded. gguf.py: GGUF conversion and its checks; llama_cpp.py: llama.cpp's tools;
modelfile.py: Ollama's Modelfile from the chat template. The API side (requests, the export rows
and their leases) is service/jobs/exports.py and store_exports.py.
"""

from __future__ import annotations


class ExportError(Exception):
    """An export that cannot be made, or failed a check: the code and message reach the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
