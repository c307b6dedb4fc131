"""Bit-level writer and bounds-checked reader for the NNR high-level syntax.

Implements the primitive codings of ISO/IEC 15938-17 as NNCodec uses them
(nnc-format §1.1): ``u(n)``, ``i(n)``, ``ue(k)`` (k-th order Exp-Golomb),
``ie(k)``, ``st`` (NUL-terminated UTF-8), ``flt(32)`` and
``byte_alignment()``. Bits are written most significant first.
"""

from __future__ import annotations

import struct

from flwr_nncodec.errors import NNCFormatError

__all__ = ["BitReader", "BitWriter"]

# An Exp-Golomb code whose prefix would make the value exceed this many bits
# is rejected: no field of the syntax needs more, and the cap keeps a hostile
# run of zero bits from building huge integers.
MAX_EXP_GOLOMB_BITS = 40


class BitWriter:
    """Append-only MSB-first bit writer."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._pending_value = 0  # bits not yet forming a whole byte
        self._pending_bits = 0  # always < 8

    @property
    def num_bits(self) -> int:
        """Number of bits written so far."""
        return 8 * len(self._bytes) + self._pending_bits

    @property
    def is_byte_aligned(self) -> bool:
        return self._pending_bits == 0

    def u(self, num_bits: int, value: int) -> None:
        """Write ``value`` as an unsigned ``num_bits``-bit field."""
        if num_bits <= 0:
            raise ValueError(f"u(n) needs n > 0, got {num_bits}")
        value = int(value)
        if not 0 <= value < (1 << num_bits):
            raise ValueError(f"value {value} does not fit in u({num_bits})")
        acc = (self._pending_value << num_bits) | value
        count = self._pending_bits + num_bits
        while count >= 8:
            count -= 8
            self._bytes.append((acc >> count) & 0xFF)
        self._pending_value = acc & ((1 << count) - 1)
        self._pending_bits = count

    def i(self, num_bits: int, value: int) -> None:
        """Write ``value`` as a ``num_bits``-bit two's-complement field."""
        value = int(value)
        low, high = -(1 << (num_bits - 1)), (1 << (num_bits - 1)) - 1
        if not low <= value <= high:
            raise ValueError(f"value {value} does not fit in i({num_bits})")
        self.u(num_bits, value & ((1 << num_bits) - 1))

    def ue(self, order: int, value: int) -> None:
        """Write ``value >= 0`` as a k-th order Exp-Golomb code (k = order)."""
        value = int(value)
        if value < 0:
            raise ValueError(f"ue({order}) needs a value >= 0, got {value}")
        while value >= (1 << order):
            self.u(1, 0)
            value -= 1 << order
            order += 1
        self.u(1, 1)
        if order > 0:
            self.u(order, value)

    def ie(self, order: int, value: int) -> None:
        """Write a signed value: v > 0 maps to 2v - 1, v <= 0 to -2v."""
        value = int(value)
        self.ue(order, 2 * value - 1 if value > 0 else -2 * value)

    def st(self, text: str) -> None:
        """Write UTF-8 bytes and a NUL terminator at a byte boundary."""
        if not self.is_byte_aligned:
            raise ValueError("st() must start at a byte boundary")
        data = text.encode("utf-8")
        if b"\x00" in data:
            raise ValueError(f"string {text!r} contains a NUL character")
        self._bytes.extend(data)
        self._bytes.append(0)

    def flt32(self, value: float) -> None:
        """Write a little-endian IEEE float32, byte by byte."""
        for byte in struct.pack("<f", value):
            self.u(8, byte)

    def byte_alignment(self) -> None:
        """Write a 1 bit, then 0 bits up to the next byte boundary.

        NOTE: this always adds at least one bit, so an aligned position
        gains a whole 0x80 byte (quirk Q12).
        """
        self.u(1, 1)
        if self._pending_bits:
            self.u(8 - self._pending_bits, 0)

    def raw_bytes(self, data: bytes) -> None:
        """Append whole bytes at a byte boundary."""
        if not self.is_byte_aligned:
            raise ValueError("raw bytes must start at a byte boundary")
        self._bytes.extend(data)

    def to_bytes(self) -> bytes:
        """Return the written bytes; the position must be byte-aligned."""
        if not self.is_byte_aligned:
            raise ValueError(f"{self.num_bits} bits written, not byte-aligned")
        return bytes(self._bytes)


class BitReader:
    """MSB-first bit reader over ``data[start:end]`` that never reads past end.

    Every read that would run past ``end`` raises :class:`NNCFormatError`
    naming ``unit`` and the absolute byte offset of the failed read.
    """

    def __init__(
        self, data: bytes, start: int = 0, end: int | None = None, unit: str = ""
    ) -> None:
        self._data = data
        self._end_bit = 8 * (len(data) if end is None else end)
        self._bit = 8 * start
        self.unit = unit

    @property
    def byte_offset(self) -> int:
        """Absolute offset of the byte holding the next bit."""
        return self._bit // 8

    @property
    def bits_left(self) -> int:
        return self._end_bit - self._bit

    @property
    def is_byte_aligned(self) -> bool:
        return self._bit % 8 == 0

    def error(self, message: str, offset: int | None = None) -> NNCFormatError:
        """Build an error for this unit at ``offset`` (default: here)."""
        where = self.byte_offset if offset is None else offset
        return NNCFormatError(message, unit=self.unit or None, offset=where)

    def u(self, num_bits: int, field: str) -> int:
        """Read an unsigned ``num_bits``-bit field named ``field``."""
        if num_bits > self.bits_left:
            raise self.error(
                f"data ends while reading {field} (u({num_bits}), "
                f"{self.bits_left} bits left)"
            )
        first_byte = self._bit // 8
        last_byte = (self._bit + num_bits - 1) // 8
        chunk = int.from_bytes(self._data[first_byte : last_byte + 1], "big")
        spare_bits = 8 * (last_byte + 1) - (self._bit + num_bits)
        self._bit += num_bits
        return (chunk >> spare_bits) & ((1 << num_bits) - 1)

    def i(self, num_bits: int, field: str) -> int:
        """Read a ``num_bits``-bit two's-complement field."""
        value = self.u(num_bits, field)
        if value >= 1 << (num_bits - 1):
            value -= 1 << num_bits
        return value

    def ue(self, order: int, field: str) -> int:
        """Read a k-th order Exp-Golomb code (k = order)."""
        start = self.byte_offset
        value = 0
        while self.u(1, field) == 0:
            value += 1 << order
            order += 1
            if order > MAX_EXP_GOLOMB_BITS:
                raise self.error(
                    f"{field}: Exp-Golomb prefix longer than {MAX_EXP_GOLOMB_BITS} "
                    "bits",
                    start,
                )
        if order > 0:
            value += self.u(order, field)
        return value

    def ie(self, order: int, field: str) -> int:
        """Read a signed Exp-Golomb code (inverse of :meth:`BitWriter.ie`)."""
        mapped = self.ue(order, field)
        return (mapped + 1) >> 1 if mapped & 1 else -(mapped >> 1)

    def st(self, field: str) -> str:
        """Read a NUL-terminated UTF-8 string starting at a byte boundary."""
        if not self.is_byte_aligned:
            raise self.error(f"{field}: string does not start at a byte boundary")
        start = self._bit // 8
        end = self._end_bit // 8
        nul = self._data.find(b"\x00", start, end)
        if nul < 0:
            raise self.error(f"data ends inside {field} (no NUL terminator)")
        try:
            text = bytes(self._data[start:nul]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"{field} is not valid UTF-8 ({exc.reason})") from None
        self._bit = 8 * (nul + 1)
        return text

    def flt32(self, field: str) -> float:
        """Read a little-endian IEEE float32 written byte by byte."""
        raw = bytes(self.u(8, field) for _ in range(4))
        return struct.unpack("<f", raw)[0]

    def byte_alignment(self, field: str = "byte_alignment") -> None:
        """Read a 1 bit and zero bits up to the next byte boundary (strict)."""
        start = self.byte_offset
        if self.u(1, field) != 1:
            raise self.error(f"{field}: alignment bit is 0, expected 1", start)
        padding_bits = (-self._bit) % 8
        if padding_bits and self.u(padding_bits, field) != 0:
            raise self.error(f"{field}: non-zero padding bits", start)

    def skip_bits(self, num_bits: int, field: str) -> None:
        """Skip ``num_bits`` bits (checked against the end)."""
        if num_bits > self.bits_left:
            raise self.error(f"data ends while skipping {field}")
        self._bit += num_bits
