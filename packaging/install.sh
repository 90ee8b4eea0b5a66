#!/usr/bin/env bash
# Create .venv with Python >= 3.12 and install Spyglass from pinned constraints.
#   packaging/install.sh          app only
#   packaging/install.sh --dev    app + test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[[ "${1:-}" == "--dev" ]] && extra="[dev]"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    # pyenv machines keep 3.12 beside the default interpreter.
    if command -v pyenv >/dev/null 2>&1 && pyenv versions --bare 2>/dev/null | grep -qx '3.12.1'; then
        export PYENV_VERSION=3.12.1
    fi
    for candidate in python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            py="$candidate"
            break
        fi
    done
fi
if [[ -z "$py" ]]; then
    echo "spyglass: needs Python >= 3.12 (set PYTHON=/path/to/python3.12)" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c packaging/constraints.txt -e ".${extra}"
