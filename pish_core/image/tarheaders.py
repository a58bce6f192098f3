"""Tar headers, parsed here rather than by tarfile, whose TarInfo costs ~25 us a member (a fifth of an
unpack): ustar, GNU long names and base-256 numbers, pax records. ``members`` reads them through a
``TarReader``: ``unpack.py``'s stream reader, or ``untar.py``'s reader of a tar file by offset.
"""
from __future__ import annotations

import struct
import tarfile
from collections.abc import Iterator
from typing import Protocol


class TarReader(Protocol):
    """What ``members`` and ``Unpacker`` read a tar through: ``_Reader`` for a stream, or ``untar``'s
    ``_Headers`` for a tar file read by offset."""

    real: int  # the bytes there really are: a member's data must end before this

    def read(self, n: int) -> bytes: ...

    def skip(self, n: int) -> None: ...

    def take(self, n: int) -> list[memoryview]: ...

    def tell(self) -> int: ...


BLOCK = 512
_ZERO = bytes(BLOCK)
#: name, mode, uid, gid, size, mtime, checksum, type, linkname, magic+version, uname, gname, dev, prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s16s155s12x")
REG, HARDLINK, SYMLINK, CHR, BLK, DIR, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
REGULAR = {b"0", b"\0", b"7"}  # "7" is a contiguous file: a regular file everywhere but on old Masscomp
KINDS = {b"1", b"2", b"3", b"4", b"5", b"6"}
_LONGNAME, _LONGLINK, _PAX, _GLOBAL_PAX = b"L", b"K", b"x", b"g"
#: The most a GNU long name or a pax header may hold (PATH_MAX is 4096; GNU tar's own limit is larger).
_MAX_META = 1 << 20


class Member:
    """One tar member, as the unpacker needs it."""

    __slots__ = ("gid", "linkname", "mode", "mtime", "name", "offset_data", "size", "type", "uid")

    def __init__(self, name: str, type: bytes, mode: int, uid: int, gid: int, size: int, mtime: float,
                 linkname: str, offset_data: int) -> None:
        self.name, self.type, self.mode, self.uid, self.gid = name, type, mode, uid, gid
        self.size, self.mtime, self.linkname, self.offset_data = size, mtime, linkname, offset_data


def _str(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")  # as tarfile does on Linux


def _num(field: bytes, offset: int) -> int:
    if field[0] & 0x80:  # GNU base-256, for values octal cannot hold
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else n
    end = field.find(b"\0")
    try:
        return int((field if end < 0 else field[:end]).strip() or b"0", 8)
    except ValueError:
        raise tarfile.HeaderError(f"corrupt tar header at byte {offset}") from None


def _pax(data: bytes, offset: int) -> dict[str, str]:
    """The records of a pax extended header: ``"%d %s=%s\n" % (length, key, value)``."""
    out = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise tarfile.HeaderError(f"corrupt pax header at byte {offset}") from None
        record = data[space + 1:pos + length - 1]  # without the length and the final newline
        key, eq, value = record.partition(b"=")
        if length <= 0 or not eq or data[pos + length - 1:pos + length] != b"\n":
            raise tarfile.HeaderError(f"corrupt pax header at byte {offset}")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def members(reader: TarReader) -> Iterator[Member]:
    """The members of the tar ``reader`` reads, each positioned at its data; GNU long names and pax
    headers (path, linkpath, size, uid, gid, mtime) applied."""
    global_pax: dict[str, str] = {}
    pax: dict[str, str] = {}
    longname = longlink = None
    while True:
        offset = reader.tell()
        block = reader.read(BLOCK)
        if len(block) < BLOCK:  # no header: nothing at all is no archive, a short end is its end (as tarfile)
            if offset == 0:
                raise tarfile.ReadError("empty file" if not block else "truncated header")
            return
        if block == _ZERO:  # the end of the archive; at its start, an empty one (an image's empty layer)
            return
        (name, mode, uid, gid, size, mtime, chksum, kind, linkname, _magic, _uname, _gname, _dev,
         prefix) = _HEADER.unpack(block)
        want = _num(chksum, offset)
        if want != sum(block) - sum(block[148:156]) + 256 and want != _signed_sum(block):
            if offset == 0:
                raise tarfile.ReadError("bad checksum")
            raise tarfile.HeaderError(f"corrupt tar header at byte {offset} (bad checksum)")
        n = _num(size, offset)
        if n < 0:  # (base-256 can say so): the reader would step back and read a header again, forever
            raise tarfile.HeaderError(f"corrupt tar header at byte {offset} (a negative size)")
        if kind in (_LONGNAME, _LONGLINK, _PAX, _GLOBAL_PAX):
            if n > _MAX_META:
                raise tarfile.HeaderError(f"corrupt tar header at byte {offset} (a name or pax record of {n} bytes)")
            data = reader.read(n)
            reader.skip(-n % BLOCK)
            if kind == _LONGNAME:
                longname = _str(data)
            elif kind == _LONGLINK:
                longlink = _str(data)
            else:
                (pax if kind == _PAX else global_pax).update(_pax(data, offset))
            continue
        path = _str(name)
        if prefix[0] and kind not in (b"S",):  # ustar: a long name split in two
            path = f"{_str(prefix)}/{path}"
        m = Member(path, kind, _num(mode, offset), _num(uid, offset), _num(gid, offset), n, _num(mtime, offset),
                   _str(linkname), reader.tell())
        if kind == b"\0" and m.name.endswith("/"):
            m.type = DIR
        if longname is not None:
            m.name, longname = longname, None
        if longlink is not None:
            m.linkname, longlink = longlink, None
        if pax or global_pax:
            _apply_pax(m, {**global_pax, **pax}, offset)
            pax = {}
        if m.type == DIR:
            m.name = m.name.rstrip("/") or m.name
        yield m
        if m.type in REGULAR or m.type not in KINDS:  # what the unpacker did not read of its data
            left = m.offset_data + m.size - reader.tell()
            reader.skip(left + (-m.size % BLOCK))


def _signed_sum(block: bytes) -> int:
    """The header checksum as some old tars computed it, with signed chars."""
    return sum(b - 256 if b > 127 else b for i, b in enumerate(block) if not 148 <= i < 156) + 256


def _apply_pax(m: Member, pax: dict[str, str], offset: int) -> None:
    if any(k.startswith("GNU.sparse.") for k in pax):
        m.type = b"S"  # refused by the unpacker, as the old GNU sparse type is
    try:
        if "path" in pax:
            m.name = pax["path"]
        if "linkpath" in pax:
            m.linkname = pax["linkpath"]
        if "size" in pax:
            m.size = int(pax["size"])
            if m.size < 0:
                raise ValueError(m.size)
        if "uid" in pax:
            m.uid = int(pax["uid"])
        if "gid" in pax:
            m.gid = int(pax["gid"])
        if "mtime" in pax:
            m.mtime = float(pax["mtime"])
    except ValueError:
        raise tarfile.HeaderError(f"corrupt pax header at byte {offset}") from None
