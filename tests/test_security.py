"""Security: the access table of every RPC by reflection, TLS failures, revocation, backup escapes, unsafe starts."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import shoal
from shoal import _rpc
from shoal._access import ACCESS, Guard
from shoal._errors import FailedPrecondition, InvalidArgument
from shoal._etcd import find_binary
from shoal._keystore import FileKeyStore
from shoal._local import LocalCluster, Process, wait_serving
from shoal._secrets import ensure_secrets
from shoal._server import ServerSecurity, ServerTLS, check_safe
from shoal._tls import TLS, api_key_metadata, cluster_metadata
from shoal.shard.backup import backup_folder
from shoal.v1 import shard_pb2, shard_pb2_grpc
from shoal.v1 import types_pb2 as pb

OK, UNAUTH, DENIED = "ok", grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED

# What each caller may do, written out here (not derived from shoal._access): the test's own table.
NEEDS = {
    "Shoal": {
        "CreateCollection": "admin",
        "DropCollection": "admin",
        "ListCollections": "read",
        "DescribeCollection": "read",
        "GetTopology": "admin",
        "GetStatus": "admin",
        "Upsert": "write",
        "UpsertStream": "write",
        "Get": "read",
        "Delete": "write",
        "Count": "read",
        "Scroll": "read",
        "SetPayload": "write",
        "Search": "read",
        "SearchStream": "read",
    },
    "Shard": {
        name: "cluster"
        for name in [
            *("CreateCollection", "DropCollection", "ListCollections", "DescribeCollection", "Upsert", "Get"),
            *("Delete", "Count", "Scroll", "SetPayload", "Search", "SearchStream", "Snapshot", "Backup", "Verify"),
            *("Replicate", "ReplicaState", "ReadLog"),
            *("ExportRange", "ExportChanges", "Import", "DeleteRange", "AwaitTopology"),
            "GetStatus",
        ]
    },
}
RANK = {"read": 0, "write": 1, "admin": 2}


def expected(service: str, method: str, caller: str) -> Any:
    """The status a caller must get: OK (the call passed the access check), UNAUTHENTICATED or PERMISSION_DENIED."""
    need = NEEDS[service][method]
    if service == "Shard":
        return {"member": OK, "none": UNAUTH, "admin": DENIED}[caller]
    if caller in ("none", "revoked"):
        return UNAUTH
    if caller == "other":  # a read key limited to another collection: ListCollections passes (filtered)
        return OK if method == "ListCollections" else DENIED
    return OK if RANK[caller] >= RANK[need] else DENIED


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A secure local cluster: TLS, API keys on the coordinator, the cluster secret on the shards."""
    with LocalCluster(data=tmp_path_factory.mktemp("secure"), shards=2, secure=True) as c:
        yield c


@pytest.fixture(scope="module")
def tokens(secure: LocalCluster) -> dict[str, str]:
    """A key per caller kind."""
    assert secure.secrets is not None
    store = secure.key_store()  # the cluster's etcd
    made = {role: store.create(role)[0] for role in ("read", "write")}
    made["admin"] = secure.api_key or ""
    made["other"] = store.create("read", ["other"])[0]
    revoked, key = store.create("admin")
    store.revoke(key.id)
    made["revoked"] = revoked
    time.sleep(1.5)  # the coordinator follows etcd's keys by a watch
    return made


def _methods(channel: grpc.Channel, service: str) -> dict[str, Any]:
    """Every method of a service as the server's reflection lists it: name -> (input class, streaming in, out)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    full = f"shoal.v1.{service}"
    (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=full)]))
    pool = descriptor_pool.DescriptorPool()
    pending = list(reply.file_descriptor_response.file_descriptor_proto)
    while pending:  # dependencies come in the same answer; add them before the files that need them
        for raw in list(pending):
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            try:
                pool.Add(fd)
                pending.remove(raw)
            except TypeError:
                continue
    svc = pool.FindServiceByName(full)
    return {
        m.name: (message_factory.GetMessageClass(m.input_type), m.client_streaming, m.server_streaming)
        for m in svc.methods
    }


def _call(channel: grpc.Channel, service: str, name: str, spec: Any, metadata: Any) -> Any:
    """Call a method with a small request naming the collection "docs"; OK or the refusal's code."""
    cls, client_streaming, server_streaming = spec
    request = cls()
    for field in ("collection", "name"):
        if field in cls.DESCRIPTOR.fields_by_name:
            setattr(request, field, "docs")
    path = f"/shoal.v1.{service}/{name}"
    kinds = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }
    method = kinds[(client_streaming, server_streaming)](
        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b
    )
    argument = iter([request]) if client_streaming else request
    try:
        answer = method(argument, timeout=30, metadata=metadata)
        if server_streaming:
            list(answer)
    except grpc.RpcError as exc:
        return exc.code() if exc.code() in (UNAUTH, DENIED) else OK
    return OK


def test_access_table_of_every_method_and_caller(secure: LocalCluster, tokens: dict[str, str]) -> None:
    assert secure.secrets is not None
    with shoal.Client(secure.address, api_key=secure.api_key, tls=secure.tls) as admin:
        admin.create_collection("docs", dim=3)
        admin.upsert("docs", ids=[1, 2], vectors=np.eye(3, dtype=np.float32)[:2])
    secret = secure.secrets.cluster_secret.read_bytes().strip()
    seen: set[str] = set()
    got: dict[tuple[str, str, str], Any] = {}
    with _rpc.channel(secure.address, secure.tls) as channel:
        methods = _methods(channel, "Shoal")
        for caller in ("none", "read", "write", "admin", "other", "revoked"):
            metadata = api_key_metadata(tokens.get(caller))
            # Writes and drops before reads would empty "docs"; the order does not matter to the check itself.
            for name, spec in sorted(methods.items(), key=lambda kv: kv[0] == "DropCollection"):
                got["Shoal", name, caller] = _call(channel, "Shoal", name, spec, metadata)
        seen |= {f"/shoal.v1.Shoal/{n}" for n in methods}
    shard_tls = TLS(ca=secure.secrets.ca)
    with _rpc.channel(secure.shard_procs[0].address, shard_tls) as channel:
        methods = _methods(channel, "Shard")
        for caller, metadata in (
            ("none", ()),
            ("admin", api_key_metadata(tokens["admin"])),  # a user's key, even the admin's, is no membership
            ("member", cluster_metadata(secret)),
        ):
            for name, spec in sorted(methods.items(), key=lambda kv: kv[0] == "DropCollection"):
                got["Shard", name, caller] = _call(channel, "Shard", name, spec, metadata)
        seen |= {f"/shoal.v1.Shard/{n}" for n in methods}
    # A new RPC without a row in the server's table or in this test's fails here.
    assert seen == set(ACCESS) == {f"/shoal.v1.{s}/{m}" for s, ms in NEEDS.items() for m in ms}
    wrong = {k: v for k, v in got.items() if v != expected(*k)}
    assert not wrong, wrong
    assert {OK, UNAUTH, DENIED} == set(got.values()) and len(got) == 6 * 15 + 3 * 24


def test_a_key_limited_to_a_collection_sees_and_uses_only_it(secure: LocalCluster, tokens: dict[str, str]) -> None:
    with shoal.Client(secure.address, api_key=secure.api_key, tls=secure.tls) as admin:
        for n in ("other", "mine"):
            if n not in admin.list_collections():
                admin.create_collection(n, dim=3)
        admin.upsert("other", ids=[1], vectors=np.ones((1, 3), dtype=np.float32))
    with shoal.Client(secure.address, api_key=tokens["other"], tls=secure.tls) as limited:
        assert limited.list_collections() == ["other"]
        assert limited.count("other") == 1
        assert limited.search("other", np.ones(3), k=1).ids.tolist() == [[1]]
        with pytest.raises(shoal.PermissionDenied):
            limited.count("mine")
        with pytest.raises(shoal.PermissionDenied):
            list(limited.search_stream("mine", [np.ones(3)], k=1))
        with pytest.raises(shoal.PermissionDenied):
            limited.upsert("other", ids=[2], vectors=np.ones((1, 3), dtype=np.float32))  # a read key


def test_keys_cli_creates_lists_and_revokes_and_a_revoked_key_stops_within_seconds(secure: LocalCluster) -> None:
    assert secure.secrets is not None and secure.etcd is not None
    where = ["--data", str(secure.data)]  # the keys in the local cluster's etcd

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "shoal", "keys", *where, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)

    token = keys("create", "--role", "read", "--collections", "docs").stdout.strip().splitlines()[-1]
    assert token.startswith("shoal_") and token not in secure.secrets.keys.read_text()
    assert all(token not in repr(k.to_json()) for k in secure.key_store().list())  # stored only hashed
    key_id = token.split("_")[1]
    listed = keys("list").stdout
    assert key_id in listed and "read" in listed and "docs" in listed
    with shoal.Client(secure.address, api_key=token, tls=secure.tls) as c:
        deadline = time.monotonic() + 5
        while True:  # the coordinator sees the new key within a second or so
            try:
                c.list_collections()
                break
            except shoal.Unauthenticated:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        keys("revoke", key_id)
        revoked_at = time.monotonic()
        with pytest.raises(shoal.Unauthenticated):
            while time.monotonic() - revoked_at < 5:
                c.list_collections()
                time.sleep(0.1)
        assert time.monotonic() - revoked_at < 5
    assert "revoked" in keys("list").stdout


def test_keys_cli_manages_a_keys_file(tmp_path: Path) -> None:
    auth = tmp_path / "keys.json"

    def keys(*args: str) -> str:
        cmd = [sys.executable, "-m", "shoal", "keys", "--auth", str(auth), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout

    token = keys("create", "--role", "write").strip().splitlines()[-1]
    assert token.startswith("shoal_") and token not in auth.read_text()  # stored only hashed
    key_id = token.split("_")[1]
    assert key_id in keys("list") and "active" in keys("list")
    keys("revoke", key_id)
    assert FileKeyStore(auth).list()[0].revoked and "revoked" in keys("list")


@pytest.mark.slow
def test_a_key_revoked_in_etcd_stops_on_two_coordinators_within_seconds(secure: LocalCluster, tmp_path: Path) -> None:
    assert secure.coordinator is not None and secure.etcd is not None
    args = list(secure.coordinator.args)
    args[args.index("--listen") + 1] = "127.0.0.1:0"
    if "--metrics" in args:
        args[args.index("--metrics") + 1] = "127.0.0.1:0"
    second = Process("coordinator-2", args, tmp_path / "coordinator-2.log")
    second.start(60)
    try:
        store = secure.key_store()
        token, key = store.create("read")
        clients = [shoal.Client(address, api_key=token, tls=secure.tls) for address in (secure.address, second.address)]
        try:
            deadline = time.monotonic() + 10
            for c in clients:  # a new key reaches both coordinators through the watch
                while True:
                    try:
                        c.list_collections()
                        break
                    except (shoal.Unauthenticated, shoal.Unavailable):
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
            store.revoke(key.id)
            revoked_at = time.monotonic()
            for c in clients:
                with pytest.raises(shoal.Unauthenticated):
                    while time.monotonic() - revoked_at < 5:
                        c.list_collections()
                        time.sleep(0.05)
            assert time.monotonic() - revoked_at < 5
        finally:
            for c in clients:
                c.close()
    finally:
        second.stop()


def test_plaintext_and_wrong_ca_clients_fail_cleanly(secure: LocalCluster, tmp_path: Path) -> None:
    other = ensure_secrets(tmp_path / "other", ["127.0.0.1"])
    assert secure.secrets is not None
    cases = {
        "plaintext": False,
        "a server CA it does not trust": TLS(
            ca=other.ca, cert=secure.secrets.client_cert, key=secure.secrets.client_key
        ),
        "a client certificate of another CA": TLS(ca=secure.secrets.ca, cert=other.client_cert, key=other.client_key),
        "no client certificate": TLS(ca=secure.secrets.ca),
    }
    for what, tls in cases.items():
        with shoal.Client(secure.address, api_key=secure.api_key, tls=tls, timeout=10) as c:
            with pytest.raises(shoal.Unavailable):
                c.list_collections()
            assert what


def test_the_users_certificate_gets_no_shard_access(secure: LocalCluster) -> None:
    assert secure.secrets is not None
    with shoal.Client(secure.shard_procs[0].address, api_key=secure.api_key, tls=secure.tls) as c:
        with pytest.raises(grpc.RpcError) as info:
            shard_pb2_grpc.ShardStub(c._channel).ListCollections(
                pb.ListCollectionsRequest(), timeout=10, metadata=c._metadata
            )
        assert info.value.code() == DENIED


def test_backup_paths_must_stay_inside_the_backup_root(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    assert backup_folder(root, root / "b1") == (root / "b1").resolve()
    for bad in (root / ".." / "b2", tmp_path / "b3", root / "link" / "b4", root, Path("relative")):
        with pytest.raises(InvalidArgument):
            backup_folder(root, bad)
    with pytest.raises(FailedPrecondition):
        backup_folder(None, root / "b5")


def test_backup_escapes_are_invalid_argument_over_the_wire(secure: LocalCluster) -> None:
    assert secure.secrets is not None
    secret = cluster_metadata(secure.secrets.cluster_secret.read_bytes().strip())
    with _rpc.channel(secure.shard_procs[0].address, TLS(ca=secure.secrets.ca)) as channel:
        stub = shard_pb2_grpc.ShardStub(channel)
        for path in (str(secure.data / "backups" / ".." / "shard-1" / "x"), str(secure.data / "shard-1" / "x")):
            with pytest.raises(grpc.RpcError) as info:
                stub.Backup(shard_pb2.BackupRequest(path=path), timeout=30, metadata=secret)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
    assert not (secure.data / "shard-1" / "x").exists()


def test_unsafe_servers_need_insecure_and_warn(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    open_, keyed = ServerSecurity(), ServerSecurity(guard=Guard(cluster_secret=b"s"))
    check_safe("127.0.0.1:0", open_)
    check_safe("0.0.0.0:0", keyed)
    with pytest.raises(SystemExit, match="--insecure"):
        check_safe("0.0.0.0:0", open_)
    s = ensure_secrets(tmp_path / "s", [])
    check_safe("0.0.0.0:0", ServerSecurity(tls=ServerTLS(s.server_cert, s.server_key)))
    with caplog.at_level(logging.WARNING, logger="shoal.server"):
        check_safe("0.0.0.0:0", ServerSecurity(insecure=True))
    assert "WITHOUT TLS AND WITHOUT AUTHENTICATION" in caplog.text
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "shard", "--data", str(tmp_path / "d"), "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "--insecure" in out.stderr


@pytest.mark.slow
def test_the_cluster_suite_passes_on_a_secure_cluster() -> None:
    # The same tests, their session cluster started with --secure (TLS, API keys, the cluster secret).
    tests = Path(__file__).resolve().parent
    files = [str(tests / f) for f in ("test_cluster.py", "test_aio.py")]
    cmd = [sys.executable, "-m", "pytest", "-q", "--secure", "-m", "not slow", "-p", "no:cacheprovider", *files]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tests.parent)
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def _member_call(cluster: LocalCluster, address: str, name: str, request: Any, metadata: Any, tls: TLS) -> Any:
    """One unary or server-streaming Shard call over TLS; its answer (a list for a stream)."""
    with _rpc.channel(address, tls) as channel:
        answer = getattr(shard_pb2_grpc.ShardStub(channel), name)(request, timeout=10, metadata=metadata)
        return list(answer) if name == "ReadLog" else answer


@pytest.mark.slow
def test_a_secure_replicated_cluster_replicates_and_refuses_users_on_replication(tmp_path: Path) -> None:
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    with LocalCluster(data=tmp_path / "c", shards=1, replicas=2, secure=True) as c:
        assert c.secrets is not None
        member = (cluster_metadata(c.secrets.cluster_secret.read_bytes().strip()), TLS(ca=c.secrets.ca))
        with shoal.Client(c.address, api_key=c.api_key, tls=c.tls) as client:
            client.create_collection("docs", dim=8)
            client.upsert("docs", ids=np.arange(300), vectors=np.random.default_rng(0).random((300, 8), np.float32))
        # Acknowledged writes are on every in-sync member: the primary reached its replica over TLS.
        state = shard_pb2.ReplicaStateRequest()
        seqs = [_member_call(c, p.address, "ReplicaState", state, *member) for p in c.shard_procs]
        assert len({s.seq for s in seqs}) == 1 and seqs[0].seq > 0
        for proc in c.shard_procs:
            count = _member_call(c, proc.address, "Count", pb.CountRequest(collection="docs"), *member)
            assert count.count == 300
        user = (api_key_metadata(c.api_key), c.tls)
        assert c.tls is not None
        calls = {
            "ReplicaState": shard_pb2.ReplicaStateRequest(),
            "ReadLog": shard_pb2.ReadLogRequest(after=0),
        }
        for proc in c.shard_procs:
            for name, request in calls.items():
                for caller, code in ((user, DENIED), ((api_key_metadata(None), c.tls), UNAUTH)):
                    with pytest.raises(grpc.RpcError) as info:
                        _member_call(c, proc.address, name, request, *caller)
                    assert info.value.code() == code, (name, caller)
            # The stream a primary opens to its replicas: refused to a user's key and certificate too.
            with _rpc.channel(proc.address, c.tls) as channel:
                call = shard_pb2_grpc.ShardStub(channel).Replicate(
                    iter([shard_pb2.ReplicateRequest(term=1 << 40, primary="intruder")]),
                    timeout=10,
                    metadata=api_key_metadata(c.api_key),
                )
                with pytest.raises(grpc.RpcError) as info:
                    list(call)
                assert info.value.code() == DENIED
            assert _member_call(c, proc.address, "Count", pb.CountRequest(collection="docs"), *member).count == 300
        # The operator's view of the members works on a secure cluster: it asks them as a member would.
        shoal_cmd = [sys.executable, "-m", "shoal"]
        checked = subprocess.run([*shoal_cmd, "check", "--data", str(c.data)], capture_output=True, text=True)
        assert checked.returncode == 0 and "2 members identical (300 points)" in checked.stdout, checked.stdout
        env = {**os.environ, "SHOAL_API_KEY": c.api_key or "", "SHOAL_TLS_CA": str(c.secrets.ca)}
        env |= {"SHOAL_TLS_CERT": str(c.secrets.client_cert), "SHOAL_TLS_KEY": str(c.secrets.client_key)}
        status = subprocess.run(
            [*shoal_cmd, "status", "--address", c.address, "--data", str(c.data), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert status.returncode == 0, status.stderr
        [group] = json.loads(status.stdout)["groups"]
        assert sorted(m["state"] for m in group["members"]) == ["in-sync", "in-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_probe_port_answers_health_in_plaintext_and_nothing_else(tmp_path: Path) -> None:
    found = ensure_secrets(tmp_path / "secrets", ["127.0.0.1"])
    probe = f"127.0.0.1:{_free_port()}"
    args = ["shard", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--tls-cert", str(found.server_cert)]
    args += ["--tls-key", str(found.server_key), "--cluster-secret-file", str(found.cluster_secret)]
    shard = Process("shard", [*args, "--probe-listen", probe], tmp_path / "shard.log")
    shard.start(60)
    try:
        wait_serving(shard.address, 30, TLS(ca=found.ca))
        wait_serving(probe, 10)  # plaintext: what the kubelet and Docker's health check can speak
        secret = cluster_metadata(found.cluster_secret.read_bytes().strip())
        with _rpc.channel(probe) as channel, pytest.raises(grpc.RpcError) as info:  # even with the cluster secret
            shard_pb2_grpc.ShardStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=10, metadata=secret)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        shard.stop()


@pytest.mark.slow
def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(tmp_path: Path) -> None:
    old, new = ensure_secrets(tmp_path / "old", ["127.0.0.1"]), ensure_secrets(tmp_path / "new", ["127.0.0.1"])
    served = tmp_path / "served"
    served.mkdir()
    cert, key = served / "server.pem", served / "server.key"
    cert.write_bytes(old.server_cert.read_bytes())
    key.write_bytes(old.server_key.read_bytes())
    args = ["shard", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--tls-cert", str(cert)]
    args += ["--tls-key", str(key), "--cluster-secret-file", str(old.cluster_secret)]
    shard = Process("shard", args, tmp_path / "shard.log")
    shard.start(60)
    try:
        wait_serving(shard.address, 30, TLS(ca=old.ca))
        for source, target in ((new.server_key, key), (new.server_cert, cert)):  # renewed in place
            staged = target.with_suffix(".tmp")
            staged.write_bytes(source.read_bytes())
            staged.replace(target)
        time.sleep(0.05)
        wait_serving(shard.address, 10, TLS(ca=new.ca))  # a new connection gets the new certificate...
        with pytest.raises(shoal.Unavailable):  # ...which the old CA does not vouch for
            wait_serving(shard.address, 3, TLS(ca=old.ca))
        assert shard.popen is not None and shard.popen.poll() is None  # the same process throughout
    finally:
        shard.stop()
