#!/usr/bin/env bash
# Builds every plugin under plugins/ as a WebAssembly component
# (target/wasm32-wasip2/release/<name>.wasm in the workspace target dir) and
# checks each output is a component, not a core module.
set -euo pipefail

cd "$(dirname "$0")/.."

# Harmless when the target is already installed.
rustup target add wasm32-wasip2

packages=()
for manifest in plugins/*/Cargo.toml; do
    packages+=(-p "$(basename "$(dirname "$manifest")")")
done

cargo build --release --target wasm32-wasip2 "${packages[@]}"

target_dir="${CARGO_TARGET_DIR:-target}"
for manifest in plugins/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    wasm="$target_dir/wasm32-wasip2/release/$name.wasm"
    # A component starts with `\0asm` then version 0x0d and layer 0x01.
    header="$(od -An -tx1 -N8 "$wasm" | tr -d ' \n')"
    if [ "$header" != "0061736d0d000100" ]; then
        echo "casework: $wasm is not a WebAssembly component (header $header)" >&2
        exit 1
    fi
    echo "built $wasm (manifest plugins/$name/plugin.toml)"
done
