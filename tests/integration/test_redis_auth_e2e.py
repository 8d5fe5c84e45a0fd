"""
Redis ACL users, passwords and TLS against a real redis-server started with
--tls-port and an ACL user; wrong credentials and TLS failures get a clear
message, never a traceback.
"""

import subprocess
import time

import pytest
import redis
from salt_job_retry import commands, config, redis_io, store

from tests.saltlab import _free_ports

JID = "20261122080000000001"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def self_signed_ca(common_name, stem, cwd):
    """<stem>.key and <stem>.crt: a throwaway CA named common_name."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={common_name}",
        "-keyout",
        f"{stem}.key",
        "-out",
        f"{stem}.crt",
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    self_signed_ca("jr-test-ca", "ca", cwd=d)
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
        cwd=d,
    )
    self_signed_ca("other-ca", "other", cwd=d)
    port = _free_ports(1)
    conf = d / "redis.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {d}/server.crt\ntls-key-file {d}/server.key\n"
        f"tls-ca-cert-file {d}/ca.crt\ntls-auth-clients no\nsave ''\nappendonly no\ndir {d}\n"
        "user default off\nuser jr on >s3cret ~* &* +@all\n"
    )
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            ssl=True,
            ssl_ca_certs=str(d / "ca.crt"),
            username="jr",
            password="s3cret",
            socket_timeout=1,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline and proc.poll() is None, "TLS redis-server did not come up"
                time.sleep(0.1)
        yield {"port": port, "dir": d}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def options(tls_redis, **extra):
    base = {
        "enabled": True,
        "redis_url": f"rediss://127.0.0.1:{tls_redis['port']}/0",
        "username": "jr",
        "password": "s3cret",
        "ssl_ca_certs": str(tls_redis["dir"] / "ca.crt"),
        "key_prefix": "tls",
        "socket_timeout": 2,
    }
    return {**base, **extra}


def test_acl_user_over_tls_records_and_claims(tls_redis):
    conf = config.load(options(tls_redis))
    s = store.Store(redis_io.connect(conf), conf)
    b = s.batch()
    s.stage_job(b, JID, redis_io.pack({"fun": "cmd.run", "arg": [], "time": 1.0}), 1.0, ["beta"])
    b.execute()
    s.note_starts("e1", {"beta": (int(time.time() * 1000), "100")})  # every script kind over TLS + ACL
    view = s.take("e1", "beta")
    assert [lk.state for lk in s.look("beta", view)] == ["owed"]
    claim = s.claim("beta", view, JID, 1.0)
    assert claim.state == "claimed" and claim.job["fun"] == "cmd.run"


def test_acl_user_in_the_url(tls_redis):
    url = f"rediss://jr:s3cret@127.0.0.1:{tls_redis['port']}/0"
    opts = {"job_retry": options(tls_redis, redis_url=url, username=None, password=None)}
    out = commands.invoke(opts, {}, "status", jid="20990101000000000000")
    assert "unknown jid" in out["error"]  # authenticated and answered


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"password": "wrong"}, "refused the credentials"),
        ({"username": None}, "refused the credentials"),  # the default user is off
        ({"ssl_ca_certs": "OTHER"}, "TLS with Redis at rediss://127.0.0.1:"),
    ],
)
def test_bad_credentials_and_tls_get_a_clear_error(tls_redis, change, message):
    if change.get("ssl_ca_certs") == "OTHER":
        change = {"ssl_ca_certs": str(tls_redis["dir"] / "other.crt")}
    out = commands.invoke({"job_retry": options(tls_redis, **change)}, {}, "pending")
    assert out["retcode"] == 1 and message in out["error"], out
    assert "s3cret" not in out["error"] and "Traceback" not in out["error"]


def test_plain_connection_to_a_tls_port_is_a_clear_error(tls_redis):
    out = commands.invoke(
        {"job_retry": options(tls_redis, redis_url=f"redis://127.0.0.1:{tls_redis['port']}/0")}, {}, "pending"
    )
    assert out["retcode"] == 1 and "Redis" in out["error"], out
