#!/usr/bin/env bash
# Build the libFuzzer target fuzz/fuzz_open with AddressSanitizer and
# UndefinedBehaviorSanitizer, from the same C sources the Python module uses
# (the SOURCES list of csrc/build_ffi.py).  Needs clang with the fuzzer
# runtime (Debian/Ubuntu: apt-get install clang libclang-rt-14-dev, or the
# libclang-rt-dev of your clang version).
#   fuzz/build.sh            -> fuzz/fuzz_open
#   CC=clang-15 fuzz/build.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
CC="${CC:-clang}"
sources=$(python3 - "$root/csrc/build_ffi.py" <<'PY'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SOURCES":
        print(" ".join(ast.literal_eval(node.value)))
PY
)
[ -n "$sources" ] || { echo "build.sh: no SOURCES in csrc/build_ffi.py" >&2; exit 1; }
srcs=()
for s in $sources; do srcs+=("$root/csrc/$s"); done
set -x
"$CC" -g -O1 -std=gnu11 -D_GNU_SOURCE -fno-omit-frame-pointer -Wall -Wextra \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root/csrc" "${srcs[@]}" "$here/fuzz_open.c" -lpthread -o "$here/fuzz_open"
