#!/usr/bin/env bash
# Builds every plugin under plugins/ (and the test-only tests/hostile) as a
# WebAssembly component, checks each output is a component rather than a core
# module, and copies it next to its plugin.toml, where the host looks for it.
#
# Rust plugins (a Cargo.toml) build with cargo for wasm32-wasip2. Python plugins
# (an app.py) build with componentize-py, JavaScript plugins (a component.js) with
# componentize-js; both toolchains are pinned and installed here on first use:
# componentize-py into a venv under the target dir, componentize-js with `npm ci`
# in sdk/js (versions in sdk/js/package-lock.json).
set -euo pipefail

cd "$(dirname "$0")/.."

COMPONENTIZE_PY_VERSION=0.25.1

# Harmless when the target is already installed.
rustup target add wasm32-wasip2

target_dir="${CARGO_TARGET_DIR:-target}"

# A component starts with `\0asm` then version 0x0d and layer 0x01; installs `$1`
# as `$2` only when it is one.
install_component() {
    local header
    header="$(od -An -tx1 -N8 "$1" | tr -d ' \n')"
    if [ "$header" != "0061736d0d000100" ]; then
        echo "casework: $1 is not a WebAssembly component (header $header)" >&2
        exit 1
    fi
    cp "$1" "$2.tmp" && mv "$2.tmp" "$2"
    echo "built $2"
}

rust_dirs=()
py_dirs=()
js_dirs=()
for dir in plugins/*/; do
    if [ -f "$dir/Cargo.toml" ]; then
        rust_dirs+=("$dir")
    elif [ -f "$dir/app.py" ]; then
        py_dirs+=("$dir")
    elif [ -f "$dir/component.js" ]; then
        js_dirs+=("$dir")
    fi
done
rust_dirs+=(tests/hostile/)

packages=()
for dir in "${rust_dirs[@]}"; do
    packages+=(-p "$(basename "$dir")")
done
cargo build --release --target wasm32-wasip2 "${packages[@]}"
for dir in "${rust_dirs[@]}"; do
    dir="${dir%/}"
    name="$(basename "$dir")"
    install_component "$target_dir/wasm32-wasip2/release/$name.wasm" "$dir/$name.wasm"
done

if [ "${#py_dirs[@]}" -gt 0 ]; then
    venv="$target_dir/componentize-py-$COMPONENTIZE_PY_VERSION"
    if [ ! -x "$venv/bin/componentize-py" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
    for dir in "${py_dirs[@]}"; do
        dir="${dir%/}"
        name="$(basename "$dir")"
        out="$target_dir/polyglot/$name.wasm"
        mkdir -p "$(dirname "$out")"
        "$venv/bin/componentize-py" --wit-path sdk/wit --world integration \
            componentize --python-path "$dir" --python-path sdk/python app --output "$out" >/dev/null
        install_component "$out" "$dir/$name.wasm"
    done
fi

if [ "${#js_dirs[@]}" -gt 0 ]; then
    # `npm ci` again only when the lockfile changed since the last install.
    if ! cmp -s sdk/js/package-lock.json sdk/js/node_modules/.casework-lock 2>/dev/null; then
        (cd sdk/js && npm ci --no-audit --no-fund --loglevel=error)
        cp sdk/js/package-lock.json sdk/js/node_modules/.casework-lock
    fi
    for dir in "${js_dirs[@]}"; do
        dir="${dir%/}"
        name="$(basename "$dir")"
        out="$target_dir/polyglot/$name.wasm"
        mkdir -p "$(dirname "$out")"
        node sdk/js/build.mjs "$dir/component.js" "$out"
        install_component "$out" "$dir/$name.wasm"
    done
fi
