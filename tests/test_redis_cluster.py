"""The pool on a three-master Redis Cluster (``redis-server --cluster-enabled yes``, joined with
``redis-cli --cluster create``): keys hash-tagged by the implicit set's default IMPU, so every Lua
script touches one slot; register on A, call through B, bindings listed from all masters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from redis_support import DOMAIN, cluster_url, nodes, redis_cluster
from sipua import Caller, Phone

from imscore.registrar.redis_store import RedisBindingStore, open_redis_store
from imscore.sip import Request

ALICE = f"sip:alice@{DOMAIN}"


def test_register_on_a_call_through_b_on_a_redis_cluster(tmp_path: Path) -> None:
    with redis_cluster(tmp_path / "cluster") as servers:
        url = cluster_url(servers)
        with nodes(url, tmp_path, ["a", "b"]) as (a, b):
            carol = Phone(b.udp, "carol-desk", impi=f"carol@{DOMAIN}", password="carol-secret",
                          impu=f"sip:carol@{DOMAIN}")
            phones = [Phone(a.udp, "alice-desk"), carol]
            caller = Caller(b.udp)
            try:
                assert [phone.register().status for phone in phones] == [200, 200]
                caller.invite(ALICE)
                invite = phones[0].expect("INVITE")
                assert isinstance(invite, Request) and str(invite.uri) == phones[0].contact_uri
                phones[0].reply(invite, 486)
                assert caller.expect("final").status == 486  # type: ignore[union-attr]
                # carol's set through A, registered on B
                caller.server = a.udp
                caller.invite(f"sip:carol@{DOMAIN}")
                invite = phones[1].expect("INVITE")
                assert isinstance(invite, Request) and str(invite.uri) == phones[1].contact_uri
                phones[1].reply(invite, 486)
                assert caller.expect("final").status == 486  # type: ignore[union-attr]
            finally:
                for phone in phones:
                    phone.close()
                caller.close()
        # the keys of a set sit in the slot of its tag; `imscore bindings` reads every master
        slots = {s.cli("cluster", "keyslot", RedisBindingStore.key(ALICE)).strip() for s in servers}
        assert slots == {servers[0].cli("cluster", "keyslot", "{" + ALICE + "}").strip()}
        listed = subprocess.run(
            [sys.executable, "-m", "imscore", "bindings", "--store", url, "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        aors = {entry["aor"]: len(entry["bindings"]) for entry in json.loads(listed.stdout)["aors"]}
        assert aors == {ALICE: 1, f"sip:carol@{DOMAIN}": 1}

        async def versioned() -> None:  # and the version check works on a cluster too
            store = open_redis_store(url)
            try:
                bindings, version = await store.load_versioned(ALICE)
                assert await store.save_versioned(ALICE, bindings, version)
                assert not await store.save_versioned(ALICE, bindings, version)  # stale version
            finally:
                await store.close()

        asyncio.run(versioned())


def test_reg_event_news_and_a_relayed_flow_on_a_redis_cluster(tmp_path: Path) -> None:
    """On the Cluster too: a watcher on C hears of a registration made on A (news published in a
    slot's script, heard on the first master), and a call through B reaches the TCP device on A
    through A."""
    from test_redis_regevent import contacts
    from test_regevent_limits import _notifies, _subscribe

    with redis_cluster(tmp_path / "cluster") as servers:
        url = cluster_url(servers)
        with nodes(url, tmp_path, ["a", "b", "c"], transports=("udp", "tcp")) as (a, b, c):
            watcher = Phone(c.udp, "watcher")
            desk = Phone(a.tcp, "desk", transport="tcp")
            caller = Caller(b.udp)
            try:
                assert watcher.register().status == 200
                assert _subscribe(watcher) == 200
                time.sleep(0.5)
                assert desk.register().status == 200
                (notify,) = _notifies(watcher, 2.0)
                assert contacts(notify)[desk.contact_uri] == ("active", "registered")
                caller.invite(ALICE)
                rang = [desk.expect("INVITE"), watcher.expect("INVITE")]
                for phone, invite in zip((desk, watcher), rang, strict=True):
                    assert isinstance(invite, Request)
                    phone.reply(invite, 486)
                assert rang[0].top_via.port == a.tcp[1]  # sent down A's connection
                assert caller.expect("final").status == 486  # type: ignore[union-attr]
            finally:
                for agent in (watcher, desk, caller):
                    agent.close()
