"""An immutable set of subscribers, looked up by private or public identity."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mypy_extensions import mypyc_attr

from imscore.sip import Uri

from .model import Subscriber, impi_key, impu_key

__all__ = ["SubscriberDirectory"]


@mypyc_attr(allow_interpreted_subclasses=True)  # (subclassed outside the compiled modules)
class SubscriberDirectory:
    """Subscribers in file order, found by IMPI or by any of their public identities.

    Look-ups by IMPU compare address-of-record keys (``uri.aor``): ``sip:alice@IMS.Example.Test`` finds
    ``sip:alice@ims.example.test``, ``tel:+1-555-123-0001`` finds ``tel:+15551230001``, and
    ``sip:+15551230003@ims.example.test`` finds the same IMPU written with ``;user=phone``. A ``tel:``
    URI and a ``sip:`` URI with the same number are different identities: each is found only if the
    subscriber lists it. A barred IMPU finds its owner too (see
    :class:`~imscore.subscribers.model.Subscriber`).

    Look-ups by IMPI compare the user part as written and the realm in any case.

    :param subscribers: the subscribers; an IMPI or a public identity may appear only once.
    :param source: where they came from (a file name), for messages; ``None`` when built in code.
    :raises ValueError: for a repeated IMPI or a public identity of two subscribers.
    """

    __slots__ = ("_by_impi", "_by_impu", "_subscribers", "source")

    def __init__(self, subscribers: Iterable[Subscriber] = (), *, source: str | None = None) -> None:
        self.source = source
        self._subscribers: tuple[Subscriber, ...] = tuple(subscribers)
        self._by_impi: dict[str, Subscriber] = {}
        self._by_impu: dict[str, Subscriber] = {}
        for subscriber in self._subscribers:
            key = impi_key(subscriber.impi)
            if key in self._by_impi:
                raise ValueError(f"IMPI {subscriber.impi} is listed twice")
            self._by_impi[key] = subscriber
            for aor in subscriber.aors:
                owner = self._by_impu.get(aor)
                if owner is not None:
                    raise ValueError(
                        f"public identity {aor} belongs to both {owner.impi} and {subscriber.impi}"
                    )
                self._by_impu[aor] = subscriber

    def by_impi(self, impi: str) -> Subscriber | None:
        """The subscriber with this private identity, or ``None``."""
        return self._by_impi.get(impi_key(impi))

    def by_impu(self, uri: Uri | str) -> Subscriber | None:
        """The subscriber owning this public identity (a URI, or text parsed as one), or ``None``
        (also for text that is not a URI)."""
        key = impu_key(uri)
        return None if key is None else self.by_key(key)

    def by_key(self, key: str) -> Subscriber | None:
        """:meth:`by_impu` for an address-of-record key (what
        :func:`~imscore.subscribers.model.impu_key` gives), without parsing anything."""
        return self._by_impu.get(key)

    def __iter__(self) -> Iterator[Subscriber]:
        return iter(self._subscribers)

    def __len__(self) -> int:
        return len(self._subscribers)

    def __repr__(self) -> str:
        origin = "" if self.source is None else f" from {self.source!r}"
        return f"<SubscriberDirectory: {len(self)} subscribers{origin}>"
