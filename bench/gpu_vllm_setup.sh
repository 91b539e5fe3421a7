#!/usr/bin/env bash
# On the lent GPU machine: put vLLM 0.26.0 (../shared/tools/vllm-bundle.sh's pieces) into /tmp/site.
#   bench/gpu_vllm_setup.sh K       copy piece K (carried as .vllm/pK) to /tmp/stash
#   bench/gpu_vllm_setup.sh install  reassemble the pieces and install them (plus .whl/*.whl if carried)
# Then: export PYTHONPATH=/tmp/site:$PWD. Pieces stay in /tmp only while the machine is warm
# (30 s after a call), so the calls go back to back.
set -euo pipefail
mkdir -p /tmp/stash
if [ "$1" != install ]; then cp ".vllm/p$1/part" "/tmp/stash/part.$1"; ls -la /tmp/stash; exit 0; fi
[ -d /tmp/site/vllm ] && { echo "vLLM already in /tmp/site"; exit 0; }
cd /tmp/stash
cat $(ls /tmp/stash/part.* | sort -t. -k2 -n) | tar -x -C /tmp/stash
cd "$OLDPWD"
extra=$(ls .whl/*.whl 2>/dev/null || true)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/stash/w/*.whl $extra
PYTHONPATH=/tmp/site python3 -c "import vllm; print('vllm', vllm.__version__)"
