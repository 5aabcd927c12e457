"""A change of a public identity's registration state, as the registrar reports it.

The registrar tells whoever listens (``Registrar.on_registration``: the third-party registration
of :mod:`imscore.server.thirdparty`) after the store acknowledged a REGISTER that changed an
implicit set's bindings, and after bindings expired. The kinds are those of TS 29.228's
RegistrationType: ``initial`` (the set had no live binding before), ``re-registration`` (it had and
still has: a refresh, a device added or removed) and ``de-registration`` (none left).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from imscore.sip import Request, Response, Uri
from imscore.subscribers import ImplicitSet, Subscriber

__all__ = ["DEREGISTRATION", "INITIAL", "REREGISTRATION", "RegistrationChange"]

INITIAL: Final = "initial"
REREGISTRATION: Final = "re-registration"
DEREGISTRATION: Final = "de-registration"


@dataclass(frozen=True)
class RegistrationChange:
    """One registration event.

    :param kind: :data:`INITIAL`, :data:`REREGISTRATION` or :data:`DEREGISTRATION`.
    :param aor: the address-of-record key the set's bindings are filed under (its default IMPU).
    :param impi: the private identity the bindings belong to.
    :param expires: seconds the registration now lasts (the longest binding), 0 for a
        de-registration.
    :param cause: ``register`` (a REGISTER from the UE), ``expired`` or ``network`` (the S-CSCF
        de-registered the user itself).
    :param impu: the public identity the REGISTER named (its To), ``None`` without a REGISTER.
    :param subscriber: the subscriber, when the registrar had it at hand.
    :param implicit_set: the implicit registration set, when known.
    :param request: the UE's REGISTER, when there was one.
    :param response: the registrar's final response to it.
    :param interface: our listener the REGISTER came on, ``transport:host:port`` (``""``: none).
    """

    kind: str
    aor: str
    impi: str
    expires: int
    cause: str = "register"
    impu: Uri | None = None
    subscriber: Subscriber | None = None
    implicit_set: ImplicitSet | None = None
    request: Request | None = None
    response: Response | None = None
    interface: str = ""
