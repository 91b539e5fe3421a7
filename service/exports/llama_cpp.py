"""llama.cpp itself, for what an export needs from it: the quantizer, and the GGUF's tokenizer
and greedy answers for the checks. `tunedock-llama` (native/tunedock_llama.c) is built by
`make llama-cpp` from the llama.cpp that PyPI's llama-cpp-python sdist vendors (pinned in
native/build.sh), into the virtual environment's bin/; TUNEDOCK_LLAMA_CPP_BIN points elsewhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType

FTYPES = {"Q4_K_M": 15}  # llama.h: enum llama_ftype


def binary() -> str:
    """The tunedock-llama command; ExportError when it is not installed."""
    from service.exports import ExportError
    from service.settings import load_settings

    configured = load_settings().llama_cpp_bin
    if configured:
        if Path(configured).is_file():
            return configured
        raise ExportError("export_tool_missing", f"TUNEDOCK_LLAMA_CPP_BIN names {configured!r}, "
                          "which is not a file on this runner")
    here = Path(sys.prefix) / "bin" / "tunedock-llama"
    if found := (str(here) if here.is_file() else shutil.which("tunedock-llama")):
        return found
    raise ExportError("export_tool_missing", "llama.cpp's tools are not installed on this runner "
                      "(run `make llama-cpp`, or set TUNEDOCK_LLAMA_CPP_BIN); GGUF exports need "
                      "them")


def quantize(src: Path, out: Path, ftype: str) -> None:
    from service.exports import ExportError

    done = subprocess.run([binary(), "quantize", str(src), str(out), str(FTYPES[ftype])],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError("export_failed", f"llama.cpp's quantizer failed: {done.stderr[-500:]}")


class Model:
    """A GGUF loaded by llama.cpp in a helper process: tokenize, eos, greedy generate."""

    def __init__(self, path: Path, vocab_only: bool = False) -> None:
        self.path, self.vocab_only = path, vocab_only
        self._tokenizer: subprocess.Popen[str] | None = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._tokenizer is not None:
            self._tokenizer.stdin.close()  # type: ignore[union-attr]
            self._tokenizer.wait(30)

    def tokenize(self, text: str) -> list[int]:
        """Token ids as llama.cpp splits `text` (special tokens parsed, no BOS added)."""
        if self._tokenizer is None:
            self._tokenizer = subprocess.Popen([binary(), "tokenize", str(self.path)], text=True,
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._tokenizer.stdin and self._tokenizer.stdout
        self._tokenizer.stdin.write(text.encode().hex() + "\n")
        self._tokenizer.stdin.flush()
        line = self._tokenizer.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp could not tokenize with {self.path}")
        return [int(t) for t in line.split()]

    def eos(self) -> int:
        done = subprocess.run([binary(), "eos", str(self.path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"llama.cpp could not load {self.path}: {done.stderr[-300:]}")
        return int(done.stdout)

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy continuations of each prompt (token ids), up to an end-of-generation token."""
        done = subprocess.run([binary(), "generate", str(self.path), str(max_tokens)],
                              input="".join(" ".join(map(str, p)) + "\n" for p in prompts),
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"llama.cpp could not generate with {self.path}: {done.stderr[-300:]}")
        return [[int(t) for t in line.split()] for line in done.stdout.splitlines()]
