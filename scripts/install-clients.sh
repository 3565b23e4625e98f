#!/usr/bin/env bash
# Installs the third-party clients the bridge is tested against that cannot live in the project's
# venv, under .tools/ (gitignored). The tests that need them skip, saying so, when they are absent.
#   aider-chat   its own venv (.tools/aider): it pins ~80 packages (numpy 1.26, openai 2.x,
#                pydantic, fastapi...) that would downgrade the project's. ~90 s, ~690 MB.
#   pi           npm @mariozechner/pi-coding-agent under .tools/pi (needs node >= 20). ~45 s, ~200 MB.
# openai, litellm and langchain-openai are in the dev extra and install with `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
AIDER="aider-chat==0.86.2"
PI="@mariozechner/pi-coding-agent@0.73.1"

if [[ ! -x .tools/aider/bin/aider ]]; then
    echo "installing $AIDER into .tools/aider" >&2
    python3 -m venv .tools/aider
    .tools/aider/bin/pip install -q "$AIDER"
fi
if [[ ! -x .tools/pi/node_modules/.bin/pi ]]; then
    if command -v npm >/dev/null 2>&1; then
        echo "installing $PI into .tools/pi" >&2
        mkdir -p .tools/pi
        npm install --prefix .tools/pi --no-audit --no-fund --loglevel=error "$PI"
    else
        echo "npm is missing: pi is not installed (apt-get install nodejs npm, node >= 20)" >&2
    fi
fi
