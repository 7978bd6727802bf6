"""AdamWSPAM's CPU step in two small C loops, compiled on first use, for float32 on one pass.

Written with torch operations SPAM's step is about 13 elementwise passes over every bucket
(`spam.py`); fused AdamW makes one. On one CPU thread the torch operations cost 4.6x fused
AdamW's step on ResNet-18 however they are bucketed: each pass pays a dispatch and a trip
through the cache, and `torch.sqrt` is about 19x slower on zeros than on other values.
Here the step per bucket is:

1. `moments` (C): where clipping is on, a read-only scan for a spike (`g*g > v*theta`, the
   reference's predicate); a bucket piece with one is clipped by spam.py's torch code, the
   reference's own operations, before going on. Then `m <- m*b1 (+) (1-b1) g` and
   `v <- v*b2 (+) ((1-b2) g) g`, and the square-root input `v`, with 1 in place of 0, into
   one bucket-sized buffer;
2. `torch.sqrt` in place over that buffer: torch's own square root, which on an MKL build is
   not correctly rounded (about 0.6% of float32 values come out one ulp low), so no C `sqrtf`
   could stand in for it; zeros are kept out of it (sqrt(0) is 0) because they are its slow
   case;
3. `update` (C): `d = sqrt(v) + eps`, `u = m / d`, `p <- p (+) alpha u`, then the decay
   `p <- p (+) (-lr wd) p`.

`(+)` is a fused multiply-add: torch's CPU kernels compute `add(x, y, alpha=a)` as
`fma(y, a, x)` and `addcmul(x, y, z, value=c)` as `fma(c*y, z, x)` in their vectorised loops
on x86 (AVX2, AVX-512), which is what the reference's `add_` and `addcmul_` get. Every other
operation is one IEEE float32 operation in the reference's order; the C file is compiled with
`-ffp-contract=off`, so the compiler fuses nothing else. Whether this build of torch on this
CPU rounds that way is not assumed: `self_check()` runs both paths on probe tensors (random
values, spikes, zeros of both signs, denormals, inf, NaN, every length from 1 to 67, so the
kernels' scalar tails are covered) and the kernel is used only where every bit agrees.
Where there is no C compiler, the compile fails, or a bit differs, spam.py keeps its torch
operations (the same result, slower): `status()` says which and why.

The shared library is cached under $XDG_CACHE_HOME/prunebench (else ~/.cache/prunebench),
keyed by the source, the compiler flags and the CPU (it is built with -march=native), written
to a temporary name and renamed, so processes that compile it at the same time do not see a
partial file. Where that directory cannot be made this user's own and private to them, each
process compiles into a fresh private temporary directory instead (0.1 s here).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* The spikes of n elements, where g*g > v*theta (the reference's predicate): root[i] <- v*theta
   there (1 where that is 0: sqrt(0) is 0, and zeros are torch.sqrt's slow case), 1 elsewhere.
   Returns how many. */
int64_t spam_limits(int64_t n, const float *restrict g, const float *restrict v,
                    float *restrict root, float theta)
{
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        float bound = v[i] * theta;
        int spike = g[i] * g[i] > bound;
        root[i] = spike && bound != 0.0f ? bound : 1.0f;
        count += spike;
    }
    return count;
}

/* Where `clip`: g <- sign(g) sqrt(v*theta) at the spikes, `root` holding torch.sqrt of what
   spam_limits wrote. Then the moments, and root[i] <- the new v (1 where it is 0), the
   square-root input of spam_update. */
void spam_moments(int64_t n, float *restrict g, float *restrict m, float *restrict v,
                  float *restrict root, float theta, int clip, float beta1,
                  float one_minus_beta1, float beta2, float one_minus_beta2)
{
    if (clip) {
        for (int64_t i = 0; i < n; i++) {
            float gi = g[i];
            float bound = v[i] * theta;
            if (gi * gi > bound) {
                gi = copysignf(bound == 0.0f ? bound : root[i], gi);
                g[i] = gi;
            }
            float vi = fmaf(one_minus_beta2 * gi, gi, v[i] * beta2);
            m[i] = fmaf(gi, one_minus_beta1, m[i] * beta1);
            v[i] = vi;
            root[i] = vi == 0.0f ? 1.0f : vi;
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            float gi = g[i];
            float vi = fmaf(one_minus_beta2 * gi, gi, v[i] * beta2);
            m[i] = fmaf(gi, one_minus_beta1, m[i] * beta1);
            v[i] = vi;
            root[i] = vi == 0.0f ? 1.0f : vi;
        }
    }
}

/* p <- p (+) alpha m / (sqrt(v) + eps), then, where `decayed`, p <- p (+) decay p; `root`
   holds torch.sqrt of what spam_moments wrote (sqrt(0) = 0 is taken from v). */
void spam_update(int64_t n, float *restrict p, const float *restrict m,
                 const float *restrict v, const float *restrict root, float eps,
                 float alpha, float decay, int decayed)
{
    if (decayed) {
        for (int64_t i = 0; i < n; i++) {
            float vi = v[i];
            float pi = fmaf(m[i] / ((vi == 0.0f ? vi : root[i]) + eps), alpha, p[i]);
            p[i] = fmaf(pi, decay, pi);
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            float vi = v[i];
            p[i] = fmaf(m[i] / ((vi == 0.0f ? vi : root[i]) + eps), alpha, p[i]);
        }
    }
}
"""

FLAGS = (
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
)

_state: dict[str, object] = {"loaded": False, "library": None, "reason": "not tried yet"}


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags")]
    return "\n".join(dict.fromkeys(keep))


def _cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/prunebench or ~/.cache/prunebench, if it is a directory of this user's
    that only they can write; else None (then nothing is cached: a shared library is never
    loaded from a place another user could have written it to)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "prunebench"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o022 or not os.access(path, os.W_OK):
        return None
    return path


def _compile() -> tuple[Path | None, str]:
    """(path of the shared library, "") or (None, why not)."""
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) on PATH"
    key = hashlib.sha256(
        "\0".join([SOURCE, *FLAGS, compiler, platform.machine(), _cpu_identity()]).encode()
    ).hexdigest()[:16]
    directory = _cache_dir()
    if directory is None:  # a private directory of this process's own, not cached
        directory = Path(tempfile.mkdtemp(prefix="prunebench-spam-"))
        atexit.register(shutil.rmtree, directory, True)
    target = directory / f"spam_kernel-{key}.so"
    if target.is_file():
        return target, ""
    with tempfile.TemporaryDirectory(prefix="spam_kernel-") as scratch:
        source = Path(scratch) / "spam_kernel.c"
        source.write_text(SOURCE)
        built = Path(scratch) / "spam_kernel.so"
        try:
            result = subprocess.run(
                [compiler, *FLAGS, str(source), "-o", str(built), "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"{compiler} failed: {error}"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            return None, f"{compiler} failed ({result.returncode}): {last}"
        partial = directory / f".{target.name}.{os.getpid()}"
        try:
            shutil.copyfile(built, partial)
            os.replace(partial, target)
        except OSError as error:
            return None, f"cannot write {target}: {error}"
    return target, ""


def _load() -> ctypes.CDLL | None:
    path, reason = _compile()
    if path is None:
        _state["reason"] = reason
        return None
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        _state["reason"] = f"cannot load {path}: {error}"
        return None
    i64, ptr, f32, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    library.spam_limits.argtypes = [i64, ptr, ptr, ptr, f32]
    library.spam_limits.restype = i64
    library.spam_moments.argtypes = [i64, ptr, ptr, ptr, ptr, f32, i32, f32, f32, f32, f32]
    library.spam_moments.restype = None
    library.spam_update.argtypes = [i64, ptr, ptr, ptr, ptr, f32, f32, f32, i32]
    library.spam_update.restype = None
    return library


def library(check) -> ctypes.CDLL | None:
    """The compiled kernels once `check(library)` has found them bit-identical to the torch
    path (spam.py passes its self-check), else None; decided once per process."""
    if not _state["loaded"]:
        _state["loaded"] = True
        loaded = _load()
        if loaded is not None:
            mismatch = check(loaded)
            if mismatch:
                _state["reason"] = f"not bit-identical to torch's operations here: {mismatch}"
            else:
                _state["library"], _state["reason"] = loaded, ""
    return _state["library"]  # type: ignore[return-value]


def status() -> str:
    """One line: whether SPAM's CPU step runs on the compiled kernels, and if not, why."""
    if not _state["loaded"]:
        return "not tried yet (first AdamWSPAM step on CPU in float32)"
    if _state["library"] is not None:
        return "compiled kernels (bit-identical to torch's operations on this machine)"
    return f"torch operations ({_state['reason']})"
