"""Step 2: check a candidate file before anything loads it.

A regular file, not world-writable, its sha256 recorded, and its binary format read from the header (Mach-O thin or
fat with its architectures, ELF with its machine, PE, or anything else) and compared with this host. Nothing here
loads or executes the file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Mach-O cpu types (mach/machine.h); the 64-bit flag is 0x01000000.
_MACHO_CPU = {7: "i386", 0x01000007: "x86_64", 12: "arm", 0x0100000C: "arm64", 0x0200000C: "arm64_32", 18: "ppc",
              0x01000012: "ppc64"}
_MACHO_FILETYPE = {1: "object", 2: "executable", 6: "dylib", 8: "bundle"}
# ELF e_machine values (elf.h).
_ELF_MACHINE = {3: "i386", 0x28: "arm", 0x3E: "x86_64", 0xB7: "arm64", 0xF3: "riscv", 0x15: "ppc64", 0x16: "s390x"}
_ELF_TYPE = {1: "relocatable", 2: "executable", 3: "shared object", 4: "core"}
_OS_NAMES = {"Darwin": "macOS", "Linux": "Linux", "Windows": "Windows"}


def normalize_arch(machine: str) -> str:
    """One name per architecture: ``aarch64``/``arm64`` -> ``arm64``, ``AMD64``/``x86_64`` -> ``x86_64``."""
    m = machine.lower()
    return {"aarch64": "arm64", "arm64": "arm64", "amd64": "x86_64", "x86_64": "x86_64", "x64": "x86_64"}.get(m, m)


@dataclass(frozen=True)
class Host:
    """What this machine is, as far as loading a native library goes (injectable in tests)."""

    system: str  # platform.system(): Darwin, Linux, Windows
    machine: str  # normalized: arm64, x86_64, ...

    @classmethod
    def current(cls) -> Host:
        return cls(platform.system(), normalize_arch(platform.machine()))

    @property
    def os_name(self) -> str:
        return _OS_NAMES.get(self.system, self.system)

    def __str__(self) -> str:
        return f"{self.os_name} {self.machine}"


@dataclass
class BinaryFormat:
    """What the header says the file is."""

    kind: str  # "mach-o", "mach-o-fat", "elf", "pe", "text", "unknown", "empty"
    os: str | None = None  # "macOS", "Linux", "Windows" when the format implies one
    archs: list[str] = field(default_factory=list)
    filetype: str | None = None  # dylib, bundle, shared object, executable, ...
    problem: str | None = None  # set when the header is unreadable or cut short

    def describe(self) -> str:
        if self.kind in ("mach-o", "mach-o-fat", "elf", "pe"):
            label = {"mach-o": "Mach-O", "mach-o-fat": "Mach-O universal", "elf": "ELF", "pe": "PE"}[self.kind]
            parts = [label, self.filetype or "", "/".join(self.archs)]
            return " ".join(p for p in parts if p)
        return self.kind


@dataclass
class FileCheck:
    """The verdict on one candidate file; ``ok`` means it may be loaded."""

    path: str
    ok: bool
    message: str
    sha256: str | None = None
    size: int | None = None
    mode: str | None = None
    format: BinaryFormat | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_of(path: str | os.PathLike[str]) -> str:
    return _head_and_sha256(path)[1]


def _head_and_sha256(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """The first 4 KiB (for :func:`parse_format`) and the sha256 of the whole file, in one read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        head = handle.read(4096)
        digest.update(head)
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return head, digest.hexdigest()


def parse_format(head: bytes, size: int) -> BinaryFormat:
    """The binary format from ``head``, the first bytes of a file of ``size`` bytes (header sizes checked)."""
    if size == 0:
        return BinaryFormat("empty", problem="the file is empty")
    magic4 = head[:4]
    if magic4 in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xfe\xed\xfa\xce"):
        return _parse_macho(head, size)
    if magic4 in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"):
        fat = _parse_fat(head, size)
        if fat is not None:
            return fat
    if magic4 == b"\x7fELF":
        return _parse_elf(head, size)
    if head[:2] == b"MZ":
        return BinaryFormat("pe", os="Windows")
    if _looks_like_text(head):
        return BinaryFormat("text", problem="it is a text file")
    return BinaryFormat("unknown", problem=f"unknown header {head[:8].hex(' ')}")


def _parse_macho(head: bytes, size: int) -> BinaryFormat:
    if len(head) < 28:
        return BinaryFormat("mach-o", os="macOS", problem=f"truncated: a Mach-O header needs 28 bytes, the file has {size}")
    little = head[:4] in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe")
    is64 = head[:4] in (b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf")
    endian = "<" if little else ">"
    cputype, _sub, filetype, _ncmds, sizeofcmds = struct.unpack(endian + "iIIII", head[4:24])
    header_size = 32 if is64 else 28
    fmt = BinaryFormat(
        "mach-o",
        os="macOS",
        archs=[_MACHO_CPU.get(cputype, f"cpu {cputype:#x}")],
        filetype=_MACHO_FILETYPE.get(filetype, f"type {filetype}"),
    )
    if header_size + sizeofcmds > size:
        fmt.problem = f"truncated: its load commands end at byte {header_size + sizeofcmds}, the file has {size}"
    return fmt


def _parse_fat(head: bytes, size: int) -> BinaryFormat | None:
    is64 = head[:4] == b"\xca\xfe\xba\xbf"
    if len(head) < 8:
        return BinaryFormat("mach-o-fat", os="macOS", problem=f"truncated: {size} bytes")
    (count,) = struct.unpack(">I", head[4:8])
    if count == 0 or count > 32:  # 0xcafebabe is also a Java class file; its "count" is a version number
        return None
    entry = 32 if is64 else 20
    archs: list[str] = []
    end = 0
    for i in range(count):
        start = 8 + i * entry
        if start + entry > len(head):
            return BinaryFormat("mach-o-fat", os="macOS", archs=archs, problem="truncated: the arch table is cut short")
        if is64:
            cputype, _sub, offset, length = struct.unpack(">iIQQ", head[start : start + 24])
        else:
            cputype, _sub, offset, length = struct.unpack(">iIII", head[start : start + 16])
        archs.append(_MACHO_CPU.get(cputype, f"cpu {cputype:#x}"))
        end = max(end, offset + length)
    fmt = BinaryFormat("mach-o-fat", os="macOS", archs=archs)
    if end > size:
        fmt.problem = f"truncated: its slices end at byte {end}, the file has {size}"
    return fmt


def _parse_elf(head: bytes, size: int) -> BinaryFormat:
    if len(head) < 52:
        return BinaryFormat("elf", os="Linux", problem=f"truncated: an ELF header needs 52+ bytes, the file has {size}")
    is64 = head[4] == 2
    endian = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack(endian + "HH", head[16:20])
    fmt = BinaryFormat(
        "elf",
        os="Linux",
        archs=[_ELF_MACHINE.get(e_machine, f"machine {e_machine:#x}")],
        filetype=_ELF_TYPE.get(e_type, f"type {e_type}"),
    )
    if is64:
        if len(head) < 64:
            fmt.problem = f"truncated: a 64-bit ELF header needs 64 bytes, the file has {size}"
            return fmt
        phoff, shoff = struct.unpack(endian + "QQ", head[32:48])
        phentsize, phnum, shentsize, shnum = struct.unpack(endian + "HHHH", head[54:62])
    else:
        phoff, shoff = struct.unpack(endian + "II", head[28:36])
        phentsize, phnum, shentsize, shnum = struct.unpack(endian + "HHHH", head[42:50])
    end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    if end > size:
        fmt.problem = f"truncated: its headers end at byte {end}, the file has {size}"
    return fmt


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def host_mismatch(fmt: BinaryFormat, host: Host) -> str | None:
    """Why a library of format ``fmt`` cannot load on ``host``, or None when it can."""
    built_for = f"{fmt.os} {'/'.join(fmt.archs)}".strip()
    if fmt.os == "macOS":
        if host.system != "Darwin":
            return f"built for {built_for}; Metal kernels need macOS on Apple Silicon (this host is {host})"
        if host.machine not in fmt.archs:
            return f"built for {built_for}; this host is {host} (Metal kernels need Apple Silicon)"
        return None
    if fmt.os != host.os_name:
        return f"built for {built_for}; this host is {host}"
    if fmt.archs and host.machine not in fmt.archs:
        return f"built for {built_for}; this host is {host}"
    return None


def check_file(path: str | os.PathLike[str], host: Host | None = None) -> FileCheck:
    """Check ``path`` before loading: regular, not world-writable, a shared library for this host."""
    host = host or Host.current()
    p = Path(path)
    try:
        st = p.stat()  # follows a symbolic link to what would be loaded
    except FileNotFoundError:
        return FileCheck(str(p), False, "missing")
    except OSError as exc:
        return FileCheck(str(p), False, f"cannot be read: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return FileCheck(str(p), False, "not a regular file")
    mode = oct(stat.S_IMODE(st.st_mode))
    try:
        head, digest = _head_and_sha256(p)
        fmt = parse_format(head, st.st_size)
    except OSError as exc:
        return FileCheck(str(p), False, f"cannot be read: {exc.strerror or exc}", size=st.st_size, mode=mode)
    check = FileCheck(str(p), False, "", sha256=digest, size=st.st_size, mode=mode, format=fmt)
    if st.st_mode & stat.S_IWOTH:
        check.message = f"world-writable (mode {mode}): anyone could replace the code; run `chmod o-w {p}`"
    elif fmt.kind not in ("mach-o", "mach-o-fat", "elf", "pe") or fmt.problem:
        what = fmt.problem or fmt.describe()
        check.message = f"not a shared library ({what})"
    elif fmt.filetype not in ("dylib", "bundle", "shared object", None) and fmt.kind != "pe":
        check.message = f"not a shared library (a {fmt.describe()})"
    elif (why := host_mismatch(fmt, host)) is not None:
        check.message = why
    else:
        check.ok = True
        check.message = f"{fmt.describe()}, matches this host ({host})"
    return check
