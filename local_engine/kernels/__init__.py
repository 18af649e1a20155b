"""Our own onnxruntime kernels, compiled from C on the machine that runs them.

``ops.c`` holds the ``thriftgate`` custom-op domain (see the file's header): ``Q4_1MatMul`` and
``Q8_0MatMul`` (matrix products with the weights in the GGUF's own blocks and float32 activations),
``Q4_1MatMulSwiGLU`` / ``Q8_0MatMulSwiGLU`` (the gate/up product with SwiGLU applied), ``Q8_0Gather`` (the
token lookup from the Q8_0 embedding) and ``KVAttention`` (rotary embedding, the in-place float16 cache
write and causal attention, in place of onnxruntime's GroupQueryAttention).
``library()`` compiles it with the system C compiler (``cc -O3 -march=native``, so the code uses the
CPU's own vector width) into a cache directory, keyed by the source, the compiler and the CPU's flags
(a copied cache never runs code built for another CPU), and returns the shared library's path;
``ModelRunner`` registers it with a session whose variant needs it (the manifest's ``"kernels"``).

The cache directory is ``THRIFTGATE_KERNEL_DIR`` if set, else ``~/.cache/thriftgate/kernels``, else a
directory under the system's temporary directory. Compiling takes about a second; it happens once per
machine (``thriftgate local build`` does it, and so does the first runner that needs it).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

SOURCE_DIR = Path(__file__).parent
SOURCES = ("ops.c", "ort_abi.h")
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror")
LIBS = ("-lm",)
NAME = "thriftgate-ops"

__all__ = ["KernelUnavailable", "available", "cache_dir", "compile_to", "library", "qmatmul"]


class KernelUnavailable(RuntimeError):
    """The kernels cannot be built here (no C compiler, or it failed); the message says why."""


def cache_dir() -> Path:
    explicit = os.environ.get("THRIFTGATE_KERNEL_DIR")
    candidates = [Path(explicit)] if explicit else []
    try:
        candidates += [Path.home() / ".cache" / "thriftgate" / "kernels"]
    except (RuntimeError, KeyError):  # no home directory
        pass
    candidates += [Path(tempfile.gettempdir()) / f"thriftgate-kernels-{os.getuid()}"]
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK | os.X_OK):
            return path
    raise KernelUnavailable(
        f"no writable directory for compiled kernels (tried {[str(c) for c in candidates]})"
    )


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise KernelUnavailable("no C compiler (cc or gcc) on PATH: install one (Debian: apt install gcc)")
    return cc


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")


_lock = threading.Lock()


@functools.cache
def library() -> Path:
    """The compiled kernel library (compiled now if this machine has none yet); ``KernelUnavailable``."""
    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise KernelUnavailable(f"the C compiler {cc} does not run: {exc}") from exc
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    for part in (version.splitlines()[0] if version else cc, " ".join(FLAGS + LIBS), _cpu_flags()):
        digest.update(part.encode() + b"\0")
    directory = cache_dir()
    path = directory / f"lib{NAME}-{digest.hexdigest()[:16]}.so"
    with _lock:
        if path.exists():
            return path
        compile_to(path, cc)
    return path


def compile_to(path: Path, cc: str | None = None, flags: tuple[str, ...] = FLAGS) -> Path:
    """Compiles ``ops.c`` into ``path`` (atomically: a concurrent build by another process is harmless).
    Tests pass other ``-march`` flags to check the narrower vector paths on this CPU."""
    cc = cc or _compiler()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{NAME}-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run(
            [cc, *flags, "-o", tmp, str(SOURCE_DIR / "ops.c"), *LIBS], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise KernelUnavailable(f"compiling the kernels failed:\n{done.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def available() -> bool:
    try:
        library()
    except KernelUnavailable:
        return False
    return True


@functools.cache
def _cdll(path: Path | None = None) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path or library()))
    lib.tg_qmatmul.restype = ctypes.c_int
    lib.tg_qmatmul.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_size_t] * 3 + [ctypes.c_int]
    lib.tg_vector_width.restype = ctypes.c_int
    return lib


def vector_width(path: Path | None = None) -> int:
    """Floats per vector the compiled kernels use here (16 with AVX-512, 8 with AVX, else 4)."""
    return int(_cdll(path).tg_vector_width())


BLOCK_BYTES = {
    4: 20,
    8: 34,
}  # per 32 weights, as in the GGUF: Q4_1 16 bytes of codes + float16 d, m; Q8_0 32 + d


def pack_q4_1(codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The kernel's Q4_1 rows from codes uint8 ``[N, blocks, 32]`` (0..15) and float16-exact ``d``, ``m``
    ``[N, blocks]``: uint8 ``[N, blocks * 20]`` (the blocks' nibbles in ggml's order, then their float16 d,
    then their float16 m)."""
    n, nb, _ = codes.shape
    nibbles = ((codes[..., :16] & 15) | ((codes[..., 16:] & 15) << 4)).astype(np.uint8).reshape(n, nb * 16)
    return np.concatenate([nibbles, _f16_bytes(d), _f16_bytes(m)], axis=1)


def pack_q8_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The kernel's Q8_0 rows from codes int8 ``[N, blocks, 32]`` and float16-exact ``d`` ``[N, blocks]``:
    uint8 ``[N, blocks * 34]`` (the blocks' codes, then their float16 d)."""
    n, nb, _ = codes.shape
    return np.concatenate([codes.astype(np.int8).view(np.uint8).reshape(n, nb * 32), _f16_bytes(d)], axis=1)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    """float16 bytes ``[N, blocks * 2]`` of block scales ``[N, blocks]``, which must be float16 values (as
    the GGUF stores them)."""
    half = np.ascontiguousarray(values.astype(np.float16))
    if not np.array_equal(half.astype(np.float32), values.astype(np.float32)):
        raise ValueError("block scales must be float16 values (as the GGUF stores them)")
    return half.view(np.uint8).reshape(values.shape[0], -1)


def qmatmul(
    x: np.ndarray, blocks: np.ndarray, bits: int, *, swiglu: bool = False, path: Path | None = None
) -> np.ndarray:
    """``x [M, K] @ W.T`` with ``W`` packed by ``pack_q4_1`` / ``pack_q8_0``, single-threaded, outside
    onnxruntime (for tests and benchmarks). ``swiglu``: ``W`` holds gate rows then as many up rows, and the
    result is ``silu(x @ gate.T) * (x @ up.T)``. ``path``: another build of the library (``compile_to``)."""
    x = np.ascontiguousarray(x, np.float32)
    m, k = x.shape
    blocks = np.ascontiguousarray(blocks, np.uint8)
    if bits not in BLOCK_BYTES or blocks.ndim != 2 or blocks.shape[1] != k // 32 * BLOCK_BYTES[bits]:
        raise ValueError(f"blocks {blocks.shape} do not fit x {x.shape} at {bits} bits")
    n = blocks.shape[0] // 2 if swiglu else blocks.shape[0]
    y = np.empty((m, n), np.float32)
    rc = _cdll(path).tg_qmatmul(bits, x.ctypes.data, blocks.ctypes.data, y.ctypes.data, m, n, k, int(swiglu))
    if rc != 0:
        raise ValueError(
            f"the kernel refused these shapes (K must be a multiple of 32, at most 16384): {x.shape}"
        )
    return y
