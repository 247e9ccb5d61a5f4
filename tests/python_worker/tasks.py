"""The local allowlist: which tasks this worker runs, how it checks their
inputs, and the one HTTP call each task makes.

Nothing here knows about gRPC: `Task.check()` says whether an assignment
may run, `Task.call()` makes the call (blocking; the worker runs it in a
thread) and returns (outcome name, output, error code, error message).
"""

import json
import re
import string
import urllib.error
import urllib.parse
import urllib.request

import jsonschema

from audit import canonical, sha256_hex

REDACTED = "[REDACTED]"
MAX_RESPONSE_BYTES = 1024 * 1024
_PLACEHOLDER = re.compile(r"^\{([A-Za-z0-9_]+)\}$")


class Refusal(Exception):
    """An assignment this worker will not run: (error code, message)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Task:
    def __init__(self, spec: dict):
        self.name = spec["name"]
        self.version = str(spec["version"])
        self.timeout = float(spec.get("timeout_seconds", 30))
        self.idempotent = bool(spec.get("idempotent", False))
        self.schema = spec["input_schema"]
        jsonschema.validators.validator_for(self.schema).check_schema(self.schema)
        self.validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        # What the manifest announces: SHA-256 of the schema's canonical JSON.
        self.schema_sha256 = sha256_hex(canonical(self.schema))
        http = spec["http"]
        self.method = http["method"].upper()
        self.url = http["url"]
        # Placeholders only after scheme://host/, so inputs never pick the host.
        split = urllib.parse.urlsplit(self.url)
        if split.scheme not in ("http", "https") or "{" in split.netloc or "}" in split.netloc:
            raise SystemExit(f"task {self.name}: url must be http(s) with no placeholder in the host")
        self.url_fields = [f for _, f, _, _ in string.Formatter().parse(self.url) if f]
        self.body = http.get("body")  # None, "inputs", or a JSON template
        self.headers = dict(http.get("headers", {}))
        credential = http.get("credential")
        self.credential_header = credential["header"] if credential else None
        self.credential_prefix = credential.get("prefix", "") if credential else ""
        self.credential_env = credential["env"] if credential else None

    def check(self, inputs_json: str) -> dict:
        """The parsed inputs, or Refusal('invalid_input', why)."""
        try:
            inputs = json.loads(inputs_json)
        except ValueError as e:
            raise Refusal("invalid_input", f"inputs are not JSON: {e}")
        errors = sorted(self.validator.iter_errors(inputs), key=lambda e: list(e.absolute_path))
        if errors:
            why = "; ".join(f"{_pointer(e.absolute_path)}: {e.message}" for e in errors[:10])
            raise Refusal("invalid_input", f"inputs break the local schema of {self.name}: {why}")
        if not isinstance(inputs, dict):
            raise Refusal("invalid_input", "inputs are not a JSON object")
        missing = [f for f in self.url_fields if f not in inputs]
        if missing:
            raise Refusal("invalid_input", f"the URL needs inputs {missing}")
        return inputs

    def request(self, inputs: dict, task_id: str, secret: str | None) -> urllib.request.Request:
        values = {f: urllib.parse.quote(_text(inputs[f]), safe="") for f in self.url_fields}
        url = self.url.format(**values)
        headers = {"Accept": "application/json", "Idempotency-Key": task_id, **self.headers}
        data = None
        if self.body is not None:
            body = inputs if self.body == "inputs" else _fill(self.body, inputs)
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.credential_header:
            headers[self.credential_header] = self.credential_prefix + secret
        return urllib.request.Request(url, data=data, headers=headers, method=self.method)

    def call(self, request: urllib.request.Request, timeout: float, secret: str | None):
        """Makes the call; returns (outcome, output, error_code, error_message)."""
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                status, raw = response.status, response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.URLError as e:
            if isinstance(e.reason, ConnectionRefusedError):
                return "FAILED", None, "unreachable", redact(f"connection refused: {request.full_url}", secret)
            return "OUTCOME_UNKNOWN", None, "request_failed", redact(str(e.reason), secret)
        except TimeoutError:
            return "OUTCOME_UNKNOWN", None, "timeout", f"no answer within {timeout:.1f}s"
        except OSError as e:
            return "OUTCOME_UNKNOWN", None, "request_failed", redact(str(e), secret)
        # The call was answered: the outcome follows the HTTP status whatever
        # the size. An answer beyond the limit keeps its first bytes, as text
        # (a secret cut at the end is dropped whole).
        cut = len(raw) > MAX_RESPONSE_BYTES
        text = raw[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace")
        if cut:
            body = _drop_partial_secret(text, secret)
        else:
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
        output = redact({"status": status, "body": body}, secret)
        if 200 <= status < 300:
            return "SUCCEEDED", output, "", ""
        return "FAILED", output, "http_status", f"the internal API answered HTTP {status}"


def _drop_partial_secret(text: str, secret: str | None) -> str:
    """`text` without a beginning of `secret` it ends with (a cut answer)."""
    if secret:
        for n in range(min(len(secret), len(text)), 0, -1):
            if text.endswith(secret[:n]):
                return text[:-n]
    return text


def redact(value, secret: str | None):
    """`value` with every occurrence of the credential replaced, in every string and key."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    if isinstance(value, dict):
        return {redact(k, secret): redact(v, secret) for k, v in value.items()}
    return value


def _fill(template, inputs):
    """A string that is exactly "{name}" becomes that input's value (any JSON
    type); an object member whose input is missing is left out."""
    if isinstance(template, str):
        m = _PLACEHOLDER.match(template)
        if m:
            return inputs.get(m.group(1), _MISSING)
        return template
    if isinstance(template, list):
        return [v for v in (_fill(t, inputs) for t in template) if v is not _MISSING]
    if isinstance(template, dict):
        filled = {k: _fill(v, inputs) for k, v in template.items()}
        return {k: v for k, v in filled.items() if v is not _MISSING}
    return template


_MISSING = object()


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _pointer(path) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path) if path else "/"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer, never followed (it could carry the credential elsewhere)


# No proxies from the environment, no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
