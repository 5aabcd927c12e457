"""Which subscriber owns a public identity, and in which implicit registration set: the
``ims_identity_resolve`` hook, asked by the registrar (a REGISTER's To), the reg-event package (a
SUBSCRIBE's target) and the proxy (a terminating request's Request-URI, an originating request's
From).

The subscriber store offers the candidate (its record for the IMPU, if it has one); the plugins
decide. The builtin answer is the candidate's set that contains the IMPU (compared as
addresses-of-record); a vendor's plugin may resolve identities the store does not list — an alias,
a wildcard public service identity, a number range — to one of a subscriber's sets, naming the
subscriber by its IMPI. The answer is then mapped back to the subscriber's own records: the owner
is looked up by IMPI when it is not the candidate, and the set is the owner's set that contains the
first IMPU of the answer's set. An answer that names an unknown IMPI or a set the owner does not
have is logged at WARNING and counts as no answer.
"""

from __future__ import annotations

import logging
from typing import Any

from imscore.sip import Uri
from imscore.subscribers import ImplicitSet, Subscriber, SubscriberStore

__all__ = ["resolve_identity"]

log = logging.getLogger("imscore.registrar")


async def resolve_identity(
    plugins: Any,
    subscribers: SubscriberStore,
    uri: Uri,
    candidate: Subscriber | None,
) -> tuple[Subscriber, ImplicitSet] | None:
    """The owner of ``uri`` and the implicit set it belongs to, or ``None`` when it is unknown.

    :param plugins: the plugin manager (``ims_identity_resolve``).
    :param subscribers: the subscriber store (to find an owner the plugins name by IMPI).
    :param uri: the public identity.
    :param candidate: the subscriber the store (or authentication) offers for it, if any.
    """
    records = [candidate.hook_record()] if candidate is not None else []
    resolved = plugins.hook.ims_identity_resolve(impu=str(uri), subscribers=records)
    if resolved is None:
        return None
    impi = resolved.subscriber.impi
    if candidate is not None and impi == candidate.impi:
        owner: Subscriber | None = candidate
    else:
        owner = await subscribers.get_by_impi(impi)
    if owner is None:
        log.warning("ims_identity_resolve: %s resolved to unknown IMPI %r; ignored", uri, impi)
        return None
    implicit_set = owner.implicit_set_of(resolved.implicit_set[0]) if resolved.implicit_set else None
    if implicit_set is None:
        log.warning(
            "ims_identity_resolve: %s resolved to a set %s has not got (%r); ignored",
            uri,
            impi,
            resolved.implicit_set,
        )
        return None
    return owner, implicit_set
