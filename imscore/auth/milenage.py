"""MILENAGE: the 3GPP example algorithm set f1, f1*, f2, f3, f4, f5, f5* (TS 35.205/35.206).

Written from the algorithm description in 3GPP TS 35.206 §4.1 and checked against the test data of
TS 35.207 and TS 35.208. The kernel is AES-128 (Rijndael with a 128-bit block and key), used here as a
single-block ECB encryption through the ``cryptography`` package.

Definitions (TS 35.206), all values 128 bits unless noted, ``E_K`` the kernel keyed with K::

    OPc    = OP xor E_K(OP)
    TEMP   = E_K(RAND xor OPc)
    IN1    = SQN || AMF || SQN || AMF                          (48 + 16 + 48 + 16 bits)
    OUT1   = E_K(TEMP xor rot(IN1 xor OPc, r1) xor c1) xor OPc
    OUTi   = E_K(rot(TEMP xor OPc, ri) xor ci) xor OPc          for i = 2..5

    f1  = MAC-A = OUT1[0..63]      f1* = MAC-S = OUT1[64..127]
    f5  = AK    = OUT2[0..47]      f2  = RES   = OUT2[64..127]
    f3  = CK    = OUT3             f4  = IK    = OUT4
    f5* = AK*   = OUT5[0..47]

with ``rot(x, r)`` a cyclic left rotation by r bits, r1..r5 = 64, 0, 32, 64, 96 and c1..c5 the
128-bit constants whose value is 0, 1, 2, 4, 8 (a single bit in the last octet, except c1 = 0).
All rotations are whole octets, so they are done on bytes.

The module is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["Milenage", "compute_opc"]

_BLOCK = 16

# (rotation in octets, constant c_i as its last octet) for OUT1..OUT5, TS 35.206 §4.1
_R1, _C1 = 64 // 8, 0
_R2, _C2 = 0 // 8, 1
_R3, _C3 = 32 // 8, 2
_R4, _C4 = 64 // 8, 4
_R5, _C5 = 96 // 8, 8


def _check_len(name: str, value: bytes, size: int) -> bytes:
    """Return ``value`` as ``bytes`` if it is ``size`` octets long, else raise ``ValueError``."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    data = bytes(value)
    if len(data) != size:
        raise ValueError(f"{name} must be {size} octets, got {len(data)}")
    return data


def _xor(a: bytes, b: bytes) -> bytes:
    """Octet-wise XOR of two equal-length byte strings."""
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _rot(x: bytes, octets: int) -> bytes:
    """Cyclic left rotation of a 16-octet block by ``octets`` whole octets."""
    return x[octets:] + x[:octets]


def _const(last: int) -> bytes:
    """The 128-bit constant c_i: all zero bits but the last octet."""
    return bytes(_BLOCK - 1) + bytes([last])


class _Kernel:
    """AES-128 single-block encryption E_K (the MILENAGE kernel)."""

    __slots__ = ("_encryptor",)

    def __init__(self, k: bytes) -> None:
        # ECB on exactly one block at a time is the plain block cipher; no chaining state is kept.
        self._encryptor = Cipher(algorithms.AES(k), modes.ECB()).encryptor()

    def __call__(self, block: bytes) -> bytes:
        out = self._encryptor.update(block)
        if len(out) != _BLOCK:  # pragma: no cover - ECB always returns a whole block here
            raise RuntimeError("AES kernel returned a partial block")
        return out


def compute_opc(k: bytes, op: bytes) -> bytes:
    """Derive OPc = OP xor E_K(OP) (TS 35.206 §4.1) from the 16-octet K and OP."""
    k = _check_len("K", k, 16)
    op = _check_len("OP", op, 16)
    return _xor(op, _Kernel(k)(op))


class Milenage:
    """MILENAGE for one subscriber: a key K and the operator variant (OP or OPc).

    :param k: the 16-octet subscriber key K.
    :param op: the 16-octet operator variant OP; OPc is derived from it.
    :param opc: the 16-octet OPc, when it is stored instead of OP.

    Exactly one of ``op`` and ``opc`` must be given. Every length is checked and a wrong one raises
    ``ValueError`` naming the field. Instances hold key material: do not log them.
    """

    __slots__ = ("_e", "_k", "_opc")

    def __init__(self, k: bytes, *, op: bytes | None = None, opc: bytes | None = None) -> None:
        if (op is None) == (opc is None):
            raise ValueError("give exactly one of op= and opc=")
        self._k = _check_len("K", k, 16)
        self._e = _Kernel(self._k)
        if op is not None:
            op = _check_len("OP", op, 16)
            self._opc = _xor(op, self._e(op))
        else:
            assert opc is not None
            self._opc = _check_len("OPc", opc, 16)

    def __repr__(self) -> str:
        return "Milenage(<key material hidden>)"

    @property
    def opc(self) -> bytes:
        """The 16-octet OPc in use (derived from OP when OP was given)."""
        return self._opc

    # --- internals -----------------------------------------------------------------------------

    def _temp(self, rand: bytes) -> bytes:
        return self._e(_xor(_check_len("RAND", rand, 16), self._opc))

    def _out1(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        sqn = _check_len("SQN", sqn, 6)
        amf = _check_len("AMF", amf, 2)
        temp = self._temp(rand)
        in1 = sqn + amf + sqn + amf
        block = _xor(_xor(temp, _rot(_xor(in1, self._opc), _R1)), _const(_C1))
        return _xor(self._e(block), self._opc)

    def _out(self, temp: bytes, r: int, c: int) -> bytes:
        block = _xor(_rot(_xor(temp, self._opc), r), _const(c))
        return _xor(self._e(block), self._opc)

    # --- the functions -------------------------------------------------------------------------

    def f1(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        """Network authentication function f1: the 8-octet MAC-A over RAND, SQN (6) and AMF (2)."""
        return self._out1(rand, sqn, amf)[:8]

    def f1_star(self, rand: bytes, sqn: bytes, amf: bytes) -> bytes:
        """Re-synchronisation message authentication function f1*: the 8-octet MAC-S."""
        return self._out1(rand, sqn, amf)[8:]

    def f2345(self, rand: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """Return ``(RES, CK, IK, AK)`` for a 16-octet RAND: f2 (8), f3 (16), f4 (16), f5 (6 octets)."""
        temp = self._temp(rand)
        out2 = self._out(temp, _R2, _C2)
        ck = self._out(temp, _R3, _C3)
        ik = self._out(temp, _R4, _C4)
        return out2[8:], ck, ik, out2[:6]

    def f5_star(self, rand: bytes) -> bytes:
        """Re-synchronisation anonymity key function f5*: the 6-octet AK* for a 16-octet RAND."""
        return self._out(self._temp(rand), _R5, _C5)[:6]
