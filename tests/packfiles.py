"""Hostile packed files for the tests: a header changed and the file signed again (so only the header is wrong),
and explorer.unpack in a child process whose address space is capped a fixed number of megabytes above what it
holds once torch, torchvision and timm are loaded, so a file that makes the loader allocate past the cap fails
there (an allocation error, not a PackError) instead of swapping this machine; each answer also says how long
the call took and how far the child's resident memory grew."""

import hashlib
import json
import multiprocessing
import os
import resource
import struct
import time

import zstandard

from explorer.artifact import pack

MB = 2**20


def header_of(blob: bytes) -> dict:
    hlen = struct.unpack_from("<I", blob, 6)[0]
    return json.loads(zstandard.ZstdDecompressor().decompress(blob[10:10 + hlen]))


def with_text(text: bytes, blob: bytes, version: int = pack.VERSION) -> bytes:
    """`blob` with another header (the payload as it was), signed again; version 1 keeps the header plain."""
    hlen = struct.unpack_from("<I", blob, 6)[0]
    new = zstandard.ZstdCompressor().compress(text) if version >= 2 else text
    body = pack.MAGIC + struct.pack("<HI", version, len(new)) + new + blob[10 + hlen:-32]
    return body + hashlib.sha256(body).digest()


def forged(change, blob: bytes) -> bytes:
    """`blob` with its header as `change(header)` leaves it."""
    header = header_of(blob)
    change(header)
    return with_text(json.dumps(header).encode(), blob)


def nested(blob: bytes, deep: int) -> bytes:
    """`blob` whose (absent) activation quantisation is `deep` lists one inside the other."""
    text = json.dumps(header_of(blob)).encode()
    return with_text(text.replace(b'"activations": null', b'"activations": ' + b"[" * deep + b"]" * deep), blob)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _serve(conn, cap_mb: int, warm: bytes) -> None:
    import torch
    import torchvision.models  # noqa: F401  (the zoo imports these on first use: in the baseline, not the cap)

    try:
        import timm  # noqa: F401
    except ImportError:
        pass
    torch.set_num_threads(1)
    pack.unpack(warm)  # lazy imports and the allocator's first arenas are the baseline too
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = _address_space() + cap_mb * MB
    resource.setrlimit(resource.RLIMIT_AS, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    conn.send("ready")
    while (blob := conn.recv()) is not None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            pack.unpack(blob)
            kind, msg = "ok", ""
        except pack.PackError as e:
            kind, msg = "PackError", str(e)
        except BaseException as e:  # an allocation past the cap lands here: the caller sees its type
            kind, msg = type(e).__name__, str(e)[:500]
        seconds = time.perf_counter() - t
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        conn.send((kind, msg, seconds, grown))


class Limited:
    """A child that unpacks blobs under `cap_mb` more megabytes of address space; `unpack(blob)` answers
    (kind, message, seconds, bytes the resident set grew): kind is 'ok', 'PackError' or the exception's type."""

    def __init__(self, warm: bytes, cap_mb: int = 500):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, cap_mb, warm), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError("the limited unpacking process did not start")

    def unpack(self, blob: bytes, timeout_s: float = 120) -> tuple[str, str, float, int]:
        self.conn.send(blob)
        if not self.conn.poll(timeout_s):
            self.close()
            raise TimeoutError(f"unpacking ran past {timeout_s} s")
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.conn.close()
