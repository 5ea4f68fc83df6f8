#!/usr/bin/env bash
# Every extra, and the documented installs of onnx2torch / timm / torchvision, keep the torch a
# user already has: a fresh venv holding torch==2.13.0 (the CPU build), `pip list` before and
# after each install, and a failure if torch (or anything torch-named) changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" list --format=freeze | sort > "$venv/before.txt"
torch_line() { grep -i -E '^torch==' "$1"; }
check() {  # $1: what was installed; fails if torch moved
    "$venv/bin/pip" list --format=freeze | sort > "$venv/after.txt"
    echo "== $1: new or changed packages:"
    comm -13 "$venv/before.txt" "$venv/after.txt" | sed 's/^/   /'
    if [ "$(torch_line "$venv/before.txt")" != "$(torch_line "$venv/after.txt")" ]; then
        echo "FAIL: $1 moved torch: $(torch_line "$venv/before.txt") -> $(torch_line "$venv/after.txt")"
        exit 1
    fi
    echo "   torch kept: $(torch_line "$venv/after.txt")"
}
pinned="torch==$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
for extra in onnx timm dev; do
    "$venv/bin/pip" install -q -e ".[$extra]"
    check "pip install -e '.[$extra]'"
done
"$venv/bin/pip" install -q --no-deps onnx2torch
check "pip install --no-deps onnx2torch"
"$venv/bin/pip" install -q --no-deps timm
check "pip install --no-deps timm"
"$venv/bin/pip" install -q torchvision "$pinned"
check "pip install torchvision '$pinned'"
echo "every extra kept $(torch_line "$venv/before.txt")"
rm -rf "$(dirname "$venv")"
