#!/usr/bin/env bash
# Installs the system packages studio-coder needs when they are missing.
#   Debian/Ubuntu: chromium (visual QA), openssh-server (tunnel tests), libopenblas0-pthread
#                  (MLX on the CPU is ~2.5x faster with OpenBLAS preloaded), bubblewrap (the
#                  sandbox every command from the coder's side runs in; without it runs are
#                  refused unless agent-node.toml says [sandbox] enabled = false), gcc (builds
#                  the gemv forwarder preloaded ahead of OpenBLAS; decode is 2x slower without).
#   macOS:         brew install --cask chromium   (openssh, Accelerate and sandbox-exec ship
#                  with the OS)
set -euo pipefail

if [[ "$(uname -s)" == "Darwin" ]]; then
    if ! ls /Applications/Chromium.app >/dev/null 2>&1 && ! ls "/Applications/Google Chrome.app" >/dev/null 2>&1; then
        echo "visual QA needs a Chromium: run 'brew install --cask chromium'" >&2
    fi
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "not Debian/Ubuntu: install chromium, openssh-server, OpenBLAS and bubblewrap with your package manager" >&2
    exit 0
fi

missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
dpkg -s libopenblas0-pthread >/dev/null 2>&1 || missing+=(libopenblas0-pthread)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
# builds inference_node/gemv_forward.c, which doubles MLX's decode on OpenBLAS (blas.py)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)

if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "installing system packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
