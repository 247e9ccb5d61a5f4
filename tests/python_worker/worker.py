"""A private worker in Python, written from proto/private_worker/v1/worker.proto.

    python3 worker.py --config worker.json --generated DIR

It dials OUT to the orchestrator over mutual TLS, holds one
`WorkerGateway.Session` stream, runs only the tasks of its local allowlist
(one HTTP call each), and sends every result with a hash-chained audit
record. DIR holds the code generated from the .proto (see generate.py).
See README.md for the config and for what it leaves out (no journal: a
crash loses what was running and unacknowledged).
"""

import argparse
import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import random
import re
import signal
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import grpc
    import grpc.aio
    from google.protobuf.timestamp_pb2 import Timestamp

    import audit
    from tasks import Refusal, Task, redact
except ImportError as e:
    raise SystemExit(f"{e}: python3 -m pip install -r tests/python_worker/requirements.txt")

log = logging.getLogger("python-worker")

VERSION = "private-worker-python 0.1.0"
MESSAGE_LIMIT = 4 * 1024 * 1024  # "Limits": 4 MiB per message, both directions
KEEP_LIMIT = 1024 * 1024  # larger inputs/outputs are replaced by their size and hash
ID_RULE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # "Limits": ids and names
REMEMBERED = 20_000  # task ids of acknowledged results remembered ("Delivery")
FATAL = "INVALID_ARGUMENT"  # the one status a worker does not retry


def now_ns() -> int:
    return time.time_ns()


def timestamp(ns):
    """(proto Timestamp or None, record-form text or None) of a time in ns."""
    if ns is None:
        return None, None
    seconds, nanos = divmod(ns, 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos), audit.timestamp_text(seconds, nanos)


def shrink(text: str) -> str:
    """JSON text kept as is up to 1 MiB, else the contract's stand-in."""
    data = text.encode()
    if len(data) <= KEEP_LIMIT:
        return text
    return json.dumps({"bytes": len(data), "sha256": audit.sha256_hex(data), "truncated": True},
                      separators=(",", ":"))


class Attempt:
    """One assignment this worker holds: running, or its result not yet acknowledged."""

    def __init__(self, assignment, received_ns):
        self.a = assignment
        self.key = (assignment.task_id, assignment.attempt)
        self.received_ns = received_ns
        self.started_ns = None
        self.holds_slot = False  # accepted: a slot until the result is acknowledged
        self.cancel = asyncio.Event()
        self.cancel_reason = ""
        self.result = None  # the TaskResult, once decided
        self.sent_on = None  # stream number the result last went out on
        self.duplicate_answered_on = None
        self.refused_delay = 0.0


class Worker:
    def __init__(self, config: dict, pb, stub_class):
        self.pb, self.stub_class = pb, stub_class
        self.config = config
        w = config["worker"]
        self.max_in_flight = int(w["max_in_flight"])
        self.heartbeat = float(w.get("heartbeat_seconds", 5))
        self.drain_grace = float(w.get("drain_grace_seconds", 30))
        self.tasks = {t.name: t for t in (Task(spec) for spec in config["tasks"])}
        self.audit = audit.AuditLog(w["audit_log"])
        self.instance_id = uuid.uuid4().hex
        self.identity = ""  # from Welcome.worker_identity
        self.attempts: dict[tuple, Attempt] = {}
        self.acknowledged = collections.OrderedDict()  # (task_id, attempt) -> None
        self.started = collections.OrderedDict()  # task_id -> the result of its started attempt
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2 * self.max_in_flight)
        # Session state.
        self.call = None
        self.stream_no = 0
        self.write_lock = asyncio.Lock()
        self.credit = 0  # what the orchestrator may still send on this stream, as counted here
        self.draining = False  # on this stream (Drain) or for good (stopping)
        self.stopping = False
        self.end_session = asyncio.Event()
        self.last_heard = time.monotonic()
        self.last_sent = time.monotonic()
        self.interval = self.heartbeat
        self.lease = 3 * self.heartbeat
        self.changed = asyncio.Event()  # an attempt ended or was acknowledged

    # ----------------------------------------------------------------- sending

    async def send(self, **kind) -> bool:
        call = self.call
        if call is None:
            return False
        message = self.pb.WorkerMessage(**kind)
        try:
            async with self.write_lock:
                await call.write(message)
            self.last_sent = time.monotonic()
            return True
        except Exception as e:  # the stream ended under us; the session loop redials
            log.debug("send failed: %s", e)
            return False

    async def grant(self, n=1):
        self.credit += n
        await self.send(credit=self.pb.Credit(grant=n))

    def ref(self, attempt: Attempt):
        return self.pb.TaskRef(task_id=attempt.a.task_id, attempt=attempt.a.attempt)

    async def send_result(self, attempt: Attempt):
        if attempt.result is not None and await self.send(result=attempt.result):
            attempt.sent_on = self.stream_no

    # --------------------------------------------------------------- the stream

    async def run(self) -> int:
        """Dials, holds the session, redials with jittered exponential backoff."""
        o = self.config["orchestrator"]
        initial = float(o.get("reconnect_initial_seconds", 0.5))
        ceiling = float(o.get("reconnect_max_seconds", 30))
        backoff = initial
        while True:
            welcomed, status = await self.session()
            if status == FATAL:
                log.error("fatal status INVALID_ARGUMENT: finishing what runs, then exiting")
                await self.stop("fatal status", connected=False)
                return 1
            if welcomed:
                backoff = initial
            delay = random.uniform(backoff / 2, backoff)
            log.info("redialing in %.2fs", delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, ceiling)

    def channel(self):
        o, tls = self.config["orchestrator"], self.config["tls"]

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(tls["ca_cert"]), private_key=read(tls["key"]),
            certificate_chain=read(tls["cert"]))
        options = [("grpc.ssl_target_name_override", o["server_name"]),
                   ("grpc.max_send_message_length", MESSAGE_LIMIT),
                   ("grpc.max_receive_message_length", MESSAGE_LIMIT)]
        return grpc.aio.secure_channel(o["address"], credentials, options=options)

    def hello(self):
        pending = [self.ref(a) for a in self.attempts.values() if a.result is not None]
        running = [self.ref(a) for a in self.attempts.values() if a.result is None]
        slots = sum(a.holds_slot for a in self.attempts.values())
        # Hello.max_in_flight: capacity less the slots still held (credit never
        # exceeds the free slots); 0 while draining.
        self.credit = 0 if self.stopping else max(0, self.max_in_flight - slots)
        manifest = [self.pb.ManifestEntry(name=t.name, version=t.version, input_schema_sha256=t.schema_sha256)
                    for t in self.tasks.values()]
        return self.pb.Hello(worker_version=VERSION, manifest=manifest, max_in_flight=self.credit,
                             pending_results=pending, instance_id=self.instance_id, running=running)

    async def session(self):
        """One stream, Hello to end. Returns (welcomed, status name or None)."""
        self.stream_no += 1
        self.end_session = asyncio.Event()
        self.draining = self.stopping
        self.status = None
        welcomed = False
        async with self.channel() as channel:
            call = self.stub_class(channel).Session()
            try:
                await call.write(self.pb.WorkerMessage(hello=self.hello()))
                try:
                    first = await asyncio.wait_for(call.read(), 3 * self.interval)
                except asyncio.TimeoutError:
                    raise ConnectionError(f"no Welcome within {3 * self.interval:.0f}s")
                if first is grpc.aio.EOF or not first.HasField("welcome"):
                    self.status = (await call.code()).name
                    raise ConnectionError(f"no Welcome: {self.status} {await call.details()}")
                self.welcome(first.welcome)
                self.call, welcomed = call, True
                for attempt in list(self.attempts.values()):  # "re-sent ... on a later stream"
                    if attempt.sent_on != self.stream_no:
                        await self.send_result(attempt)
                if self.stopping:
                    await self.send(draining=self.pb.Draining(reason="stopping"))
                chores = [asyncio.create_task(c) for c in (self.read_loop(call), self.heartbeats())]
                await self.end_session.wait()
                for chore in chores:
                    chore.cancel()
            except grpc.aio.AioRpcError as e:
                self.status = e.code().name
                log.warning("stream ended: %s %s", self.status, e.details())
            except ConnectionError as e:
                log.warning("%s", e)
            finally:
                self.call = None
                call.cancel()
        return welcomed, self.status

    def welcome(self, welcome):
        self.identity = welcome.worker_identity
        if welcome.HasField("heartbeat_interval"):
            self.interval = welcome.heartbeat_interval.ToTimedelta().total_seconds() or self.heartbeat
        self.lease = (welcome.lease_timeout.ToTimedelta().total_seconds()
                      if welcome.HasField("lease_timeout") else 3 * self.interval)
        self.last_heard = time.monotonic()
        for problem in welcome.manifest_problems:
            log.warning("the orchestrator will not dispatch %s %s: %s", problem.name, problem.version, problem.reason)
        log.info("session %s established as %s (heartbeat %.1fs, lease %.1fs)",
                 welcome.session_id, self.identity, self.interval, self.lease)

    async def read_loop(self, call):
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    self.status = (await call.code()).name
                    log.warning("the orchestrator closed the stream: %s %s", self.status, await call.details())
                    break
                self.last_heard = time.monotonic()
                await self.handle(message)
        except grpc.aio.AioRpcError as e:
            self.status = e.code().name
            log.warning("stream ended: %s %s", self.status, e.details())
        finally:
            self.end_session.set()

    async def heartbeats(self):
        """Sends a Heartbeat when idle for an interval; ends a stream silent for three."""
        while True:
            await asyncio.sleep(min(self.interval / 4, 1.0))
            quiet = time.monotonic() - self.last_heard
            if quiet > 3 * self.interval:
                log.warning("heard nothing for %.1fs: the stream is dead", quiet)
                self.end_session.set()
                return
            if time.monotonic() - self.last_sent >= self.interval:
                ts, _ = timestamp(now_ns())
                slots = sum(a.holds_slot for a in self.attempts.values())
                await self.send(heartbeat=self.pb.Heartbeat(sent_at=ts, in_flight=slots))

    async def handle(self, message):
        kind = message.WhichOneof("kind")
        if kind == "assignment":
            await self.on_assignment(message.assignment)
        elif kind == "result_ack":
            await self.on_ack(message.result_ack.task)
        elif kind == "result_refused":
            attempt = self.attempts.get((message.result_refused.task.task_id, message.result_refused.task.attempt))
            if attempt is not None and attempt.result is not None:
                attempt.refused_delay = min(max(1.0, attempt.refused_delay * 2), 60.0)
                log.warning("result %s refused (%s): again in %.0fs", attempt.key,
                            message.result_refused.reason, attempt.refused_delay)
                asyncio.create_task(self.resend_later(attempt, self.stream_no, attempt.refused_delay))
        elif kind == "cancel":
            attempt = self.attempts.get((message.cancel.task.task_id, message.cancel.task.attempt))
            if attempt is not None and attempt.result is None:  # else: not held, or already decided
                attempt.cancel_reason = message.cancel.reason or "cancelled by the orchestrator"
                attempt.cancel.set()
        elif kind == "drain":
            log.info("drain asked: %s", message.drain.reason)
            self.draining = True
            await self.send(draining=self.pb.Draining(reason=message.drain.reason or "drain"))
            asyncio.create_task(self.close_when_delivered(self.stream_no))
        # heartbeat: hearing it is all it is for; welcome again: ignored.

    async def resend_later(self, attempt, stream_no, delay):
        await asyncio.sleep(delay)
        if self.stream_no == stream_no and self.attempts.get(attempt.key) is attempt:
            await self.send_result(attempt)

    async def close_when_delivered(self, stream_no):
        """After a Drain: close the stream once everything held is acknowledged, then redial."""
        while self.attempts and self.stream_no == stream_no:
            self.changed.clear()
            await self.changed.wait()
        if self.stream_no == stream_no:
            log.info("drained: closing the stream")
            self.end_session.set()

    async def on_ack(self, ref):
        attempt = self.attempts.get((ref.task_id, ref.attempt))
        if attempt is None or attempt.result is None:
            return
        del self.attempts[attempt.key]
        self.acknowledged[attempt.key] = None
        while len(self.acknowledged) > REMEMBERED:
            self.acknowledged.popitem(last=False)
        self.changed.set()
        if attempt.holds_slot and not self.draining:
            await self.grant(1)  # the credit rule: one back per freed slot

    # ------------------------------------------------------------ assignments

    async def on_assignment(self, a):
        received_ns = now_ns()
        within_credit = self.credit > 0
        if within_credit:
            self.credit -= 1
        bad = [f for f in ("task_id", "plan_id", "task_name", "task_version") if not ID_RULE.match(getattr(a, f))]
        if bad:
            log.warning("ignoring an assignment whose %s break the contract's id rule", ", ".join(bad))
            return await self.give_back(within_credit)
        key = (a.task_id, a.attempt)
        held = self.attempts.get(key)
        if held is not None or key in self.acknowledged:
            # A re-delivery: its unacknowledged result again (once per stream), else nothing.
            if held is not None and held.result is not None and held.duplicate_answered_on != self.stream_no:
                held.duplicate_answered_on = self.stream_no
                await self.send_result(held)
            log.info("task %s attempt %d delivered again: ignored", *key)
            return await self.give_back(within_credit)
        attempt = Attempt(a, received_ns)
        if not within_credit:
            return await self.refuse(attempt, "credit_exceeded", f"beyond the credit of this stream ({self.max_in_flight} slots)")
        if self.draining:
            return await self.refuse(attempt, "draining", "the worker is draining")
        if any(k[0] == a.task_id for k in self.attempts):
            # Another attempt of this task id is held (running, or its result
            # unacknowledged): refused without Accept, holding a slot until
            # this refusal is acknowledged (its credit comes back with the
            # ResultAck).
            attempt.holds_slot = True
            return await self.refuse(attempt, "attempt_in_progress",
                                     f"another attempt of task {a.task_id} is still held by this worker")
        attempt.holds_slot = True
        self.attempts[key] = attempt
        asyncio.create_task(self.run_attempt(attempt))

    async def give_back(self, within_credit):
        """An assignment that took no slot gives its credit back (if it used any)."""
        if within_credit:
            await self.grant(1)

    async def refuse(self, attempt, code, message):
        """REJECTED without Accept; its result is kept until acknowledged (a slot
        only for `attempt_in_progress`, set by the caller)."""
        self.attempts[attempt.key] = attempt
        await self.finish(attempt, "REJECTED", None, code, message)

    async def run_attempt(self, attempt):
        try:
            await self.execute(attempt)
        except Exception as e:  # a bug here must still answer the attempt
            log.exception("task %s attempt %d failed inside the worker", *attempt.key)
            if attempt.result is None:  # the contract's `panicked`: whether a call happened is unknown
                await self.finish(attempt, "OUTCOME_UNKNOWN", None, "panicked", type(e).__name__)

    async def execute(self, attempt):
        a = attempt.a
        task = self.tasks.get(a.task_name)
        secret = None
        try:
            if task is None or task.version != a.task_version:
                raise Refusal("not_allowed", f"task {a.task_name} version {a.task_version} is not in this worker's allowlist")
            previous = self.started.get(a.task_id)
            if previous is not None and not task.idempotent:
                await self.send(accept=self.pb.Accept(task=self.ref(attempt)))
                outcome, output, _, message = previous
                return await self.finish(attempt, outcome, output, "already_started",
                                         f"task {a.task_id} already started under an earlier attempt ({message or outcome})")
            inputs = task.check(a.inputs_json)
            if a.HasField("deadline") and now_ns() >= a.deadline.ToNanoseconds():
                await self.send(accept=self.pb.Accept(task=self.ref(attempt)))
                return await self.finish(attempt, "TIMED_OUT", None, "deadline_passed", "the deadline passed before the call")
            if task.credential_env:
                secret = os.environ.get(task.credential_env)
                if not secret:
                    await self.send(accept=self.pb.Accept(task=self.ref(attempt)))
                    return await self.finish(attempt, "FAILED", None, "credential_unavailable",
                                             f"environment variable {task.credential_env} is not set")
            request = task.request(inputs, a.task_id, secret)
        except Refusal as r:
            await self.send(accept=self.pb.Accept(task=self.ref(attempt)))
            return await self.finish(attempt, "REJECTED", None, r.code, r.message)
        # Accept once the checks passed and the credential is loaded, before the call.
        await self.send(accept=self.pb.Accept(task=self.ref(attempt)))
        if attempt.cancel.is_set():
            return await self.finish(attempt, "CANCELLED", None, "cancelled_before_call", attempt.cancel_reason)
        if time.monotonic() - self.last_heard > self.lease - self.interval:
            return await self.finish(attempt, "CANCELLED", None, "lease_lost",
                                     "heard nothing from the orchestrator for its lease: not starting")
        timeout = task.timeout
        if a.HasField("deadline"):
            timeout = min(timeout, (a.deadline.ToNanoseconds() - now_ns()) / 1e9)
        if timeout <= 0:
            return await self.finish(attempt, "TIMED_OUT", None, "deadline_passed", "the deadline passed before the call")
        attempt.started_ns = now_ns()
        self.started[a.task_id] = ("OUTCOME_UNKNOWN", None, "interrupted", "")
        while len(self.started) > REMEMBERED:
            self.started.popitem(last=False)
        log.info("task %s attempt %d: %s %s", a.task_id, a.attempt, task.method, task.name)
        call = asyncio.get_running_loop().run_in_executor(self.pool, task.call, request, timeout, secret)
        cancelled = asyncio.ensure_future(attempt.cancel.wait())
        done, _ = await asyncio.wait({call, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        if call in done:
            outcome, output, code, message = call.result()
        elif cancelled in done:
            outcome, output, code, message = "OUTCOME_UNKNOWN", None, "cancelled", attempt.cancel_reason
        else:
            outcome, output, code, message = "OUTCOME_UNKNOWN", None, "timeout", f"cut after {timeout:.1f}s"
        await self.finish(attempt, outcome, redact(output, secret), code, redact(message, secret))

    async def finish(self, attempt, outcome, output, code, message):
        """Writes the audit record (fsynced), then sends the result."""
        a = attempt.a
        output_json = "" if output is None else output if isinstance(output, str) else \
            shrink(json.dumps(output, separators=(",", ":"), ensure_ascii=False))
        finished_ns = now_ns()
        times = {name: timestamp(ns) for name, ns in
                 (("received_at", attempt.received_ns), ("started_at", attempt.started_ns),
                  ("finished_at", finished_ns))}
        record = self.audit.append({
            "task_id": a.task_id, "attempt": a.attempt, "plan_id": a.plan_id,
            "task_name": a.task_name, "task_version": a.task_version,
            "inputs_json": shrink(a.inputs_json), "output_json": output_json,
            "received_at": times["received_at"][1], "started_at": times["started_at"][1],
            "finished_at": times["finished_at"][1], "outcome": outcome,
            "error_code": code, "error_message": message, "worker_identity": self.identity,
        })
        fields = {k: v for k, v in record.items() if k not in ("received_at", "started_at", "finished_at", "outcome")}
        fields.update({k: v[0] for k, v in times.items() if v[0] is not None})
        audit_pb = self.pb.AuditRecord(outcome=self.pb.Outcome.Value(outcome), **fields)
        attempt.result = self.pb.TaskResult(task=self.ref(attempt), outcome=self.pb.Outcome.Value(outcome),
                                            output_json=output_json, error_code=code,
                                            error_message=message, audit=audit_pb)
        if attempt.started_ns is not None:
            self.started[a.task_id] = (outcome, output_json, code, message)
        log.info("task finished: %s attempt %d %s %s", a.task_id, a.attempt, outcome, code)
        self.changed.set()
        await self.send_result(attempt)

    # --------------------------------------------------------------- stopping

    async def stop(self, reason, connected=True):
        """Drain: no new work; wait for what runs (and, while the session
        loop still dials, for the acknowledgements) up to the grace; cut
        what still runs (OUTCOME_UNKNOWN, audited); wait 5 s more."""
        self.stopping = self.draining = True
        await self.send(draining=self.pb.Draining(reason=reason))
        if connected:
            done = lambda: not self.attempts  # noqa: E731
        else:
            done = lambda: all(a.result is not None for a in self.attempts.values())  # noqa: E731
        await self.wait_until(done, self.drain_grace)
        for attempt in self.attempts.values():
            if attempt.result is None:
                attempt.cancel_reason = f"worker stopping ({reason})"
                attempt.cancel.set()
        await self.wait_until(done, 5)

    async def wait_until(self, condition, seconds):
        end = time.monotonic() + seconds
        while not condition() and time.monotonic() < end:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), end - time.monotonic())
            except asyncio.TimeoutError:
                break


def load_config(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    base = os.path.dirname(os.path.abspath(path))
    for section, key in (("tls", "ca_cert"), ("tls", "cert"), ("tls", "key"), ("worker", "audit_log")):
        config[section][key] = os.path.join(base, config[section][key])
    return config


def import_generated(directory: str):
    """The modules protoc generated from worker.proto into `directory`."""
    if not directory or not os.path.isdir(os.path.join(directory, "private_worker", "v1")):
        raise SystemExit("no generated code: run `python3 generate.py DIR` and pass --generated DIR")
    sys.path.insert(0, directory)
    from private_worker.v1 import worker_pb2, worker_pb2_grpc
    return worker_pb2, worker_pb2_grpc.WorkerGatewayStub


async def amain(args) -> int:
    pb, stub = import_generated(args.generated)
    worker = Worker(load_config(args.config), pb, stub)
    runner = asyncio.create_task(worker.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        return runner.result()
    log.info("signal received: draining")
    loop.add_signal_handler(signal.SIGTERM, lambda: os._exit(1))  # a second signal exits at once
    await worker.stop("SIGTERM")
    worker.end_session.set()
    runner.cancel()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--generated", default=os.environ.get("PRIVATE_WORKER_GENERATED"))
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = asyncio.run(amain(args))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # calls cut at a deadline may still sit in their threads


if __name__ == "__main__":
    main()
