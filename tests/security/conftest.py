"""A PRIVATE PostgreSQL and Redis speaking TLS only, with certificates from a throw-away CA,
started once per session by the project's `deploy/dev.sh` (SEPSTREAM_DEV_TLS_DIR). The
shared dev services are never touched: their plain connections stay as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.conftest import REPO, free_port
from tests.security.certs import CertAuthority

DEV_SH = REPO / "deploy" / "dev.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class TlsServices:
    dev_dir: Path
    tls_dir: Path
    pg_port: int
    redis_port: int

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SEPSTREAM_DEV_DIR": str(self.dev_dir),
            "SEPSTREAM_DEV_TLS_DIR": str(self.tls_dir),
            "SEPSTREAM_DEV_PG_PORT": str(self.pg_port),
            "SEPSTREAM_DEV_REDIS_PORT": str(self.redis_port),
            "SEPSTREAM_DEV_KAFKA_PORT": str(free_port()),
        }

    def dev(self, *args: str) -> None:
        subprocess.run(
            ["bash", str(DEV_SH), *args],
            env=self.env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def superuser_sql(self, sql: str) -> None:
        """Run SQL as the cluster's superuser over its unix socket (peer auth), as a DBA would."""
        sock = self.dev_dir / "postgres" / "run"
        cmd = [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(sock)]
        cmd += ["-p", str(self.pg_port), "-d", "sepstream", "-c", sql]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd, "-U", "postgres"]
        subprocess.run(cmd, check=True, cwd="/", capture_output=True)

    def settings(self, **overrides: object) -> Settings:
        """Verify-full TLS to both, as a production deployment would be configured."""
        values: dict[str, object] = {
            "pg_dsn": f"postgresql://sepstream@127.0.0.1:{self.pg_port}/sepstream",
            "pg_password": "sepstream",
            "pg_sslmode": "verify-full",
            "pg_sslrootcert": str(self.ca_file),
            "redis_url": f"rediss://127.0.0.1:{self.redis_port}/0",
            "redis_ca_file": str(self.ca_file),
            "namespace": f"s{uuid.uuid4().hex[:10]}",
        }
        return Settings.from_env({}, **{**values, **overrides})


@pytest.fixture(scope="session")
def tls_services() -> Iterator[TlsServices]:
    # short path: PostgreSQL's unix socket must fit in 107 bytes
    dev_dir = Path(tempfile.mkdtemp(prefix="septls-"))
    tls_dir = dev_dir / "tls"
    tls_dir.mkdir()
    ca = CertAuthority.create("sepstream test CA")
    ca.write_ca(tls_dir / "ca.crt")
    # The only name in the certificate is 127.0.0.1: `localhost` reaches the same server but
    # is a wrong host name, which verify-full must refuse.
    ca.issue_server(tls_dir / "server.crt", tls_dir / "server.key", ips=["127.0.0.1"])
    svc = TlsServices(dev_dir, tls_dir, free_port(), free_port())
    try:
        svc.dev("up", "postgres", "redis")
        # Creating the writer/reader roles needs CREATEROLE (the compose image's owner is a
        # superuser; the dev role is not).
        svc.superuser_sql("ALTER ROLE sepstream CREATEROLE")
        yield svc
    finally:
        try:
            svc.dev("down", "postgres", "redis")
        finally:
            shutil.rmtree(dev_dir, ignore_errors=True)


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the servers' certificates."""
    return CertAuthority.create("an unrelated CA").write_ca(tmp_path / "other-ca.crt")
