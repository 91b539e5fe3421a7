#!/usr/bin/env bash
# The Debian packages the tests need, installed when missing (`make test` runs this first, so the
# README's two commands work on a brand-new machine; .ci/run only calls `make test`):
#   postgresql         the Postgres tests (the fixture starts its own cluster on loopback)
#   chromium           the dashboard's browser tests (Playwright drives it; its own download cannot work here)
#   cmake g++ make     llama.cpp for the GGUF exports (service/training/native/)
#   golang-go          renders the Ollama Modelfile's template in its test (Ollama's templates are Go's)
#   wordnet-base       WordNet 3.0 for METEOR's synonym stage (TUNEDOCK_WORDNET_DIR), nltk's download being unreachable
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
