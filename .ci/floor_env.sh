#!/usr/bin/env bash
# The declared dependency floor, tested: a second environment with the lowest transformers that
# pyproject.toml allows, running the scorer's invariant tests (they need torch + transformers only,
# so the shared conftest, which needs the database stack, is not loaded).
#
#   .ci/floor_env.sh                 # env in ${FLOOR_ENV:-/tmp/tracker-floor-env}, reused when it exists
#   FLOOR_TRANSFORMERS=5.17.0 FLOOR_TORCH=2.13.0 .ci/floor_env.sh   # other versions than the declared floor
set -euo pipefail
cd "$(dirname "$0")/.."

floor=${FLOOR_TRANSFORMERS:-$(sed -n 's/.*"transformers>=\([0-9][0-9.]*\)[,"].*/\1/p' pyproject.toml | head -1)}
if [ -z "$floor" ]; then
  echo "cannot read the transformers floor from pyproject.toml" >&2
  exit 1
fi
# CPU machines install torch from local disk; a bare torch requirement pulls a multi-GB CUDA build.
torch_version=${FLOOR_TORCH:-2.13.0}
env_dir=${FLOOR_ENV:-/tmp/tracker-floor-env}
python=${PYTHON:-python3}

if [ ! -x "$env_dir/bin/python" ] || ! "$env_dir/bin/python" -c "import accelerate, transformers, sys; from packaging.version import Version; sys.exit(Version(transformers.__version__) != Version('$floor'))" 2>/dev/null; then
  rm -rf "$env_dir"
  "$python" -m venv "$env_dir"
  "$env_dir/bin/pip" install -q "torch==$torch_version"
  "$env_dir/bin/pip" install -q "transformers==$floor" accelerate pytest safetensors tokenizers numpy filelock pyyaml
fi
"$env_dir/bin/python" -c "import torch, transformers; print(f'floor env: torch {torch.__version__}, transformers {transformers.__version__}')"

OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$PWD" "$env_dir/bin/python" -m pytest -q --noconftest -p no:cacheprovider \
  tests/unit/test_scoring_decoder.py tests/unit/test_scoring_rotary.py tests/unit/test_scoring_masks.py \
  tests/unit/test_scoring_selfcheck.py tests/unit/test_scoring_memory.py tests/unit/test_scoring_encdec.py \
  tests/unit/test_scoring_backend.py
