"""What the offline compile reports of both GPU backends share: no GPU needed.

The PTX of a configuration (from NVVM for the Numba kernels, ``ptx_report``; from
NVRTC for the CUDA C ones, ``nvrtc_report``) is assembled for the target with
nvJitLink (the ptxas of the same CUDA release, so the PTX version always
matches), whose verbose log gives registers, shared memory, local memory and
spills. Both reports cover the same configurations: the geometries below, with
every tile of ``gpuconv.kernels.gpu.tiling``.
"""
import argparse
import json
import os
import re
import sys
import time

ARCHES = (80, 90)

# (R, S, stride h, stride w, dilation h, dilation w, upsample h, upsample w)
CONV_GEOMETRIES = {
    "3x3": (3, 3, 1, 1, 1, 1, 1, 1),
    "3x3 stride 2": (3, 3, 2, 2, 1, 1, 1, 1),
    "3x3 dilation 2": (3, 3, 1, 1, 2, 2, 1, 1),
    "5x5": (5, 5, 1, 1, 1, 1, 1, 1),
    "1x1": (1, 1, 1, 1, 1, 1, 1, 1),
    "3x3 input grad of stride 2": (3, 3, 1, 1, 1, 1, 2, 2),
}
WEIGHT_GRAD_GEOMETRIES = {
    "3x3": (3, 3, 1, 1, 1, 1),
    "5x5 stride 2 dilation 2": (5, 5, 2, 2, 2, 2),
}
POOL_WINDOWS = {"2x2/2": (2, 2, 2, 2), "3x3/2": (3, 3, 2, 2), "3x3/1": (3, 3, 1, 1)}


def assemble(ptx, arch):
    """Assemble PTX for ``sm_<arch>`` with nvJitLink; return its verbose log."""
    from cuda.bindings import nvjitlink
    handle = nvjitlink.create(2, [f"-arch=sm_{arch}", "-verbose"])
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, ptx.encode(), len(ptx), "kernel")
        try:
            nvjitlink.complete(handle)
        except nvjitlink.nvJitLinkError as error:
            log = bytearray(nvjitlink.get_error_log_size(handle))
            nvjitlink.get_error_log(handle, log)
            raise RuntimeError(f"PTX does not assemble for sm_{arch}: {log.decode(errors='replace')}") from error
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
        return log.decode(errors="replace")
    finally:
        nvjitlink.destroy(handle)


def resources(log):
    """Registers, shared/local memory and spill bytes from a ptxas/nvJitLink verbose log."""
    def number(pattern):
        found = re.findall(pattern, log)
        if not found:
            raise ValueError(f"no {pattern!r} in the assembler log:\n{log}")
        return int(found[-1])
    return {
        "registers": number(r"[Uu]sed (\d+) registers"),
        "shared_bytes": number(r"(\d+) bytes smem"),
        "local_bytes": number(r"(\d+) bytes lmem"),
        "stack_bytes": number(r"(\d+) bytes stack frame"),
        "spill_store_bytes": number(r"(\d+) bytes spill stores"),
        "spill_load_bytes": number(r"(\d+) bytes spill loads"),
    }


def collect(configurations, arches, measure, progress=None):
    """One row per (configuration, arch): ``measure(config, arch)`` gives its fields, timed as compile_s."""
    rows = []
    for config in configurations:
        for arch in arches:
            start = time.perf_counter()
            row = dict(kernel=config.kernel, config=config.description, arch=f"sm_{arch}", **measure(config, arch))
            row["compile_s"] = round(time.perf_counter() - start, 3)
            rows.append(row)
            if progress:
                progress(row)
    return rows


def markdown(rows):
    header = ("| kernel | configuration | arch | registers | shared B | local B | spill st/ld B | compile s |\n"
              "|---|---|---|---|---|---|---|---|\n")
    return header + "".join(
        f"| {r['kernel']} | {r['config']} | {r['arch']} | {r['registers']} | {r['shared_bytes']} | "
        f"{r['local_bytes']} | {r['spill_store_bytes']}/{r['spill_load_bytes']} | {r['compile_s']} |\n"
        for r in rows)


def report_main(argv, description, compile_all, versions, title, conv_like):
    """The command line of an offline compile report: compile, print, write the table; 1 on spills."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHES), help="compute capabilities, e.g. 80 90")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    rows = compile_all(args.arch, progress=lambda r: print(
        f"{r['kernel']:<18} {r['config']:<58} {r['arch']} regs {r['registers']:>3} smem {r['shared_bytes']:>6} "
        f"lmem {r['local_bytes']} spills {r['spill_store_bytes']}/{r['spill_load_bytes']}", file=sys.stderr))
    if args.markdown:
        text = f"# {title}\n\n{versions()}\n\n" + markdown(rows)
        _write(args.markdown, text)
    if args.json:
        _write(args.json, json.dumps(rows, indent=1))
    bad = [r for r in rows if r["kernel"] in conv_like and (r["local_bytes"] or r["spill_store_bytes"])]
    return 1 if bad else 0


def stack_versions(found, packages):
    """``found`` plus the installed version of each package, after today's date: the line a report opens with."""
    import datetime
    from importlib import metadata
    for package in packages:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return f"{datetime.date.today().isoformat()}: " + ", ".join(found)


def _write(path, text):
    """Write a report atomically: a temporary file beside it, then a rename."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
