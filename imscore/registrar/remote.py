"""A subscriber store that holds the credentials itself: an HSS reached over Cx (or alike).

An S-CSCF never sees a subscriber's K, OP or password: it asks the HSS for authentication vectors
(Digest-AKA) or an H(A1) (SIP Digest) per challenge, and tells it of each registration, which
answers with the user profile (TS 24.229 §5.4.1, TS 29.228 §6). A subscriber store that works this
way offers the :class:`RemoteAuthority` methods besides those of
:class:`~imscore.subscribers.SubscriberStore`; the registrar looks for them (duck typing, as for
:class:`~imscore.registrar.versioned.VersionedStore`) and then:

- hands the authenticator the vectors or H(A1) the store fetched (:class:`RemoteCredentials`), never
  the subscriber record's own credentials (which for such a store are a decoy nobody knows);
- asks the store to assign the user to this S-CSCF after a successful authentication, and takes the
  record it returns (the implicit set from the profile) for the rest of the REGISTER;
- reports de-registrations and expiries (:meth:`RemoteAuthority.registration_changed`).

Failures are exceptions that the registrar turns into SIP statuses: :class:`StoreUnavailable` is
``503`` with ``Retry-After``, :class:`StoreRefusal` carries its own status (``403``, ``404``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from imscore.auth.aka import AuthVector
from imscore.sip import Uri
from imscore.store import StoreError
from imscore.subscribers import Subscriber

from .change import RegistrationChange

__all__ = [
    "AKA",
    "DIGEST",
    "RemoteAuthority",
    "RemoteCredentials",
    "StoreRefusal",
    "StoreUnavailable",
    "is_remote",
]

AKA = "aka"
DIGEST = "digest"


class StoreUnavailable(StoreError):
    """The store (the HSS) cannot be reached or did not answer: a ``503`` with ``Retry-After``.

    A :class:`~imscore.store.StoreError`, so that a request other than REGISTER whose lookup
    fails (a terminating INVITE, a SUBSCRIBE) is answered ``503`` with ``Retry-After`` by the
    server too, not ``500``.

    :param reason: for the log and the reason phrase.
    :param retry_after: seconds the UE should wait.
    """

    def __init__(self, reason: str, retry_after: int = 30) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class StoreRefusal(Exception):
    """The store refused the user: the SIP status and reason phrase to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class RemoteCredentials:
    """What the store gave for one private identity: the scheme, and AKA vectors not yet sent or
    the H(A1) (hex) and realm of SIP Digest.

    :param scheme: :data:`AKA` or :data:`DIGEST`.
    :param vectors: AKA vectors, each to be sent once.
    :param ha1: the hex H(A1) for Digest.
    :param algorithm: the AKA algorithm the vectors were made for (``AKAv1-MD5`` / ``AKAv2-MD5``).
    :param realm: the realm the H(A1) was made with (the HSS's Digest-Realm), which the Digest
        challenge then names; ``None``: the registrar's own realm.
    """

    scheme: str
    vectors: list[AuthVector] = field(default_factory=list)
    ha1: str | None = None
    algorithm: str = "AKAv1-MD5"
    realm: str | None = None


class RemoteAuthority(Protocol):
    """The methods a credential-holding store adds (see the module's text)."""

    async def fetch_credentials(
        self,
        subscriber: Subscriber,
        impu: Uri,
        schemes: Sequence[str],
        *,
        aka_algorithm: str,
        resync: bytes | None = None,
    ) -> RemoteCredentials:
        """New credentials for ``subscriber`` registering ``impu`` (a MAR).

        :param schemes: the schemes the profile allows, preferred first.
        :param aka_algorithm: the AKA algorithm the profile challenges with.
        :param resync: RAND || AUTS when the UE asked for re-synchronisation.
        :raises StoreUnavailable: or :class:`StoreRefusal`.
        """
        ...

    async def assign(self, subscriber: Subscriber, impu: Uri) -> Subscriber:
        """Assign the authenticated user to this S-CSCF (a SAR: registration, or re-registration
        of a set the store knows registered here); the record with its profile.

        :raises StoreUnavailable: or :class:`StoreRefusal`.
        """
        ...

    def registration_changed(self, change: RegistrationChange) -> None:
        """A set was de-registered or expired (tell the HSS, in the background)."""
        ...


def is_remote(store: object) -> bool:
    """Whether ``store`` holds the credentials itself (has :meth:`RemoteAuthority.fetch_credentials`)."""
    return callable(getattr(store, "fetch_credentials", None))
