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

from imscore.sip import ParseError, SipUri, TelUri, Uri
from imscore.sip.uri import parse_uri
from imscore.subscribers import ImplicitSet, Subscriber, SubscriberStore

__all__ = ["find_identity", "phone_number", "resolve_identity"]

log = logging.getLogger("imscore.registrar")


def phone_number(uri: Uri) -> TelUri | None:
    """The ``tel:`` URI a ``user=phone`` SIP URI stands for (RFC 3261 §19.1.6, TS 24.229
    §5.4.3.2: ``sip:+15551230001@ims.example.test;user=phone`` is ``tel:+15551230001``), else
    ``None``. Only global numbers (``+`` …) are taken: a local number needs a context the URI does
    not give."""
    if not isinstance(uri, SipUri) or uri.user is None or not uri.user.startswith("+"):
        return None
    if (uri.params.get("user") or "").lower() != "phone":
        return None
    number = (uri.user_unescaped or "").split(";", 1)[0]  # (a user part may carry tel parameters)
    try:
        tel = parse_uri(f"tel:{number}")
    except ParseError:
        return None
    return tel if isinstance(tel, TelUri) and tel.is_global else None


async def find_identity(subscribers: SubscriberStore, uri: Uri) -> tuple[Uri, Subscriber | None]:
    """The public identity ``uri`` names and the store's record of it: ``uri`` itself when the
    store knows it (a ``user=phone`` SIP URI may be listed as written), else the ``tel:`` number of
    a ``user=phone`` SIP URI when the store knows that, else ``uri`` with no record."""
    tel = phone_number(uri)
    for form in (uri,) if tel is None else (uri, tel):
        try:
            found = await subscribers.get_by_impu(form)
        except (ParseError, ValueError):
            continue
        if found is not None:
            return form, found
    return uri, None


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
