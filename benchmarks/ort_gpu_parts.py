"""onnxruntime-gpu for a machine that cannot download it, in parts small enough to travel one per call.

    python benchmarks/ort_gpu_parts.py pack .whl              # here: download, keep one GPU architecture, pack
    python benchmarks/ort_gpu_parts.py unpack DIR SITE        # there: DIR holds the parts; SITE goes on PYTHONPATH

The lent GPU machine (DEVELOPERS.md) has torch with CUDA 13 but only the CPU build of onnxruntime, no
network, and takes 64 MiB of files per call. The onnxruntime-gpu wheel for CUDA 13 is 255 MB, nearly all of
it the CUDA provider's kernels compiled for seven GPU architectures (sm_75 to sm_120). `pack` keeps the
kernels of one architecture (sm_90, the H100/H200, by default), which leaves the library whole and
loadable, and writes two xz parts: the CUDA provider library (49 MiB), and the rest of the wheel (7 MiB),
which with this checkout fit one call.
`unpack` puts them back together as an importable package folder (pip install --target's layout).

How the pruning works: the provider's kernels sit in the ELF section `.nv_fatbin`, a run of fat binaries
(magic 0xBA55ED50), each a header and entries that each hold one architecture's cubin. The CUDA runtime
registers each fat binary by its address and, when a kernel is first launched, loads the entry for the
GPU it runs on. Entries for other architectures are dropped from each fat binary's entry list in place
(its size field shrunk, the bytes after zeroed), so every address stays where it was. A fat binary with no
entry for the kept architecture is left as it is: its kernels cannot run on that GPU either way.
"""

from __future__ import annotations

import argparse
import io
import lzma
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "onnxruntime-gpu==1.31.1"  # the release built for CUDA 13
CUDA_LIB = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
# left out: TensorRT's provider (no TensorRT there) and the C API library, which the Python module does not load
# (its pybind11 extension holds the runtime itself): 29 MB that would not fit the call
LEFT_OUT = ("onnxruntime/capi/libonnxruntime_providers_tensorrt.so", "onnxruntime/capi/libonnxruntime.so.1.31.1")
FATBIN_MAGIC = 0xBA55ED50
CUDA_PART, REST_PART = "ort-gpu-cuda.so.xz", "ort-gpu-rest.tar.xz"


def elf_section(data: bytes | bytearray, name: str) -> tuple[int, int]:
    """(file offset, size) of a section of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    for name_off, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", strtab + name_off)
        if data[strtab + name_off : end].decode() == name:
            return offset, size
    raise ValueError(f"no section {name}")


def fatbins(data: bytes | bytearray, offset: int, size: int):
    """(position, header size, body size) of each fat binary in the section at `offset`."""
    pos, end = offset, offset + size
    while pos + 16 <= end:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:  # alignment padding between fat binaries
            pos += 8
            continue
        yield pos, header_size, fat_size
        pos += header_size + fat_size


def entries(data: bytes | bytearray, body: int, body_size: int):
    """(position, length, sm architecture) of each entry of one fat binary's body."""
    pos = body
    while pos < body + body_size:
        _kind, _version, header_size, payload = struct.unpack_from("<HHIQ", data, pos)
        yield pos, header_size + payload, struct.unpack_from("<I", data, pos + 28)[0]
        pos += header_size + payload


def entries_per_sm(data: bytes | bytearray) -> dict[int, int]:
    """How many entries each architecture has in an ELF file's `.nv_fatbin`."""
    offset, size = elf_section(data, ".nv_fatbin")
    per_sm: dict[int, int] = {}
    for pos, header_size, fat_size in fatbins(data, offset, size):
        for _pos, _length, sm in entries(data, pos + header_size, fat_size):
            per_sm[sm] = per_sm.get(sm, 0) + 1
    return per_sm


def prune_fatbins(data: bytearray, keep_sm: int) -> int:
    """Drop every entry not built for `keep_sm` from `.nv_fatbin`, in place; return how many fat binaries
    had no entry for it (left as they were)."""
    offset, size = elf_section(data, ".nv_fatbin")
    without = 0
    for pos, header_size, fat_size in list(fatbins(data, offset, size)):
        body = pos + header_size
        kept = [bytes(data[p : p + n]) for p, n, sm in entries(data, body, fat_size) if sm == keep_sm]
        if not kept:
            without += 1
            continue
        blob = b"".join(kept)
        data[body : body + fat_size] = blob + bytes(fat_size - len(blob))
        struct.pack_into("<Q", data, pos + 8, len(blob))
    return without


def pack(wheel: Path, dest: Path, keep_sm: int = 90) -> list[Path]:
    """The two parts of `wheel` in `dest`: its CUDA provider (pruned to `keep_sm`), and the rest."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        cuda = bytearray(z.read(CUDA_LIB))
        before = entries_per_sm(cuda)
        without = prune_fatbins(cuda, keep_sm)
        after = entries_per_sm(cuda)
        print(f"{CUDA_LIB}: entries per sm before {dict(sorted(before.items()))}, after {dict(sorted(after.items()))}; "
              f"{without} fat binaries had no sm_{keep_sm} entry (left as they were)")
        (dest / CUDA_PART).write_bytes(lzma.compress(bytes(cuda), preset=9 | lzma.PRESET_EXTREME))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for info in z.infolist():
                if info.is_dir() or info.filename == CUDA_LIB or info.filename in LEFT_OUT:
                    continue
                member = tarfile.TarInfo(info.filename)
                member.size, member.mode = info.file_size, 0o755 if info.filename.endswith(".so") or ".so." in info.filename else 0o644
                tar.addfile(member, io.BytesIO(z.read(info)))
        (dest / REST_PART).write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    parts = [dest / CUDA_PART, dest / REST_PART]
    for p in parts:
        print(f"{p}: {p.stat().st_size / 2**20:.1f} MiB")
    return parts


def unpack(parts: Path, site: Path) -> Path:
    """The package folder made from the parts in `parts`: put `site` first on PYTHONPATH."""
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress((parts / REST_PART).read_bytes()))) as tar:
        tar.extractall(site, filter="tar") if sys.version_info >= (3, 12) else tar.extractall(site)
    (site / CUDA_LIB).parent.mkdir(parents=True, exist_ok=True)
    (site / CUDA_LIB).write_bytes(lzma.decompress((parts / CUDA_PART).read_bytes()))
    (site / CUDA_LIB).chmod(0o755)
    return site


def download(dest: Path) -> Path:
    """onnxruntime-gpu's wheel for CPython 3.12 on x86-64 Linux (the GPU machine's Python), from PyPI."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "-d", str(dest), WHEEL], check=True)
    return next(dest.glob("onnxruntime_gpu-*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="download the wheel (or take --wheel) and write the two parts into DEST")
    p.add_argument("dest", type=Path)
    p.add_argument("--wheel", type=Path, help="a wheel already downloaded")
    p.add_argument("--sm", type=int, default=90, help="the GPU architecture to keep (90: H100, H200)")
    u = sub.add_parser("unpack", help="rebuild the package from the parts in PARTS into SITE")
    u.add_argument("parts", type=Path)
    u.add_argument("site", type=Path)
    a = ap.parse_args()
    if a.command == "pack":
        with tempfile.TemporaryDirectory() as tmp:
            pack(a.wheel or download(Path(tmp)), a.dest, a.sm)
    else:
        print(unpack(a.parts, a.site))


if __name__ == "__main__":
    main()
