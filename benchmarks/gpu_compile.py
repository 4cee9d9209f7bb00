"""`make gpu-compile`: every Triton kernel, forward and backward, compiled for sm_80 and sm_90
by Triton's own compiler with no GPU, at the shapes and dtypes the model uses, through the
ops' own launch code (the Launch objects a GPU run would execute, built on meta tensors);
and the CUDA C++ kernels through nvcc -Xptxas -v.

Fails on a compile error, a time-out, shared memory over the architecture's limit, any spill
or stack frame on the 16-bit paths, more than 2 KB of stack on fp32 (embed's default), and
atomic float adds anywhere (every reduction of this package runs in a fixed order, so results
are the same bits from run to run).
Prints one markdown table (kernel, case, registers, spills, stack, shared memory, MMA kind)
and writes it to --out (default build/gpu_compile.md).

    python benchmarks/gpu_compile.py [--arch 80 90] [--jobs 2] [--timeout 240] [-k substring]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from skysense_fast import _lib
from skysense_fast.triton import sinkhorn as tsink
from skysense_fast.triton import fusion_tokens as tfuse
from skysense_fast.triton import temporal_attention as ttemp
from skysense_fast.triton import window_attention as twin
from skysense_fast.triton.aot import SHARED_LIMIT, cache_key, compile_launch

META = torch.device("meta")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP32_STACK_LIMIT = 2048


@dataclass
class Case:
    name: str      # op and shape
    dtype: str
    launches: list  # Launch objects


def _e(*shape, dtype=torch.float32):
    return torch.empty(shape, device=META, dtype=dtype)


# ---- window attention: SwinV2-H (2b), -base, -tiny, Swin V1 with a mask, the op's largest windows
def window_case(name, B, H, W, heads, hd, window, shift, dtype, v2=True, mask=False):
    N = window * window
    qkv = _e(B, H, W, 3, heads, hd, dtype=dtype)   # the module passes views of one projection
    q, k, v = qkv.unbind(3)
    ls = _e(heads, 1, 1) if v2 else None
    bias = _e(heads, N, N)
    nW = -(-H // window) * -(-W // window)
    m = _e(nW, N, N) if mask else None
    prepared = _lib.native().window_attention_prepare(q, k, v, [window] * 2, [shift] * 2, ls, bias, m, None)
    fwd, out, lse = twin.forward_launch(*prepared)
    bwd, *_ = twin.backward_launches(_e(*q.shape, dtype=dtype), out, lse, *prepared)
    return [fwd, *bwd]


def window_cases(dtype):
    # (name, B, H, W, heads, head_dim, window, shift): stage maps of a 512 crop (and padded ones)
    shapes = [("swinv2-h s1", 2, 128, 128, 8, 44, 8, 4), ("swinv2-h s2 pad", 2, 36, 36, 16, 44, 8, 4),
              ("swinv2-h s3", 2, 32, 32, 32, 44, 8, 0), ("swinv2-h s4", 2, 16, 16, 64, 44, 8, 4),
              ("swinv2-h s4 = window", 2, 8, 8, 64, 44, 8, 0),
              ("swinv2-base s1", 2, 64, 64, 4, 32, 8, 4), ("swinv2-tiny s1", 2, 16, 16, 2, 8, 4, 2),
              ("window 12", 1, 24, 24, 4, 32, 12, 6), ("window 16", 1, 32, 32, 4, 32, 16, 8)]
    if dtype == "fp16":  # the bf16 code with another element type: its extremes suffice
        shapes = [shapes[0], shapes[-1]]
    out = [Case(f"window_attention v2 {s[0]}", dtype, window_case(*s, DTYPES[dtype])) for s in shapes]
    out.append(Case("window_attention v1+mask swin-t", dtype,
                    window_case("v1", 2, 56, 56, 3, 32, 7, 3, DTYPES[dtype], v2=False, mask=True)))
    return out


# ---- temporal attention: the fusion (31 tokens, 16 x 64 in 2b, 12 x 64 in base), the op's largest T
def temporal_case(S, T, heads, hd, dtype, masked=True):
    qkv = _e(S, T, 3, heads, hd, dtype=dtype)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    km = torch.zeros(S, T, dtype=torch.bool, device=META) if masked else None
    prepared = _lib.native().temporal_attention_prepare(q, k, v, km, None)
    fwd, out, lse = ttemp.forward_launch(*prepared)
    bwd, *_ = ttemp.backward_launches(_e(S, T, heads, hd, dtype=dtype).transpose(1, 2), out, lse, *prepared)
    return [fwd, *bwd]


def temporal_cases(dtype):
    shapes = [("2b fusion", 65536, 31, 16, 64), ("base fusion", 4096, 31, 12, 64),
              ("T=100", 4096, 100, 16, 64), ("T=256 (largest)", 1024, 256, 16, 64)]
    if dtype == "fp16":
        shapes = [shapes[0], shapes[-1]]
    return [Case(f"temporal_attention {n}", dtype, temporal_case(S, T, h, d, DTYPES[dtype])) for n, S, T, h, d in shapes]


# ---- fusion tokens at the 2b width (2816 channels), HR + S2 + S1 with dates and validity
def fusion_cases(dtype):
    dt = DTYPES[dtype]
    B, C, h, w, T2, T1 = 2, 2816, 16, 16, 20, 10
    args = (_e(B, C, h, w, dtype=dt), _e(B, T2, C, h, w, dtype=dt), _e(B, T1, C, h, w, dtype=dt),
            torch.empty(B, dtype=torch.long, device=META), torch.empty(B, T2, dtype=torch.long, device=META),
            torch.empty(B, T1, dtype=torch.long, device=META), torch.empty(B, T2, dtype=torch.bool, device=META),
            torch.empty(B, T1, dtype=torch.bool, device=META), _e(365, C, dtype=dt))
    fwd, tokens, _ = tfuse.forward_launches(*args)
    bwd, *_ = tfuse.backward_launches(torch.empty_like(tokens), *args)
    return [Case("fusion_tokens 2b (2816 ch)", dtype, fwd + bwd)]


# ---- Sinkhorn: the 2b prototype bank, K = 4096, a batch of small problems, K = 65536
def sinkhorn_cases(dtype):
    dt = DTYPES[dtype]
    shapes = [("65536 x 3000", 1, 65536, 3000), ("65536 x 4096", 1, 65536, 4096), ("8 x 4096 x 100", 8, 4096, 100),
              ("4096 x 65536", 1, 4096, 65536)]
    if dtype == "fp16":
        shapes = shapes[:1]
    out = []
    for n, B, N, K in shapes:
        s = _e(B, N, K, dtype=dt)
        la, lb = _e(B, N), _e(B, K)
        launches = tsink.launches(s, la, lb, 0.05, 3, 0.0)[0] + tsink.launches(s, la, lb, 0.05, 3, 1e-3)[0]
        out.append(Case(f"sinkhorn {n}", dtype, launches))
    return out


def all_cases(dtypes):
    cases = []
    for d in dtypes:
        cases += window_cases(d) + temporal_cases(d) + fusion_cases(d) + sinkhorn_cases(d)
    return cases


def _compile_child(conn, launch, arch):
    try:
        conn.send(("ok", compile_launch(launch, arch)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent as a failure
        conn.send(("error", f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"))
    conn.close()


def compile_all(jobs, parallel, timeout):
    """Compiles each (launch, arch) of `jobs` in a forked child, `parallel` at a time;
    {key: (status, result, seconds)}."""
    ctx = mp.get_context("fork")
    pending, running, results = list(jobs.items()), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            key, (launch, arch) = pending.pop(0)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_compile_child, args=(send, launch, arch))
            proc.start()
            send.close()
            running[key] = (proc, recv, time.monotonic())
        time.sleep(0.05)
        for key, (proc, recv, t0) in list(running.items()):
            if recv.poll():
                results[key] = recv.recv() + (time.monotonic() - t0,)
            elif proc.is_alive() and time.monotonic() - t0 < timeout:
                continue
            elif proc.is_alive():
                proc.kill()
                results[key] = ("error", f"compile time-out after {timeout} s", timeout)
            else:
                results[key] = ("error", f"compiler process died (exit {proc.exitcode})", 0.0)
            proc.join()
            del running[key]
    return results


def verdict(status, res, dtype, arch):
    if status != "ok":
        return res
    problems = []
    if res.shared_bytes > SHARED_LIMIT[arch]:
        problems.append(f"shared {res.shared_bytes} B > {SHARED_LIMIT[arch]} B")
    if dtype != "fp32" and (res.spill_bytes or res.stack_bytes):
        problems.append("spills / stack frame on a 16-bit path")
    if dtype == "fp32" and (res.stack_bytes > FP32_STACK_LIMIT or res.spill_bytes > FP32_STACK_LIMIT):
        problems.append(f"fp32 stack / spills over {FP32_STACK_LIMIT} B")
    if res.float_atomics:
        problems.append("atomic float adds (non-deterministic sums)")
    return "; ".join(problems)


def cuda_cpp_rows(archs):
    """nvcc -Xptxas -v on the CUDA C++ kernels: (kernel, arch, registers, spills, stack, shared)."""
    nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc) and shutil.which(nvcc) is None:
        return [], "nvcc not found: CUDA C++ kernels not checked"
    rows = []
    for src in sorted(f for f in os.listdir("kernels") if f.endswith(".cu")):
        for arch in archs:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join("kernels", src)
                r = subprocess.run([nvcc, "-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++17", "-Xptxas", "-v",
                                    "-o", os.path.join(tmp, "k.cubin"), path], capture_output=True, text=True)
                if r.returncode == 0:
                    p = subprocess.run([nvcc, "-ptx", f"-arch=sm_{arch}", "-O3", "-std=c++17", "-o",
                                        os.path.join(tmp, "k.ptx"), path], capture_output=True, text=True)
                    ptx = open(os.path.join(tmp, "k.ptx")).read() if p.returncode == 0 else ""
            if r.returncode != 0:
                return rows, f"nvcc failed on kernels/{src} for sm_{arch}:\n{r.stderr[-3000:]}"
            if re.search(r"\b(atom|red)\.[\w.]*add\.f(32|64)", ptx):
                return rows, f"kernels/{src} for sm_{arch}: atomic float adds in the PTX (non-deterministic sums) failed"
            name = None
            for line in r.stderr.splitlines():
                if m := re.search(r"Compiling entry function '(\w+)'", line):
                    name = m.group(1)
                elif (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                                     line)) and name:
                    stack, st, ld = map(int, m.groups())
                    rows.append([src, _demangle(name), arch, None, st + ld, stack, 0])
                elif (m := re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?", line)) and rows and name:
                    rows[-1][3] = int(m.group(1))
                    sm = re.search(r"(\d+) bytes smem", line)
                    rows[-1][6] = int(sm.group(1)) if sm else 0
                    name = None
    return rows, ""


def _demangle(name):
    m = re.search(r"(col_partial|col_finish|row_pass|row_finish|decide)\w*?(If|I6__half|I13__nv_bfloat16)?", name)
    if not m:
        return name
    ty = {"If": "fp32", "I6__half": "fp16", "I13__nv_bfloat16": "bf16"}.get(m.group(2) or "", "")
    return m.group(1) + (f"<{ty}>" if ty else "")


def main():
    cases = [c for c in all_cases(ARGS.dtypes) if not ARGS.k or any(k in f"{c.name} {c.dtype}" for k in ARGS.k)]
    jobs, rows = {}, []
    for case in cases:
        for launch in case.launches:
            for arch in ARGS.arch:
                key = cache_key(launch, arch)
                jobs.setdefault(key, (launch, arch))
                rows.append((case, launch, arch, key))
    print(f"triton {__import__('triton').__version__}: {len(rows)} (kernel, case, arch) rows, "
          f"{len(jobs)} distinct specialisations, {ARGS.jobs} at a time", flush=True)
    t0 = time.monotonic()
    results = compile_all(jobs, ARGS.jobs, ARGS.timeout)
    lines = ["| kernel | case | dtype | sm | warps | registers | spills (B) | stack (B) | shared (B) | MMA | "
             "compile (s) | problem |", "|" + "---|" * 12]
    failures, seen = [], set()
    for case, launch, arch, key in rows:
        status, res, secs = results[key]
        row_id = (launch.name, case.name, case.dtype, arch)
        if row_id in seen:
            continue
        seen.add(row_id)
        bad = verdict(status, res, case.dtype, arch)
        if status == "ok":
            cells = [res.num_warps, res.registers, res.spill_bytes, res.stack_bytes, res.shared_bytes, res.mma,
                     f"{secs:.1f}"]
        else:
            cells = [launch.num_warps] + ["-"] * 5 + [f"{secs:.1f}"]
        lines.append(f"| {launch.name} | {case.name} | {case.dtype} | {arch} | " + " | ".join(map(str, cells))
                     + f" | {bad} |")
        if bad:
            failures.append(f"{launch.name} / {case.name} / {case.dtype} / sm_{arch}: {bad}")
    cpp_rows, cpp_error = cuda_cpp_rows(ARGS.arch) if ARGS.cuda_cpp else ([], "")
    lines += ["", "| CUDA C++ (kernels/) | kernel | sm | registers | spills (B) | stack (B) | shared (B) |",
              "|" + "---|" * 7]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} |" for r in cpp_rows]
    for r in cpp_rows:
        if r[4]:
            failures.append(f"{r[0]} {r[1]} sm_{r[2]}: {r[4]} B of spills")
    if cpp_error:
        (failures if "failed" in cpp_error else lines).append(cpp_error)
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(ARGS.out) or ".", exist_ok=True)
    with open(ARGS.out + ".tmp", "w") as f:
        f.write(table + "\n")
    os.replace(ARGS.out + ".tmp", ARGS.out)
    print(f"\n{len(jobs)} compilations in {time.monotonic() - t0:.0f} s; table in {ARGS.out}")
    if failures:
        print(f"\nFAILED ({len(failures)}):\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("every kernel compiles for " + ", ".join(f"sm_{a}" for a in ARGS.arch) + " within its limits")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per compilation")
    p.add_argument("-k", action="append", default=[], help="only cases whose 'name dtype' contains this (repeatable)")
    p.add_argument("--no-cuda-cpp", dest="cuda_cpp", action="store_false", help="skip the nvcc pass on kernels/*.cu")
    p.add_argument("--out", default="build/gpu_compile.md")
    return p


if __name__ == "__main__":
    ARGS = build_parser().parse_args()
    main()
