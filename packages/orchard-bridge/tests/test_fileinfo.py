"""Step 2: the file check refuses what must not be loaded, each with its own message."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
import torch
from orchard_bridge.fileinfo import BinaryFormat, Host, check_file, host_mismatch, normalize_arch, parse_format

LINUX_X86 = Host("Linux", "x86_64")
MAC_ARM = Host("Darwin", "arm64")
MAC_INTEL = Host("Darwin", "x86_64")


def macho_arm64_dylib() -> bytes:
    """A Mach-O 64-bit arm64 dylib header (no load commands), padded to a plausible size."""
    header = struct.pack("<IiIIIIII", 0xFEEDFACF, 0x0100000C, 0, 6, 0, 0, 0, 0)
    return header + b"\x00" * 4096


def fat_header(*cputypes: int) -> bytes:
    entries = b"".join(struct.pack(">iIIII", cpu, 0, 4096 * (i + 1), 64, 12) for i, cpu in enumerate(cputypes))
    return struct.pack(">II", 0xCAFEBABE, len(cputypes)) + entries


def real_library() -> Path:
    """A genuine shared library for this host: torch's own extension module."""
    return Path(torch._C.__file__)


def test_text_file_named_dylib_is_not_a_shared_library(tmp_path):
    path = tmp_path / "libflash_attn.dylib"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 421120\n")
    check = check_file(path, LINUX_X86)
    assert not check.ok
    assert check.message == "not a shared library (it is a text file)"
    assert check.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_truncated_library_is_not_a_shared_library(tmp_path):
    path = tmp_path / "libflash_attn.dylib"
    path.write_bytes(real_library().read_bytes()[:4096])
    check = check_file(path)
    assert not check.ok
    assert check.message.startswith("not a shared library (truncated:")


def test_a_few_bytes_of_a_library_is_truncated(tmp_path):
    path = tmp_path / "libflash_attn.dylib"
    path.write_bytes(real_library().read_bytes()[:20])
    assert "truncated" in check_file(path).message


def test_macho_arm64_on_linux_is_refused_with_the_platform_reason(tmp_path):
    path = tmp_path / "libflash_attn.dylib"
    path.write_bytes(macho_arm64_dylib())
    check = check_file(path, LINUX_X86)
    assert not check.ok
    assert check.format.kind == "mach-o" and check.format.archs == ["arm64"] and check.format.filetype == "dylib"
    assert check.message == (
        "built for macOS arm64; Metal kernels need macOS on Apple Silicon (this host is Linux x86_64)"
    )


def test_macho_arm64_on_apple_silicon_passes_and_on_intel_mac_is_refused(tmp_path):
    path = tmp_path / "libflash_attn.dylib"
    path.write_bytes(macho_arm64_dylib())
    assert check_file(path, MAC_ARM).ok
    refused = check_file(path, MAC_INTEL)
    assert not refused.ok and "Apple Silicon" in refused.message and "macOS x86_64" in refused.message


def test_world_writable_copy_is_refused(tmp_path):
    path = tmp_path / "libflash_attn.dylib"
    path.write_bytes(real_library().read_bytes())
    path.chmod(0o666)
    check = check_file(path)
    assert not check.ok
    assert check.message.startswith("world-writable (mode 0o666)") and "chmod o-w" in check.message
    path.chmod(0o644)
    assert check_file(path).ok, check_file(path).message


def test_real_library_of_this_host_passes_with_its_format_and_hash(tmp_path):
    lib = real_library()
    check = check_file(lib)
    assert check.ok, check.message
    assert check.sha256 == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert check.format.kind in ("elf", "mach-o", "mach-o-fat")
    assert Host.current().machine in check.format.archs


def test_missing_and_directory(tmp_path):
    assert check_file(tmp_path / "nope.dylib").message == "missing"
    assert check_file(tmp_path).message == "not a regular file"


def test_empty_and_binary_junk(tmp_path):
    empty = tmp_path / "empty.dylib"
    empty.write_bytes(b"")
    assert check_file(empty).message == "not a shared library (the file is empty)"
    junk = tmp_path / "junk.dylib"
    junk.write_bytes(b"\x00\x01\x02\x03" * 64)
    assert check_file(junk).message.startswith("not a shared library (unknown header 00 01 02 03")


def test_fat_binary_lists_its_archs():
    fmt = parse_format(fat_header(0x01000007, 0x0100000C), 10_000)
    assert fmt.kind == "mach-o-fat" and fmt.archs == ["x86_64", "arm64"] and fmt.problem is None
    assert host_mismatch(fmt, MAC_ARM) is None
    assert "Metal kernels need macOS" in host_mismatch(fmt, LINUX_X86)
    cut = parse_format(fat_header(0x0100000C), 100)
    assert cut.problem and cut.problem.startswith("truncated")


def test_java_class_is_not_mistaken_for_a_fat_binary():
    head = struct.pack(">IHH", 0xCAFEBABE, 0, 52) + b"\x00" * 40
    assert parse_format(head, 1000).kind != "mach-o-fat"


@pytest.mark.parametrize(
    ("fmt", "host", "expected"),
    [
        (BinaryFormat("elf", os="Linux", archs=["arm64"]), LINUX_X86, "built for Linux arm64; this host is Linux x86_64"),
        (BinaryFormat("elf", os="Linux", archs=["x86_64"]), MAC_ARM, "built for Linux x86_64; this host is macOS arm64"),
        (BinaryFormat("elf", os="Linux", archs=["x86_64"]), LINUX_X86, None),
    ],
)
def test_host_mismatch(fmt, host, expected):
    assert host_mismatch(fmt, host) == expected


def test_normalize_arch():
    assert normalize_arch("aarch64") == normalize_arch("arm64") == "arm64"
    assert normalize_arch("AMD64") == normalize_arch("x86_64") == "x86_64"


def test_the_hash_covers_the_header_and_every_chunk(tmp_path):
    """One read gives the header and the digest: files under, at and over the 4 KiB head and 1 MiB chunks."""
    from orchard_bridge.fileinfo import sha256_of

    for size in (0, 10, 4096, 4097, (1 << 20) + 4096 + 3):
        path = tmp_path / f"f{size}"
        path.write_bytes(os.urandom(size))
        assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest(), size
