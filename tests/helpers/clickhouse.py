"""Local ClickHouse servers for the fleet tests: Debian's clickhouse-server started by hand
with a config written here (free ports, a temporary data directory, no system service),
optionally as shards of one cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from tests.helpers.ports import free_port

BINARY = "/usr/sbin/clickhouse-server"

USERS = """<?xml version="1.0"?>
<yandex>
 <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
 <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
  <profile>default</profile><quota>default</quota></default></users>
 <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
  <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
 </interval></default></quotas>
</yandex>
"""


class ClickHouse:
    """One server; `cluster` = {name: [native ports of its shards]} (one replica each)."""

    def __init__(self, root, cluster: dict | None = None, tcp_port: int | None = None):
        if not os.path.exists(BINARY):
            raise AssertionError(f"{BINARY} is missing: `make test` installs clickhouse-server "
                                 "(Makefile TEST_DEBS)")
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.tcp_port = tcp_port or free_port()
        self.http_port = free_port()
        self.url = f"clickhouse://127.0.0.1:{self.tcp_port}/apppaccap"
        self.cluster = cluster or {}
        self.proc = None

    def config(self) -> str:
        shards = "".join(
            f"<{name}>" + "".join(f"<shard><replica><host>127.0.0.1</host><port>{p}</port>"
                                  f"</replica></shard>" for p in ports) + f"</{name}>"
            for name, ports in self.cluster.items())
        r = self.root
        return f"""<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{r}/server.log</log><errorlog>{r}/error.log</errorlog>
    <size>10M</size><count>1</count></logger>
  <http_port>{self.http_port}</http_port>
  <tcp_port>{self.tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{r}/data/</path>
  <tmp_path>{r}/tmp/</tmp_path>
  <user_files_path>{r}/user_files/</user_files_path>
  <format_schema_path>{r}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <users_config>{r}/users.xml</users_config>
  <mlock_executable>false</mlock_executable>
  <remote_servers>{shards}</remote_servers>
</yandex>
"""

    def start(self) -> ClickHouse:
        with open(os.path.join(self.root, "config.xml"), "w") as fh:
            fh.write(self.config())
        with open(os.path.join(self.root, "users.xml"), "w") as fh:
            fh.write(USERS)
        out = open(os.path.join(self.root, "stdout.log"), "ab")
        self.proc = subprocess.Popen([BINARY, f"--config-file={self.root}/config.xml"],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=self.root)
        out.close()
        launched = time.monotonic()
        deadline = launched + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                (up,), = self.query("SELECT uptime()")
            except Exception:  # not listening yet
                time.sleep(0.1)
                continue
            # a server up for longer than ours has been running is another one, on a port
            # taken since free_port() chose it: ours cannot listen there
            assert up <= time.monotonic() - launched + 1, \
                f"port {self.tcp_port} answers for another clickhouse-server (up {up} s)"
            return self
        raise AssertionError("clickhouse-server did not start:\n" + self.log())

    def query(self, sql: str, params=None) -> list:
        from clickhouse_driver import Client
        client = Client(host="127.0.0.1", port=self.tcp_port, connect_timeout=2)
        try:
            # without parameters the text goes as it is (a % in it is no marker)
            return client.execute(sql, params) if params else client.execute(sql)
        finally:
            client.disconnect()

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (the fault the tests inject)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        text = ""
        for name in ("stdout.log", "error.log"):
            try:
                with open(os.path.join(self.root, name), errors="replace") as fh:
                    text += fh.read()[-2000:]
            except OSError:
                pass
        return text


def two_shards(root, cluster: str = "fleet") -> list:
    """Two servers, each knowing both as the shards of `cluster`."""
    ports = [free_port(), free_port()]
    nodes = [ClickHouse(os.path.join(str(root), f"ch{i}"), {cluster: ports}, port)
             for i, port in enumerate(ports)]
    for node in nodes:
        node.start()
    return nodes
