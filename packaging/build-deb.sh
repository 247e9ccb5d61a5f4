#!/usr/bin/env bash
# Builds the Debian package of private-worker with cargo-deb and prints the
# .deb's path on its last line.
#
#   packaging/build-deb.sh           release binary: the package you ship
#   packaging/build-deb.sh --debug   debug binary (stripped): what CI installs to
#                                    test the packaging, without a release build
#                                    (about 10 minutes on 2 cores)
#
# Needs cargo-deb (`cargo install cargo-deb --locked`) and help2man
# (`apt-get install -y --no-install-recommends help2man`), which renders the
# man page from `private-worker --help`.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
case "${1:-}" in
    "") ;;
    --debug) profile=dev ;;
    *) echo "usage: $0 [--debug]" >&2; exit 2 ;;
esac
if [ "$profile" = dev ]; then out_dir=debug; else out_dir=release; fi

if ! cargo deb --version >/dev/null 2>&1; then
    echo "error: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
    exit 1
fi
if ! command -v help2man >/dev/null 2>&1; then
    echo "error: help2man is missing; install it with: apt-get install -y --no-install-recommends help2man" >&2
    exit 1
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ "$profile" = dev ]; then
    # The same build as `cargo test --workspace` makes (features unified
    # across the workspace), so CI compiles the worker once.
    cargo build --workspace --bins --locked >&2
else
    cargo build -p private-worker --locked --release >&2
fi

mkdir -p "$target_dir/packaging"
help2man --no-info --section 1 \
    --name "the private worker: dials out over mTLS and runs locally allowed tasks" \
    "$target_dir/$out_dir/private-worker" | gzip -9n > "$target_dir/packaging/private-worker.1.gz"

# --no-build: the binary above is packaged as it is (stripped by cargo-deb);
# --fast: xz's fastest level, the package is built on every CI run.
cargo deb -p private-worker --no-build --profile "$profile" --fast \
    --output "$target_dir/debian/" >&2
ls -t "$target_dir"/debian/private-worker_*.deb | head -n 1
