"""Globally Routable User Agent URIs (RFC 5627) as the registrar issues them and the proxy resolves
them, without any state of their own.

A device that registers with ``+sip.instance`` under ``Supported: gruu`` gets two GRUUs for its
instance in the 200 OK (§5.3):

* the **public GRUU**, the address-of-record with ``gr=`` the instance (angle brackets removed):
  ``sip:alice@ims.example.test;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6``. It is the same
  for an (AOR, instance) pair for ever, and reveals the AOR.
* a **temporary GRUU** ``sip:tgruu.TOKEN@ims.example.test;gr``, new on every REGISTER. ``TOKEN`` is
  the AOR, the instance, a digest of the REGISTER's Call-ID and its CSeq, encrypted and
  authenticated with AES-256-GCM under a key kept in the store (every node of a pool, and the
  server after a restart, reads the same one): nobody can make one or learn the AOR from it. It is
  valid while a binding of that instance is registered under the same Call-ID whose first CSeq is
  at most the token's and whose current CSeq is at least it (the binding's ``first-cseq`` kept in
  :attr:`StoredBinding.extra`, RFC 5628 §3): a de-registration, an expiry or a REGISTER with a new
  Call-ID (a rebooted device) ends every temporary GRUU issued before, as §5.3 asks. While valid,
  it reaches every binding (outbound flow) of the instance, as the public GRUU does.

The nonce of a token is derived from its contents (HMAC), not drawn: a retransmitted REGISTER gets
the same temporary GRUU, and a seeded lab run draws nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import sqlite3
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imscore.sip import SipError, SipUri, Uri, parse_uri

from .model import FIRST_CSEQ, StoredBinding

__all__ = [
    "GRUU_PARAM",
    "KEY_NAME",
    "TEMP_PREFIX",
    "GruuTarget",
    "Gruus",
    "first_cseq",
    "gruu_params",
    "public_gruu",
    "stored_key",
]

#: the URI parameter that marks a GRUU (RFC 5627 §3.1)
GRUU_PARAM: Final = "gr"
#: the user part of our temporary GRUUs starts with this
TEMP_PREFIX: Final = "tgruu."
#: the name of the key in the store (``secret:gruu`` in SQLite's meta table, a pool's Redis)
KEY_NAME: Final = "gruu"
_VERSION: Final = b"\x01"
_AAD: Final = b"imscore temp-gruu v1"
_UUID_PREFIX: Final = "urn:uuid:"


def public_gruu(aor: Uri | str, instance: str) -> str:
    """The public GRUU of ``instance`` (``<urn:...>`` or without brackets) at a SIP ``aor``."""
    uri = parse_uri(aor) if isinstance(aor, str) else aor
    bare = instance.strip().strip("<>")
    if not isinstance(uri, SipUri):
        raise ValueError(f"a public GRUU needs a SIP AOR, not {uri}")
    plain = SipUri(uri.host, uri.user, scheme=uri.spelling, port=uri.port)
    return f"{plain};{GRUU_PARAM}={bare}"


def stored_key(db: sqlite3.Connection) -> bytes | None:
    """The GRUU key of an SQLite store file when the server made one (read only, for
    ``imscore bindings``); ``None`` when there is none."""
    try:
        row = db.execute(
            "SELECT value FROM imscore_meta WHERE key = ?", (f"secret:{KEY_NAME}",)
        ).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else bytes.fromhex(str(row[0]))


def _pack_instance(instance: str) -> bytes:
    bare = instance.strip("<>")
    if bare.lower().startswith(_UUID_PREFIX):
        try:
            return b"\x01" + uuid.UUID(bare[len(_UUID_PREFIX) :]).bytes
        except ValueError:
            pass
    return b"\x00" + bare.encode("utf-8", "surrogateescape")


def _unpack_instance(data: bytes) -> str:
    if data[:1] == b"\x01" and len(data) == 17:
        return f"<{_UUID_PREFIX}{uuid.UUID(bytes=data[1:])}>"
    return f"<{data[1:].decode('utf-8', 'surrogateescape')}>"


def _call_digest(call_id: str) -> bytes:
    return hashlib.sha256(call_id.encode("utf-8", "surrogateescape")).digest()[:12]


@dataclass(frozen=True, slots=True)
class GruuTarget:
    """What a GRUU in a Request-URI names (:meth:`Gruus.target`).

    :param aor: the URI to look the user up by (the public GRUU without ``gr``, or the AOR key
        a temporary GRUU carries).
    :param instance: the ``+sip.instance`` it reaches, with its angle brackets.
    :param temporary: a temporary GRUU (its binding must be the one it was issued for).
    :param call_digest: the digest of the Call-ID it was issued under (temporary only).
    :param cseq: the CSeq of the REGISTER it was issued in (temporary only).
    """

    aor: str
    instance: str
    temporary: bool = False
    call_digest: bytes = b""
    cseq: int = 0

    def bindings(self, live: Sequence[StoredBinding]) -> list[StoredBinding]:
        """The bindings of ``live`` this GRUU reaches: the instance's; for a temporary GRUU, none
        unless the binding it was issued for (its Call-ID and CSeq range) is still among them.
        A valid one reaches all of the instance's bindings, as the public GRUU does, so an
        instance with several outbound flows (reg-ids, each its own Call-ID) is reached over
        whichever flow still works (RFC 5626 §5.3)."""
        mine = [b for b in live if b.instance_id == self.instance]
        if not self.temporary:
            return mine
        issued = any(
            hmac.compare_digest(_call_digest(b.call_id), self.call_digest)
            and first_cseq(b) <= self.cseq <= b.cseq
            for b in mine
        )
        return mine if issued else []


def first_cseq(binding: StoredBinding) -> int:
    """The CSeq the binding's current Call-ID started from (RFC 5628 ``first-cseq``)."""
    try:
        return int(binding.extra.get(FIRST_CSEQ, binding.cseq))
    except ValueError:
        return binding.cseq


class Gruus:
    """Issues and reads GRUUs under one key.

    :param key: 32 bytes, or a callable giving them on first use (a server that never issues a
        temporary GRUU draws no key).
    """

    def __init__(self, key: bytes | Callable[[], bytes]) -> None:
        self._key_source = key
        self._aead: AESGCM | None = None
        self._mac_key = b""

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            source = self._key_source
            key = source if isinstance(source, bytes) else source()
            self._aead = AESGCM(hmac.digest(key, b"imscore temp-gruu aes", "sha256"))
            self._mac_key = hmac.digest(key, b"imscore temp-gruu nonce", "sha256")
        return self._aead

    def temporary(self, binding: StoredBinding, domain: str | None = None) -> str | None:
        """The temporary GRUU issued for this binding as it stands (its Call-ID and CSeq): the
        same for the same REGISTER, another for the next; ``None`` without an instance. Its host
        is the AOR's domain (``domain`` when the AOR is no SIP URI)."""
        if binding.instance_id is None:
            return None
        try:
            aor_uri = parse_uri(binding.aor)
        except SipError:
            aor_uri = None
        if isinstance(aor_uri, SipUri):
            domain = aor_uri.host
        if domain is None:
            return None
        aead = self._cipher()
        aor = binding.aor.encode("utf-8", "surrogateescape")
        instance = _pack_instance(binding.instance_id)
        plain = (
            struct.pack("!IB", binding.cseq & 0xFFFFFFFF, len(instance))
            + instance
            + _call_digest(binding.call_id)
            + aor
        )
        nonce = hmac.digest(self._mac_key, plain, "sha256")[:12]
        token = _VERSION + nonce + aead.encrypt(nonce, plain, _AAD)
        text = base64.b32encode(token).decode("ascii").rstrip("=").lower()
        return f"sip:{TEMP_PREFIX}{text}@{domain};{GRUU_PARAM}"

    def target(self, uri: Uri) -> GruuTarget | None:
        """What a Request-URI that is a GRUU names; ``None`` when it is not a GRUU (no ``gr``).

        :raises LookupError: a temporary GRUU that is not one of ours (forged, damaged, made under
            another key), or a ``gr`` that names nothing: the request gets 404.
        """
        if not isinstance(uri, SipUri) or GRUU_PARAM not in uri.params:
            return None
        value = uri.params.get(GRUU_PARAM)
        user = uri.user_unescaped or ""
        if value:  # a public GRUU: the AOR and the instance
            plain = SipUri(uri.host, uri.user, scheme=uri.spelling, port=uri.port)
            return GruuTarget(plain.aor, f"<{value}>")
        if not user.startswith(TEMP_PREFIX):
            raise LookupError("a gr parameter without a value on a URI that is no temporary GRUU")
        return self._read(user[len(TEMP_PREFIX) :])

    def _read(self, text: str) -> GruuTarget:
        try:
            padded = text.upper() + "=" * (-len(text) % 8)
            token = base64.b32decode(padded)
        except ValueError:
            raise LookupError("not a temporary GRUU of ours") from None
        if len(token) < 1 + 12 + 16 + 5 or token[:1] != _VERSION:
            raise LookupError("not a temporary GRUU of ours")
        nonce, sealed = token[1:13], token[13:]
        try:
            plain = self._cipher().decrypt(nonce, sealed, _AAD)
        except InvalidTag:
            raise LookupError("not a temporary GRUU of ours (forged, or another key's)") from None
        cseq, size = struct.unpack("!IB", plain[:5])
        instance = _unpack_instance(plain[5 : 5 + size])
        digest = plain[5 + size : 17 + size]
        aor = plain[17 + size :].decode("utf-8", "surrogateescape")
        return GruuTarget(aor, instance, temporary=True, call_digest=digest, cseq=cseq)


def gruu_params(
    gruus: Gruus, binding: StoredBinding, impu: Uri, domain: str | None = None
) -> list[tuple[str, str]]:
    """The ``pub-gruu`` and ``temp-gruu`` Contact parameters (values quoted) of a binding with an
    instance, for a registration of ``impu`` (a tel IMPU gets the binding's SIP AOR); none
    without an instance."""
    if binding.instance_id is None:
        return []
    out: list[tuple[str, str]] = []
    aor: Uri | str = impu if isinstance(impu, SipUri) else binding.aor
    with contextlib.suppress(ValueError, SipError):
        out.append(("pub-gruu", f'"{public_gruu(aor, binding.instance_id)}"'))
    temporary = gruus.temporary(binding, domain)
    if temporary is not None:
        out.append(("temp-gruu", f'"{temporary}"'))
    return out
