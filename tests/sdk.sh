#!/usr/bin/env bash
# The Python and JavaScript SDKs and example plugins against their fake hosts (no
# WebAssembly needed; run `bash plugins/build.sh` first: it installs sdk/js's pinned packages).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m unittest discover -s sdk/python/tests
python3 -m unittest discover -s plugins/py_tickets/tests
node --test sdk/js/test/ plugins/js_tickets/test/
