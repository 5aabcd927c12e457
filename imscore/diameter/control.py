"""The control socket of ``imscore hss``: HSS-initiated RTR and PPR on an operator's command.

``imscore hss --control PATH`` listens on a Unix stream socket (mode 0600: only its owner may use
it); ``imscore hss rtr --control PATH --impi IMPI`` and ``imscore hss ppr --control PATH --impi
IMPI`` each send one JSON line and print the JSON line answered. A Unix socket rather than a signal
because a command names a user and wants the S-CSCF's answer back; rather than a TCP port because
file permissions say who may de-register users.

- ``{"command": "rtr", "impi": ..., "reason": "permanent"}``: a Registration-Termination-Request
  (TS 29.228 §6.5.1) to the S-CSCF of each registered set of the IMPI (the Diameter peer that sent
  its SAR), with User-Name, every Public-Identity of the set and Deregistration-Reason
  { Reason-Code }; reasons ``permanent`` (PERMANENT_TERMINATION 0), ``new-server`` (1),
  ``server-change`` (2), ``remove-scscf`` (3). A set whose RTA says 2001 is not registered any more.
- ``{"command": "ppr", "impi": ...}``: the subscriber file is read again, then a Push-Profile-Request
  (§6.5.2) with the new User-Data goes to the S-CSCF of each registered set.

The answer: ``{"ok": true, "sent": [{"set": default IMPU, "peer": host, "result": [code, vendor]}]}``
or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Final

from imscore.diameter import dictionary as d
from imscore.diameter.codec import Avp
from imscore.diameter.hss import NOT_REGISTERED, REGISTERED, CxHss
from imscore.diameter.messages import cx_application_avp, result_of
from imscore.diameter.peer import DiameterPeerError
from imscore.diameter.server import HssServer
from imscore.diameter.userdata import user_data_xml
from imscore.subscribers import MemorySubscriberStore, SubscriberDirectory

__all__ = ["REASONS", "ControlServer", "send_control"]

log = logging.getLogger("imscore.diameter.control")

V: Final = d.VENDOR_3GPP
#: ``--reason`` names and their Reason-Code (TS 29.229 §6.3.17)
REASONS: Final = {
    "permanent": d.PERMANENT_TERMINATION,
    "new-server": d.NEW_SERVER_ASSIGNED,
    "server-change": d.SERVER_CHANGE,
    "remove-scscf": d.REMOVE_S_CSCF,
}
_MAX_LINE: Final = 4096


class ControlServer:
    """Serves the control socket for one :class:`HssServer`.

    :param server: the Diameter server (its connections reach the S-CSCFs).
    :param reload: reads the subscriber file again (for ``ppr``), or ``None``.
    """

    def __init__(
        self, server: HssServer, reload: Callable[[], SubscriberDirectory] | None = None
    ) -> None:
        self.server = server
        self.hss: CxHss = server.hss
        self.reload = reload
        self._unix: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        """Listen on ``path`` (an old socket file there is replaced)."""
        if os.path.exists(path):
            os.unlink(path)
        self._unix = await asyncio.start_unix_server(self._serve, path)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop listening."""
        if self._unix is not None:
            self._unix.close()
            await self._unix.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                order = json.loads(line[:_MAX_LINE] or b"null")
                reply = await self.run(order)
            except (ValueError, TypeError) as exc:
                reply = {"ok": False, "error": f"not a JSON command: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def run(self, order: Any) -> dict[str, Any]:
        """Carry out one command (see the module's text)."""
        if not isinstance(order, dict) or order.get("command") not in ("rtr", "ppr"):
            return {"ok": False, "error": 'expected {"command": "rtr" or "ppr", "impi": ...}'}
        impi = order.get("impi")
        if not isinstance(impi, str):
            return {"ok": False, "error": "impi: expected a private identity"}
        if order["command"] == "ppr" and self.reload is not None:
            try:
                directory = self.reload()
            except Exception as exc:  # the file's error, worded by the loader
                return {"ok": False, "error": f"reloading the subscribers: {exc}"}
            if isinstance(self.hss.store, MemorySubscriberStore):
                self.hss.store.directory = directory
        subscriber = await self.hss.store.get_by_impi(impi)
        if subscriber is None:
            return {"ok": False, "error": f"unknown private identity {impi!r}"}
        reason = order.get("reason", "permanent")
        if order["command"] == "rtr" and reason not in REASONS:
            return {"ok": False, "error": f"reason: expected one of {', '.join(REASONS)}"}
        sent: list[dict[str, Any]] = []
        for implicit_set in subscriber.implicit_sets:
            state = self.hss.assignment(subscriber, implicit_set)
            if state.state != REGISTERED or state.peer_host is None:
                continue
            common = [
                cx_application_avp(),
                Avp.u32(d.AUTH_SESSION_STATE, d.NO_STATE_MAINTAINED),
                Avp.utf8(d.DESTINATION_HOST, state.peer_host),
                Avp.utf8(d.USER_NAME, subscriber.impi),
            ]
            if order["command"] == "rtr":
                command = d.RTR
                avps = [
                    *common,
                    *(Avp.utf8(d.PUBLIC_IDENTITY, str(u), V) for u in implicit_set),
                    Avp.group(d.DEREGISTRATION_REASON, [Avp.u32(d.REASON_CODE, REASONS[reason], V)], V),
                ]
            else:
                command = d.PPR
                data = user_data_xml(subscriber, implicit_set)
                avps = [*common, Avp.octets(d.USER_DATA, data, V)]
            entry: dict[str, Any] = {"set": str(implicit_set.default), "peer": state.peer_host}
            try:
                reply = await self.server.push(state.peer_host, command, avps)
            except DiameterPeerError as exc:
                entry["error"] = str(exc)
            else:
                result = result_of(reply)
                entry["result"] = list(result) if result is not None else None
                if command == d.RTR and result == (d.SUCCESS, 0):
                    state.state, state.server_name, state.peer_host = NOT_REGISTERED, None, None
            log.info("%s for %s: %s", d.command_name(command, True), implicit_set.default, entry)
            sent.append(entry)
        return {"ok": True, "sent": sent}


async def _exchange(path: str, order: dict[str, Any], timeout: float) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    try:
        writer.write(json.dumps(order).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    answer: dict[str, Any] = json.loads(line)
    return answer


def send_control(path: str, order: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Send one command to a running ``imscore hss --control PATH``; its answer.

    :raises OSError: nothing listens on ``path``.
    """
    return asyncio.run(_exchange(path, order, timeout))
