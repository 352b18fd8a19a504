#!/usr/bin/env python3
"""A Tether client written from the wire contract alone: proof that `proto/` is enough.

Generates Python stubs from `proto/tether/v1/*.proto` at run time (grpcio-tools), then, against
a running server:

1. creates an enrollment token (AdminService, admin token),
2. enrolls a machine with it (AgentService.Enroll, the enrollment secret as bearer),
3. opens the agent session (AgentService.Connect, the agent credential as bearer): Hello,
   Welcome, Ping/Pong, a MetricsReport of samples 1..3 until they are acked durable, Goodbye,
4. queries the fleet (FleetService.GetAgent, ListAgents with a label selector, GetMetrics).

Nothing here knows about the Rust implementation: every value it relies on comes from the
`.proto` files and their comments. Exits 0 on success; on any mismatch prints `INTEROP FAILURE:`
with what was expected and what arrived, and exits 1. The last line of a successful run is
`AGENT_ID=<id>`.

Usage: client.py --target 127.0.0.1:PORT --admin-token TOKEN [--proto-dir DIR] [--timeout S]
Requires Python >= 3.10 and tests/interop/requirements.txt.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import grpc

HOSTNAME = "py-agent"
HARDWARE_ID = "hw-py-agent"
OS_NAME = "pylinux"
LABELS = {"lang": "python"}
AGENT_VERSION = "interop-python/1"
SAMPLE_SEQS = (1, 2, 3)
# Larger than i64::MAX: a uint64 must round-trip unchanged.
PING_NONCE = 2**64 - 3

DEFAULT_PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"


class InteropFailure(Exception):
    """The server did something the contract does not allow (or this client cannot follow)."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise InteropFailure(what)


def log(message: str) -> None:
    print(f"[interop] {message}", flush=True)


_current_step = "start-up"


def step(name: str) -> None:
    """Names what the client is doing, for the failure message."""
    global _current_step
    _current_step = name


# === stubs ===


def generate_stubs(proto_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Runs protoc (from grpcio-tools) on every tether/v1 proto and imports the result."""
    protos = sorted(
        p.relative_to(proto_dir).as_posix() for p in (proto_dir / "tether" / "v1").glob("*.proto")
    )
    check(bool(protos), f"no .proto files under {proto_dir / 'tether' / 'v1'}")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InteropFailure(
            f"protoc failed ({result.returncode}) on {protos}:\n{result.stdout}{result.stderr}"
        )
    sys.path.insert(0, str(out_dir))
    modules = {}
    for name in ("common", "admin", "agent", "fleet"):
        modules[name] = importlib.import_module(f"tether.v1.{name}_pb2")
        modules[f"{name}_grpc"] = importlib.import_module(f"tether.v1.{name}_pb2_grpc")
    log(f"generated stubs for {', '.join(protos)}")
    return modules


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def now_ts(pb_timestamp_cls: Any, offset_ns: int = 0) -> Any:
    ts = pb_timestamp_cls()
    ts.FromNanoseconds(time.time_ns() + offset_ns)
    return ts


# === the agent session ===


_END = object()


class Session:
    """One `Connect` stream: requests come from a queue, responses land in another."""

    def __init__(self, stub: Any, credential: str, deadline_s: float, agent_pb2: Any) -> None:
        self._agent_pb2 = agent_pb2
        self._outbound: queue.Queue[Any] = queue.Queue()
        self._inbound: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.end_code: grpc.StatusCode | None = None
        self.end_details: str | None = None
        self._call = stub.Connect(self._requests(), metadata=bearer(credential), timeout=deadline_s)
        self._reader = threading.Thread(target=self._read, name="connect-reader", daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[Any]:
        while True:
            message = self._outbound.get()
            if message is None:
                return
            yield message

    def _read(self) -> None:
        try:
            for response in self._call:
                self._inbound.put(response)
        except grpc.RpcError as e:
            self.end_code, self.end_details = e.code(), e.details()
        else:
            self.end_code, self.end_details = self._call.code(), self._call.details()
        self._inbound.put(_END)

    def send(self, **message: Any) -> None:
        with self._lock:
            check(not self._closed, "internal: send after close_send")
            self._outbound.put(self._agent_pb2.ConnectRequest(**message))

    def close_send(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._outbound.put(None)

    def recv(self, timeout_s: float, waiting_for: str) -> Any:
        """The next response; fails on end of stream or timeout."""
        try:
            item = self._inbound.get(timeout=timeout_s)
        except queue.Empty:
            raise InteropFailure(
                f"no message from the server within {timeout_s}s while waiting for {waiting_for}"
            ) from None
        if item is _END:
            self._inbound.put(_END)
            raise InteropFailure(
                f"stream ended while waiting for {waiting_for}: {self.end_code} {self.end_details!r}"
            )
        return item

    def wait_end(self, timeout_s: float) -> list[Any]:
        """Drains the stream to its end; returns the messages that arrived before it."""
        rest = []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self._inbound.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise InteropFailure(
                    f"the server did not end the stream within {timeout_s}s of Goodbye"
                ) from None
            if item is _END:
                return rest
            rest.append(item)

    def cancel(self) -> None:
        self.close_send()
        self._call.cancel()


class Heartbeat:
    """Pings every `heartbeat_interval` from Welcome, as an agent must, so the session stays
    online however slow the machine running this test is."""

    NONCES_FROM = 1_000_000

    def __init__(
        self, session: Session, interval_s: float, timestamp_cls: Any, agent_pb2: Any
    ) -> None:
        self._session = session
        self._interval_s = interval_s
        self._timestamp_cls = timestamp_cls
        self._agent_pb2 = agent_pb2
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for nonce in itertools.count(self.NONCES_FROM):
            if self._stop.wait(self._interval_s):
                return
            try:
                self._session.send(
                    ping=self._agent_pb2.Ping(nonce=nonce, sent_at=now_ts(self._timestamp_cls))
                )
            except InteropFailure:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @classmethod
    def is_heartbeat_pong(cls, response: Any) -> bool:
        return (
            response.WhichOneof("message") == "pong"
            and response.pong.nonce >= cls.NONCES_FROM
            and response.pong.nonce != PING_NONCE
        )


# === the scenario ===


def run(args: argparse.Namespace, pb: dict[str, Any]) -> str:
    from google.protobuf import duration_pb2, timestamp_pb2

    common, admin, agent, fleet = pb["common"], pb["admin"], pb["agent"], pb["fleet"]
    step(f"connecting to {args.target}")
    channel = grpc.insecure_channel(args.target)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.timeout)
    except grpc.FutureTimeoutError:
        raise InteropFailure(f"could not connect to {args.target} within {args.timeout}s") from None
    admin_stub = pb["admin_grpc"].AdminServiceStub(channel)
    agent_stub = pb["agent_grpc"].AgentServiceStub(channel)
    fleet_stub = pb["fleet_grpc"].FleetServiceStub(channel)
    admin_md = bearer(args.admin_token)
    t = args.timeout

    # 1. Enrollment token.
    step("AdminService.CreateEnrollmentToken")
    created = admin_stub.CreateEnrollmentToken(
        admin.CreateEnrollmentTokenRequest(description="python interop", max_uses=1),
        metadata=admin_md,
        timeout=t,
    )
    check(bool(created.secret), f"CreateEnrollmentToken returned no secret: {created}")
    check(bool(created.token.token_id), f"CreateEnrollmentToken returned no token id: {created}")
    check(created.token.max_uses == 1, f"token max_uses: want 1, got {created.token.max_uses}")
    log(f"created enrollment token {created.token.token_id}")

    # 2. Enroll.
    step("AgentService.Enroll")
    system_info = common.SystemInfo(
        hostname=HOSTNAME,
        os_name=OS_NAME,
        os_version="3.11",
        kernel_version="py",
        architecture="py64",
        cpu_model="CPython",
        logical_cores=4,
        total_memory_bytes=8 << 30,
        hardware_id=HARDWARE_ID,
        boot_time=now_ts(timestamp_pb2.Timestamp, -3600 * 10**9),
        agent_version=AGENT_VERSION,
    )
    enrolled = agent_stub.Enroll(
        agent.EnrollRequest(system_info=system_info, labels=LABELS),
        metadata=bearer(created.secret),
        timeout=t,
    )
    check(bool(enrolled.agent_id), f"Enroll returned no agent id: {enrolled}")
    check(bool(enrolled.agent_credential), "Enroll returned no agent credential")
    check(bool(enrolled.org_id), f"Enroll returned no org id: {enrolled}")
    check(
        enrolled.org_id == created.token.org_id,
        f"Enroll org {enrolled.org_id!r} != token org {created.token.org_id!r}",
    )
    agent_id = enrolled.agent_id
    log(f"enrolled as agent {agent_id} in org {enrolled.org_id}")

    # 3. Session.
    step("AgentService.Connect: Hello/Welcome")
    session = Session(agent_stub, enrolled.agent_credential, deadline_s=10 * t, agent_pb2=agent)
    heartbeat = None
    try:
        session.send(
            hello=agent.Hello(
                agent_id=agent_id,
                agent_version=AGENT_VERSION,
                system_info=system_info,
                labels=LABELS,
            )
        )
        first = session.recv(t, "Welcome")
        check(
            first.WhichOneof("message") == "welcome", f"first response must be Welcome, got {first}"
        )
        welcome = first.welcome
        check(bool(welcome.session_id), f"Welcome has no session id: {welcome}")
        check(welcome.HasField("server_time"), f"Welcome has no server_time: {welcome}")
        for field in ("heartbeat_interval", "metrics_interval", "stale_after", "offline_after"):
            check(welcome.HasField(field), f"Welcome has no {field}: {welcome}")
            check(
                getattr(welcome, field).ToNanoseconds() > 0,
                f"Welcome.{field} is not positive: {welcome}",
            )
        check(
            welcome.last_durable_seq == 0,
            f"fresh agent: want last_durable_seq 0, got {welcome.last_durable_seq}",
        )
        heartbeat_s = welcome.heartbeat_interval.ToNanoseconds() / 1e9
        log(
            f"welcome: session {welcome.session_id}, heartbeat {heartbeat_s}s, "
            f"metrics {welcome.metrics_interval.ToNanoseconds() / 1e9}s"
        )
        heartbeat = Heartbeat(session, heartbeat_s, timestamp_pb2.Timestamp, agent)

        step("AgentService.Connect: Ping/Pong")
        # Ping/Pong with a nonce above i64::MAX and an echoed timestamp.
        sent_at = now_ts(timestamp_pb2.Timestamp)
        session.send(ping=agent.Ping(nonce=PING_NONCE, sent_at=sent_at))
        while True:
            response = session.recv(t, "Pong")
            if Heartbeat.is_heartbeat_pong(response):
                continue
            check(response.WhichOneof("message") == "pong", f"want Pong, got {response}")
            break
        pong = response.pong
        check(pong.nonce == PING_NONCE, f"Pong nonce: want {PING_NONCE}, got {pong.nonce}")
        check(
            pong.ping_sent_at == sent_at,
            f"Pong ping_sent_at: want {sent_at}, got {pong.ping_sent_at}",
        )
        check(pong.HasField("server_receive_time"), f"Pong has no server_receive_time: {pong}")
        log(f"pong: nonce {pong.nonce} echoed")

        step("AgentService.Connect: MetricsReport/MetricsAck")
        # Metrics: three samples in one report, until they are durable.
        samples = []
        for i, seq in enumerate(SAMPLE_SEQS):
            age_ms = (len(SAMPLE_SEQS) - i) * 100
            samples.append(
                common.MetricsSample(
                    seq=seq,
                    time=now_ts(timestamp_pb2.Timestamp, -age_ms * 10**6),
                    cpu_percent=10.0 * seq,
                    load_1=0.5 * seq,
                    load_5=0.25 * seq,
                    load_15=0.125 * seq,
                    memory_used_bytes=(1 << 30) * seq,
                    memory_total_bytes=8 << 30,
                    swap_used_bytes=0,
                    swap_total_bytes=1 << 30,
                    disks=[
                        common.DiskUsage(
                            mount_point="/", used_bytes=10 << 30, total_bytes=100 << 30
                        )
                    ],
                    network_rx_bytes=1000 * seq,
                    network_tx_bytes=500 * seq,
                    uptime=duration_pb2.Duration(seconds=3600 + seq),
                    process_count=100 + seq,
                )
            )
        session.send(metrics=agent.MetricsReport(samples=samples))
        last = SAMPLE_SEQS[-1]
        while True:
            response = session.recv(t, f"MetricsAck >= {last}")
            kind = response.WhichOneof("message")
            if kind == "pong":
                continue
            check(kind == "metrics_ack", f"want MetricsAck, got {response}")
            check(
                response.metrics_ack.durable_seq <= last,
                f"ack beyond what was sent: {response.metrics_ack.durable_seq}",
            )
            if response.metrics_ack.durable_seq >= last:
                break
        log(f"metrics acked durable up to {response.metrics_ack.durable_seq}")

        step("AgentService.Connect: Goodbye")
        heartbeat.stop()
        heartbeat = None
        session.send(goodbye=agent.AgentGoodbye(reason="python interop client done"))
        session.close_send()
        rest = session.wait_end(t)
        for response in rest:
            check(
                response.WhichOneof("message") in ("pong", "metrics_ack"),
                f"unexpected message after Goodbye: {response}",
            )
        check(
            session.end_code == grpc.StatusCode.OK,
            f"stream after Goodbye: want OK, got {session.end_code} {session.end_details!r}",
        )
        log("goodbye: the server ended the stream with OK")
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        session.cancel()

    # 4. Fleet queries.
    step("FleetService.GetAgent")
    got = fleet_stub.GetAgent(
        fleet.GetAgentRequest(agent_id=agent_id), metadata=admin_md, timeout=t
    ).agent
    check(got.agent_id == agent_id, f"GetAgent: want {agent_id}, got {got.agent_id}")
    check(got.org_id == enrolled.org_id, f"GetAgent org: want {enrolled.org_id}, got {got.org_id}")
    check(
        dict(got.labels).get("lang") == "python",
        f"GetAgent labels: want lang=python, got {dict(got.labels)}",
    )
    check(got.system_info.hostname == HOSTNAME, f"GetAgent hostname: {got.system_info.hostname!r}")
    check(
        got.system_info.hardware_id == HARDWARE_ID,
        f"GetAgent hardware id: {got.system_info.hardware_id!r}",
    )
    check(got.system_info.os_name == OS_NAME, f"GetAgent os: {got.system_info.os_name!r}")
    check(
        got.last_durable_seq == last,
        f"GetAgent last_durable_seq: want {last}, got {got.last_durable_seq}",
    )
    check(got.HasField("latest_metrics"), f"GetAgent: no latest_metrics: {got}")
    check(
        got.latest_metrics.seq == last,
        f"GetAgent latest_metrics.seq: want {last}, got {got.latest_metrics.seq}",
    )
    check(got.status != common.AGENT_STATUS_UNSPECIFIED, f"GetAgent status unspecified: {got}")
    log(
        f"get agent: status {common.AgentStatus.Name(got.status)} "
        f"({common.StatusReason.Name(got.status_reason)}), health {common.Health.Name(got.health)}"
    )

    step("FleetService.ListAgents")
    listed = fleet_stub.ListAgents(
        fleet.ListAgentsRequest(label_selector="lang=python"), metadata=admin_md, timeout=t
    )
    ids = [a.agent_id for a in listed.agents]
    check(ids == [agent_id], f"ListAgents lang=python: want [{agent_id}], got {ids}")
    check(listed.total_size == 1, f"ListAgents total_size: want 1, got {listed.total_size}")
    check(
        listed.next_page_token == "", f"ListAgents: unexpected next page {listed.next_page_token!r}"
    )
    entry = listed.agents[0]
    check(entry.HasField("latest_metrics"), f"ListAgents entry has no latest_metrics: {entry}")
    check(
        entry.latest_metrics.seq == last,
        f"ListAgents latest seq: want {last}, got {entry.latest_metrics.seq}",
    )
    check(
        abs(entry.latest_metrics.cpu_percent - samples[-1].cpu_percent) < 1e-9,
        f"ListAgents latest cpu: want {samples[-1].cpu_percent}, got {entry.latest_metrics.cpu_percent}",
    )
    not_python = fleet_stub.ListAgents(
        fleet.ListAgentsRequest(label_selector="lang!=python"), metadata=admin_md, timeout=t
    )
    check(
        agent_id not in [a.agent_id for a in not_python.agents],
        "ListAgents lang!=python lists the python agent",
    )
    log(f"list agents lang=python: {ids}")

    step("FleetService.GetMetrics")
    metrics = fleet_stub.GetMetrics(
        fleet.GetMetricsRequest(agent_id=agent_id, step=duration_pb2.Duration()),
        metadata=admin_md,
        timeout=t,
    )
    check(
        len(metrics.points) == len(SAMPLE_SEQS),
        f"GetMetrics step 0: want {len(SAMPLE_SEQS)} points, got {len(metrics.points)}",
    )
    for point, sample in zip(metrics.points, samples):
        check(point.sample_count == 1, f"GetMetrics step 0: point of {point.sample_count} samples")
        check(
            abs(point.cpu_percent - sample.cpu_percent) < 1e-9,
            f"GetMetrics cpu: want {sample.cpu_percent}, got {point.cpu_percent}",
        )
        check(
            point.memory_used_bytes == sample.memory_used_bytes,
            f"GetMetrics memory: {point.memory_used_bytes}",
        )
        check(
            point.disk_total_bytes == 100 << 30, f"GetMetrics disk total: {point.disk_total_bytes}"
        )
    log(f"get metrics: {len(metrics.points)} points")

    channel.close()
    return agent_id


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, help="server address, host:port (plaintext)")
    parser.add_argument("--admin-token", required=True, help="an admin token of the server")
    parser.add_argument(
        "--proto-dir", type=Path, default=DEFAULT_PROTO_DIR, help="root of the .proto files"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per step")
    args = parser.parse_args()
    target = args.target
    for scheme in ("http://", "https://"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
    args.target = target.rstrip("/")

    with tempfile.TemporaryDirectory(prefix="tether-interop-stubs-") as out_dir:
        try:
            step("generating stubs")
            pb = generate_stubs(args.proto_dir.resolve(), Path(out_dir))
            agent_id = run(args, pb)
        except InteropFailure as e:
            print(f"INTEROP FAILURE during {_current_step}: {e}", file=sys.stderr, flush=True)
            return 1
        except grpc.RpcError as e:
            print(
                f"INTEROP FAILURE during {_current_step}: RPC failed: {e.code()} {e.details()!r}",
                file=sys.stderr,
                flush=True,
            )
            return 1
    print(f"AGENT_ID={agent_id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
