"""Checks the contract's test vectors (proto/testvectors/) in Python, with
the `rfc8785` package and hashlib, independently of the Rust code:

- canonical_json.json: [{name, input (JSON text), canonical (expected text)}]
- audit_records.json: [{name, record (record form, with record_hash),
  canonical_without_hash (text), record_hash}]
- audit_chain_valid.jsonl: a log that verifies
- audit_chain_broken.jsonl + audit_chain_broken.json: {first_bad_index, problem}

    python3 tests/python_worker/check_vectors.py [VECTORS_DIR]

Prints one line per case and exits non-zero on any mismatch.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import audit
except ImportError as e:
    raise SystemExit(f"{e}: python3 -m pip install -r tests/python_worker/requirements.txt")


def main(directory: str) -> int:
    failures = []

    def check(name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f"\n     {detail}"))
        if not ok:
            failures.append(name)

    def load(name):
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            return f.read()

    for case in json.loads(load("canonical_json.json")):
        got = audit.canonical_text(case["input"]).decode("utf-8")
        check(f"canonical JSON: {case['name']}", got == case["canonical"],
              f"expected {case['canonical']!r}\n     got      {got!r}")

    for case in json.loads(load("audit_records.json")):
        record = case["record"]
        problem = audit.form_problem(record)
        check(f"record form: {case['name']}", problem is None, problem)
        without = {k: v for k, v in record.items() if k != "record_hash"}
        text = audit.canonical(without).decode("utf-8")
        check(f"canonical record without record_hash: {case['name']}", text == case["canonical_without_hash"],
              f"expected {case['canonical_without_hash']!r}\n     got      {text!r}")
        computed = audit.record_hash(record)
        check(f"record_hash: {case['name']}", computed == case["record_hash"] == record["record_hash"],
              f"vector {case['record_hash']}, record {record['record_hash']}, computed {computed}")

    valid = load("audit_chain_valid.jsonl")
    lines = valid.splitlines()
    count, problem = audit.verify_lines(lines)
    check(f"valid chain ({len(lines)} records) verifies", problem is None and count == len(lines) > 0,
          f"line index {count}: {problem}")
    check("valid chain: every line ends with a newline", valid.endswith("\n"))

    expected = json.loads(load("audit_chain_broken.json"))
    index, problem = audit.verify_lines(load("audit_chain_broken.jsonl").splitlines())
    check(f"broken chain: first bad index {expected['first_bad_index']} ({expected['problem']})",
          problem is not None and index == expected["first_bad_index"],
          f"found index {index}: {problem}" if problem else "the broken chain verified")

    if failures:
        print(f"{len(failures)} test vector(s) failed", file=sys.stderr)
        return 1
    print("all test vectors pass")
    return 0


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "..", "proto", "testvectors")
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else default))
