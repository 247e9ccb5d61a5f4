"""Canonical JSON (RFC 8785) and the contract's audit *record form*.

Written from the "Canonical JSON" and "Audit records" paragraphs at the top
of proto/private_worker/v1/worker.proto:

- the record form is a JSON object with exactly the 17 fields of
  `AuditRecord`, snake_case; strings as they are ("" when empty; inputs_json
  and output_json stay JSON *text*); attempt and sequence as integers;
  outcome as the enum value's name; timestamps null or RFC 3339 UTC with
  nine fractional digits;
- record_hash = lower-case hex SHA-256 of the canonical JSON of the record
  form without record_hash; prev_hash = the previous record's record_hash
  (64 zeros for the first); sequence counts from 1.

Usable as a command: `python3 audit.py verify FILE` checks a local log.
"""

import datetime
import hashlib
import json
import os
import sys

import rfc8785

ZERO_HASH = "0" * 64

# The 17 fields of AuditRecord, in field-number order.
FIELDS = (
    "task_id", "attempt", "plan_id", "task_name", "task_version",
    "inputs_json", "output_json", "received_at", "started_at", "finished_at",
    "outcome", "error_code", "error_message", "worker_identity", "sequence",
    "prev_hash", "record_hash",
)
STRING_FIELDS = {
    "task_id", "plan_id", "task_name", "task_version", "inputs_json",
    "output_json", "error_code", "error_message", "worker_identity",
    "prev_hash", "record_hash",
}
INTEGER_FIELDS = {"attempt", "sequence"}
TIMESTAMP_FIELDS = {"received_at", "started_at", "finished_at"}
OUTCOMES = {
    "OUTCOME_UNSPECIFIED", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT",
    "CANCELLED", "OUTCOME_UNKNOWN",
}
# JCS numbers are IEEE doubles; Python's int is unbounded.
_MAX_EXACT = 2**53


def _as_jcs_number(value):
    """Python value -> the value RFC 8785 canonicalizes (ints past 2^53 are doubles)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_MAX_EXACT < value < _MAX_EXACT else float(value)
    if isinstance(value, dict):
        return {k: _as_jcs_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_jcs_number(v) for v in value]
    return value


def canonical(value) -> bytes:
    """The RFC 8785 canonical JSON bytes of a parsed JSON value."""
    return rfc8785.dumps(_as_jcs_number(value))


def canonical_text(text: str) -> bytes:
    """The canonical JSON bytes of a JSON document given as text."""
    return canonical(json.loads(text))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def timestamp_text(seconds: int, nanos: int) -> str:
    """RFC 3339, UTC, exactly nine fractional digits (the record form's timestamps)."""
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def record_hash(record: dict) -> str:
    """SHA-256 of the canonical JSON of the record form without record_hash."""
    return sha256_hex(canonical({k: v for k, v in record.items() if k != "record_hash"}))


def form_problem(record) -> str | None:
    """Why `record` is not a record form, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [f for f in FIELDS if f not in record]
    extra = [k for k in record if k not in FIELDS]
    if missing or extra:
        return f"fields missing {missing}, unexpected {extra}"
    for name in FIELDS:
        value = record[name]
        if name in STRING_FIELDS and not isinstance(value, str):
            return f"{name} is not a string"
        if name in INTEGER_FIELDS and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f"{name} is not a non-negative integer"
        if name in TIMESTAMP_FIELDS and value is not None and not isinstance(value, str):
            return f"{name} is neither null nor a string"
    if record["outcome"] not in OUTCOMES:
        return f"outcome {record['outcome']!r} is not an Outcome name"
    return None


def verify_lines(lines):
    """Checks a log given as lines (without newlines).

    Returns (number of good records, None) or (index of the first bad line,
    reason): each line parses as a record form, sequence is the previous
    plus 1 (1 first), prev_hash is the previous record_hash (zeros first),
    and record_hash is right.
    """
    prev, expected_sequence = ZERO_HASH, 1
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError as e:
            return index, f"not JSON: {e}"
        problem = form_problem(record)
        if problem:
            return index, problem
        if record["sequence"] != expected_sequence:
            return index, f"sequence {record['sequence']}, expected {expected_sequence}"
        if record["prev_hash"] != prev:
            return index, f"prev_hash {record['prev_hash']}, expected {prev}"
        if record["record_hash"] != record_hash(record):
            return index, f"record_hash {record['record_hash']}, computed {record_hash(record)}"
        prev, expected_sequence = record["record_hash"], expected_sequence + 1
    return len(lines), None


class AuditLog:
    """The worker's local audit log: one record form per line, hash-chained,
    each line fsynced before the result it belongs to is sent. The chain
    continues across restarts from the last line of the file."""

    def __init__(self, path: str):
        self.path = path
        self.sequence, self.last_hash = 0, ZERO_HASH
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            if data and not data.endswith(b"\n"):
                raise SystemExit(f"{path}: the last record is incomplete (torn write); "
                                 "repair or move the file before starting")
            lines = data.decode("utf-8").splitlines()
            if lines:
                last = json.loads(lines[-1])
                problem = form_problem(last)
                if problem or last["record_hash"] != record_hash(last):
                    raise SystemExit(f"{path}: the last record is not valid ({problem or 'bad record_hash'})")
                self.sequence, self.last_hash = last["sequence"], last["record_hash"]
        self.file = open(path, "ab")

    def append(self, record: dict) -> dict:
        """Completes `record` (sequence, prev_hash, record_hash), writes it
        as one canonical JSON line, fsyncs, and returns it."""
        record = dict(record, sequence=self.sequence + 1, prev_hash=self.last_hash, record_hash="")
        record["record_hash"] = record_hash(record)
        self.file.write(canonical(record) + b"\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.sequence, self.last_hash = record["sequence"], record["record_hash"]
        return record


def main(argv):
    if len(argv) != 3 or argv[1] != "verify":
        print("usage: audit.py verify FILE", file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        lines = f.read().splitlines()
    count, problem = verify_lines(lines)
    if problem:
        print(f"{argv[2]}: line {count + 1} (index {count}): {problem}", file=sys.stderr)
        return 1
    print(f"{argv[2]}: {count} records, chain intact")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
