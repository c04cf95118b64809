"""Joining a Ray cluster in seconds or saying why not, in one line (render-all, top-examples --engine ray).

    target = parse_address("ray://head:10001")   # None: start a local Ray here
    restore = check_cluster(target)               # reachable? a Ray? which token? -> CnnvisError, else
    ray.init(address=target.address, ...)         # with the auth mode the cluster wants, set for this process
    ...; ray.shutdown(); restore()                # RAY_AUTH_MODE as it was

`ray.init` alone retries a dead address for about 14 minutes, and fails on a token-protected cluster
(any `ray start` after a local Ray run made ~/.ray/auth_token) with "Failed to connect". So the address is
first probed with one TCP connect and one gRPC call (the GCS's GetClusterId, or the Ray Client server's
ping), each bounded by a few seconds, once without a token and, when the cluster asks for one, with this
machine's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, Ray's own lookup).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cnnvis.errors import CnnvisError, whole_number

CONNECT_S = 5.0  # one TCP connect
PROBE_S = 10.0  # one gRPC call to a GCS or a Ray Client server (they answer in milliseconds)
FORMS = ("HOST:PORT (the head's GCS, `ray start --head --port`, default 6379), ray://HOST:10001 (Ray Client) "
         "or auto (the cluster `ray start` made on this machine)")
CLIENT_MISSING = ("--address ray://... needs Ray Client, which is not installed: pip install 'cnnvis[ray]' "
                  "(or pip install 'ray[client]'), or give the head's GCS address HOST:PORT")
AUTH_MODE = "RAY_AUTH_MODE"


@dataclass(frozen=True)
class Target:
    """A cluster to join: `address` for ray.init, `host`:`port` to probe, `client` for ray://."""

    address: str
    host: str
    port: int
    client: bool
    shown: str  # as the user named it (--address, RAY_ADDRESS, auto)


def parse_address(address: str | None) -> Target | None:
    """--address (or RAY_ADDRESS when it is not given) -> a Target, or None for a local Ray started here.
    Raises CnnvisError for a malformed address, for ray:// without Ray Client, for `auto` with no cluster."""
    shown = address
    if not address:
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if not env:
            return None
        address, shown = env, f"{env} (from RAY_ADDRESS)"
    address = address.strip()
    if address == "local":
        return None
    if address == "auto":
        address = _find_local_cluster()
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or whole_number(port, signed=False, digits=5) is None or not 0 < int(port) < 65536 \
            or "/" in rest:
        raise CnnvisError(f"--address {shown!r} is not a Ray address; give {FORMS}")
    if client:
        check_client_installed()
    return Target(address=address, host=host, port=int(port), client=client, shown=shown)


def check_client_installed() -> None:
    """Ray Client (ray://) needs grpcio, Ray's [client] extra; CnnvisError naming the pip command if absent."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise CnnvisError(CLIENT_MISSING) from None


def _find_local_cluster() -> str:
    """`auto`: the GCS address the last `ray start` on this machine wrote (under RAY_TMPDIR, default /tmp).
    Not Ray's legacy fallback to any Ray process found running here: that may be another user's."""
    from ray._private.utils import read_ray_address

    found = read_ray_address(None)
    if not found:
        raise CnnvisError("--address auto: no Ray cluster was started on this machine (`ray start --head`); "
                          f"give {FORMS}, or leave --address out for a local Ray")
    return found


def wait_for(fn: Callable[[], object], seconds: float):
    """fn() in a daemon thread, waited for in short steps (so SIGTERM is handled at once) at most `seconds`:
    -> (True, its value) or (False, None) when it did not finish; its exception is raised here."""
    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e

    t = threading.Thread(target=call, daemon=True, name="cnnvis-ray-probe")
    t.start()
    end = time.monotonic() + seconds
    while t.is_alive() and time.monotonic() < end:
        t.join(0.1)
    if "error" in box:
        raise box["error"]
    return ("value" in box), box.get("value")


def reachable(host: str, port: int, timeout: float = CONNECT_S) -> str | None:
    """One TCP connect: None when something listens at host:port, else why not (refused, timed out, ...)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:.0f} s"
    except OSError as e:
        return e.strerror or type(e).__name__


def _grpc_ping(target: Target, metadata: tuple) -> tuple[str, str]:
    """One gRPC call: the GCS's GetClusterId (HOST:PORT) or Ray Client's ping (ray://) ->
    ("ok" | "auth" | "other", detail)."""
    import grpc

    ch = grpc.insecure_channel(f"{target.host}:{target.port}")
    try:
        if target.client:
            from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

            ray_client_pb2_grpc.RayletDriverStub(ch).ClusterInfo(
                ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING), timeout=PROBE_S,
                metadata=metadata)
        else:
            from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(ch).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=PROBE_S, metadata=metadata)
        return "ok", ""
    except grpc.RpcError as e:
        code = e.code() if callable(getattr(e, "code", None)) else None
        detail = (e.details() if callable(getattr(e, "details", None)) else str(e)) or str(code)
        return ("auth" if code == grpc.StatusCode.UNAUTHENTICATED else "other"), detail.splitlines()[0][:200]
    finally:
        ch.close()


def _gcs_client_ping(target: Target) -> tuple[str, str]:
    """Without grpcio: Ray's own GCS client (no token check; it waits up to 40 s, so run it in wait_for)."""
    from ray._raylet import GcsClient

    try:
        GcsClient(address=f"{target.host}:{target.port}", cluster_id=None)
    except Exception as e:  # noqa: BLE001 - any failure is "not a usable GCS"
        kind = "auth" if "auth" in type(e).__name__.lower() else "other"
        return kind, str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return "ok", ""


def _local_token() -> tuple | None:
    """This machine's Ray token as gRPC metadata (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token),
    or None (none there, or a Ray without token auth)."""
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        return None
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()
    if not loader.has_token(ignore_auth_mode=True):
        return None
    return tuple(loader.get_token_for_http_header(ignore_auth_mode=True).items())


def _set_auth_mode(mode: str | None) -> None:
    """RAY_AUTH_MODE for this process (and the Ray processes it starts), re-read by Ray's config."""
    if mode is None:
        os.environ.pop(AUTH_MODE, None)
    else:
        os.environ[AUTH_MODE] = mode
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def check_cluster(target: Target) -> Callable[[], None]:
    """Probe `target` (bounded: about CONNECT_S + 2 * PROBE_S at worst) and set the auth mode it needs.
    -> a function that puts RAY_AUTH_MODE back. Raises CnnvisError: nothing there, not a Ray, token refused."""
    where = f"{target.shown!r}" + (f" ({target.host}:{target.port})" if target.shown != target.address else "")
    kind_name = "Ray Client server" if target.client else "Ray cluster (GCS)"
    done, why = wait_for(lambda: reachable(target.host, target.port), CONNECT_S + 1)
    why = why if done else f"no answer within {CONNECT_S:.0f} s"
    if why is not None:
        raise CnnvisError(f"no {kind_name} at {where}: {why}; check --address: {FORMS}, or leave it out for a "
                          "local Ray")
    try:
        import grpc  # noqa: F401

        ping = _grpc_ping
    except ImportError:
        ping = lambda t, md: _gcs_client_ping(t)  # noqa: E731 - no token check without grpcio
    done, got = wait_for(lambda: ping(target, ()), PROBE_S + 2)
    if not done or got[0] == "other":
        detail = f" ({got[1]})" if done and got[1] else ""
        raise CnnvisError(f"something listens at {where} but it does not answer as a {kind_name} within "
                          f"{PROBE_S:.0f} s{detail}; check --address: {FORMS}")
    old = os.environ.get(AUTH_MODE)

    def restore() -> None:
        if os.environ.get(AUTH_MODE) != old:
            _set_auth_mode(old)

    if got[0] == "ok":
        if old is None:  # a cluster without tokens: never send one (its workers could not call back)
            _set_auth_mode("disabled")
        return restore
    token = _local_token()
    get = ("run `ray get-auth-token` on its head node and set RAY_AUTH_TOKEN=<that token> here (or save it "
           "as ~/.ray/auth_token)")
    if token is None:
        raise CnnvisError(f"the Ray cluster at {where} requires an authentication token and this machine has "
                          f"none: {get}")
    done, got = wait_for(lambda: ping(target, token), PROBE_S + 2)
    if not done or got[0] != "ok":
        raise CnnvisError(f"the Ray cluster at {where} refused this machine's authentication token (from "
                          "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, which any local Ray run "
                          f"creates): it was started with another one; {get}")
    _set_auth_mode("token")
    return restore
