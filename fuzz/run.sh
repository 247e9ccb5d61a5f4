#!/usr/bin/env bash
# Builds the fuzz targets and runs each one for SECONDS (default 10), one
# after the other; exits non-zero if any target finds a crash (a panic,
# a broken property, a sanitizer report, an input over 25 s, or over 2 GiB).
#
#   fuzz/run.sh            # 10 s per target
#   fuzz/run.sh 600        # a longer run: 10 min per target
#   fuzz/run.sh 60 canonical_json template_render   # only these targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). On a stable
# toolchain it sets RUSTC_BOOTSTRAP=1, which lets stable rustc take the
# nightly-only flags cargo-fuzz passes (sanitizers, coverage).
#
# Corpora: the committed seeds are in fuzz/corpus/<target>/ and are only
# read. What libFuzzer finds is written to fuzz/corpus-work/<target>/
# (gitignored), so later runs on this machine start from it and the tree
# stays clean. Crashes land in fuzz/artifacts/<target>/ (gitignored); rerun
# one with `cargo fuzz run <target> <file>` from fuzz/.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-10}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets"
start=$(date +%s)
cargo fuzz build
echo "   built in $(( $(date +%s) - start )) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus-work/$target" "corpus/$target"
    dict=()
    case "$target" in
        canonical_json | input_validation | template_render | audit_record)
            dict=("-dict=dict/json.dict") ;;
    esac
    echo "== $target: ${seconds} s"
    rc=0
    cargo fuzz run "$target" "corpus-work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" >"$logs/$target" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target" | tail -n1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$logs/$target" | tail -n1)
    corpus=$(find "corpus-work/$target" -type f | wc -l)
    rate="?"
    if [ -n "$runs" ] && [ -n "$took" ] && [ "$took" -gt 0 ]; then
        rate=$(( runs / took ))
    fi
    if [ "$rc" -ne 0 ]; then
        failed+=("$target")
        echo "!! $target failed (exit $rc); the end of its log:"
        tail -n 60 "$logs/$target"
        summary+=("$(printf '%-18s FAILED (exit %s)' "$target" "$rc")")
    else
        summary+=("$(printf '%-18s %12s execs  %8s/s  %6s corpus files' "$target" "${runs:-?}" "$rate" "$corpus")")
    fi
done

echo "== fuzz summary (${seconds} s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashes or errors in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
