"""A lab application server: what the S-CSCF's initial filter criteria send requests to.

It stands where a telephony, presence or voicemail AS would (TS 24.229 §5.7), with one of three
behaviours (:data:`imscore.lab.scenario.AS_BEHAVIOURS`):

* ``accept`` answers a third-party REGISTER with 200 OK, and sends every other request back to the
  S-CSCF as a proxy would: its own Route taken off (the next one is the S-CSCF's, with the
  original-dialog identifier), its Via on top, Max-Forwards one less; responses go back down the Vias;
* ``redirect`` does the same, but an initial INVITE goes back with the scenario's ``redirect_to`` as
  its Request-URI (an AS changing the target, §5.7.3), so the S-CSCF routes it there;
* ``silent`` never answers anything: the S-CSCF waits for the iFC's response timeout and applies its
  default handling (session continued or terminated).
"""

from __future__ import annotations

from imscore.sip import Request, Response, SipError, parse_uri

from .agents import Agent, Port, Tokens, _host, _via_target
from .scenario import AppServerSpec

__all__ = ["SimAppServer"]


class SimAppServer(Agent):
    """An application server of a lab scenario (see the module docstring)."""

    def __init__(
        self, spec: AppServerSpec, port: Port, server: tuple[str, int], tokens: Tokens
    ) -> None:
        super().__init__(spec.name, f"sip:{spec.name}@{_host(spec.address)}", port, server, tokens)
        self.spec = spec

    def on_request(self, request: Request, source: tuple[str, int]) -> None:
        if self.spec.behaviour == "silent":
            return
        if request.method == "REGISTER":  # a third-party registration (TS 24.229 §5.4.1.7)
            self.respond(request, 200)
            return
        try:
            self._forward(request)
        except SipError:
            self.respond(request, 400)

    def _forward(self, request: Request) -> None:
        request.headers.pop_first("Route")  # ours: the next one is the S-CSCF's
        initial = request.to.tag is None
        if self.spec.behaviour == "redirect" and request.method == "INVITE" and initial:
            assert self.spec.redirect_to is not None
            request.uri = parse_uri(self.spec.redirect_to)
        forwards = request.max_forwards
        request.headers.set("Max-Forwards", max(0, (70 if forwards is None else forwards) - 1))
        request.headers.prepend("Via", self.via())
        self.send(request, self.server)

    def on_response(self, response: Response) -> None:
        if self.spec.behaviour == "silent":
            return
        response.headers.pop_first("Via")  # ours; the next Via is where the request came from
        if response.headers.get("Via") is None:
            return
        self.send(response, _via_target(response))
