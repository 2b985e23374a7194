#!/usr/bin/env bash
# Builds every plugin under plugins/ (and the test-only tests/hostile) as a
# WebAssembly component, checks each output is a component rather than a core
# module, and copies it next to its plugin.toml, where the host looks for it.
set -euo pipefail

cd "$(dirname "$0")/.."

# Harmless when the target is already installed.
rustup target add wasm32-wasip2

dirs=(plugins/*/ tests/hostile/)
packages=()
for dir in "${dirs[@]}"; do
    packages+=(-p "$(basename "$dir")")
done

cargo build --release --target wasm32-wasip2 "${packages[@]}"

target_dir="${CARGO_TARGET_DIR:-target}"
for dir in "${dirs[@]}"; do
    dir="${dir%/}"
    name="$(basename "$dir")"
    wasm="$target_dir/wasm32-wasip2/release/$name.wasm"
    # A component starts with `\0asm` then version 0x0d and layer 0x01.
    header="$(od -An -tx1 -N8 "$wasm" | tr -d ' \n')"
    if [ "$header" != "0061736d0d000100" ]; then
        echo "casework: $wasm is not a WebAssembly component (header $header)" >&2
        exit 1
    fi
    cp "$wasm" "$dir/$name.wasm.tmp" && mv "$dir/$name.wasm.tmp" "$dir/$name.wasm"
    echo "built $dir/$name.wasm"
done
