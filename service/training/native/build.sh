#!/usr/bin/env bash
# Builds tunedock-llama (tunedock_llama.c) against llama.cpp, for GGUF exports:
#   build.sh PYTHON OUT_BINARY
# llama.cpp's source comes from PyPI: llama-cpp-python's sdist vendors it whole (converter,
# gguf-py and C++), pinned here by version and hash. PyPI has no llama.cpp binary that loads on
# Debian 12's glibc and libstdc++ (llama-cpp-py-sync needs glibc 2.38, llama-cpp-cffi GCC 14's
# runtime), and llama-cpp-python's own build compiles far more than an export uses (~15 min on
# two cores); this builds libllama and ggml only (~3-5 min), statically, into one binary.
set -euo pipefail
PYTHON=$1
OUT=$2
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "llama-cpp-python==$VERSION --hash=sha256:$SHA256" > "$WORK/req.txt"
"$PYTHON" -m pip download -q --no-deps --no-binary=:all: --require-hashes -r "$WORK/req.txt" -d "$WORK"
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE="${GGML_NATIVE:-ON}" -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_OPENSSL=OFF > "$WORK/cmake.log" || { cat "$WORK/cmake.log"; exit 1; }
cmake --build "$WORK/build" -j "$(nproc)" --target llama > "$WORK/build.log" || { tail -50 "$WORK/build.log"; exit 1; }
B="$WORK/build"
mkdir -p "$(dirname "$OUT")"
g++ -O2 -x c "$HERE/tunedock_llama.c" -x none -I"$SRC/include" -I"$SRC/ggml/include" \
  "$B/src/libllama.a" "$B/ggml/src/libggml.a" "$B/ggml/src/libggml-cpu.a" "$B/ggml/src/libggml-base.a" \
  -fopenmp -lpthread -lm -o "$OUT.part"
mv "$OUT.part" "$OUT"
echo "built $OUT from llama.cpp $(cd "$SRC" && git rev-parse --short HEAD 2>/dev/null || echo "of llama-cpp-python $VERSION")"
