"""The suite's outputs: JSON with every figure, a Markdown table, and two PNG plots."""
import json
import os

from gpuconv.fileio import atomic_write


def write_all(directory, info, rows, e2e):
    """Write results.json, results.md, throughput.png and roofline.png under ``directory``; return their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in ("results.json", "results.md", "throughput.png",
                                                        "roofline.png")]
    document = json.dumps(dict(environment=info, ops=rows, end_to_end=e2e), indent=1, default=float)
    atomic_write(paths[0], lambda f: f.write(document.encode()))
    table = markdown(info, rows, e2e)
    atomic_write(paths[1], lambda f: f.write(table.encode()))
    plot_throughput(paths[2], info, rows)
    plot_roofline(paths[3], info, rows)
    return paths


def _rate(row):
    return f"{row['gflops']:.1f} GFLOP/s" if "gflops" in row else f"{row['gbps']:.1f} GB/s"


def _ratio(value):
    return f"{value:.2f}x" if value is not None else "-"


def markdown(info, rows, e2e):
    """One table of every op row (time, rate, % of peak, speed-ups), then end-to-end throughput."""
    peaks = "; ".join(f"{device}: copy {p['copy_gbps']:.1f} GB/s, SGEMM {p['sgemm_gflops']:.0f} GFLOP/s"
                      for device, p in info["peaks"].items())
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [f"# Benchmarks: {info['device']}, {info['date']}", "",
             f"Python {info['python']}; {versions}; git {str(info.get('git_commit'))[:10]}.", "",
             f"Measured peaks: {peaks}.", "",
             "Times are medians of the repeats (IQR = interquartile range); first call = JIT compile or cache "
             "load, timed apart. Speed-up = other's time / this row's time (> 1: this row is faster).", "",
             "| op | shape | target | median ms | IQR ms | first call s | rate | % peak | vs cpu backend "
             "| vs anchors | check |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        anchors = ", ".join(f"{name} {value:.2f}x" for name, value in r.get("speedup_vs", {}).items()) or "-"
        pct = f"{r['pct_peak']:.1f}%" if r.get("pct_peak") is not None else "-"
        check = "ok" if r["correct"] else f"WRONG ({r['rel_error']:.1e})"
        lines.append(f"| {r['op']} | {r['shape']} | {r['target']} | {1e3 * r['median_s']:.3f} | "
                     f"{1e3 * (r['q75_s'] - r['q25_s']):.3f} | {r['first_call_s']:.2f} | {_rate(r)} | {pct} | "
                     f"{_ratio(r.get('speedup_vs_cpu'))} | {anchors} | {check} |")
    if e2e:
        lines += ["", "End to end, the MNIST example model (batch 64 training, batch 256 inference, "
                      f"{e2e[0]['data']} data):", "",
                  "| backend | train images/s | inference images/s | 60k-image epoch s |", "|---|---:|---:|---:|"]
        lines += [f"| {r['target']} | {r['train_images_per_s']:.0f} | {r['inference_images_per_s']:.0f} | "
                  f"{r['epoch_s']:.1f} |" for r in e2e]
    if info.get("notes"):
        lines += ["", "Notes: " + "; ".join(info["notes"]) + "."]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_throughput(path, info, rows):
    """Grouped bars per (op, shape): GFLOP/s for conv, GB/s for pooling and ReLU, one bar per target."""
    plt = _pyplot()
    colors = {t: f"C{i}" for i, t in enumerate(dict.fromkeys(r["target"] for r in rows))}
    panels = [("GFLOP/s", [r for r in rows if "gflops" in r], "gflops"),
              ("GB/s", [r for r in rows if "gbps" in r], "gbps")]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 4.5 * len(panels)), squeeze=False)
    for ax, (unit, subset, key) in zip(axes[:, 0], panels):
        cases = list(dict.fromkeys((r["op"], r["shape"]) for r in subset))
        targets = list(dict.fromkeys(r["target"] for r in subset))
        width = 0.8 / len(targets)
        for t, target in enumerate(targets):
            values = {(r["op"], r["shape"]): r[key] for r in subset if r["target"] == target}
            xs = [i + t * width for i, case in enumerate(cases) if case in values]
            ax.bar(xs, [values[case] for case in cases if case in values], width, label=target, color=colors[target])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_xticklabels([f"{op}\n{shape}" for op, shape in cases], rotation=90, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"Throughput per op and target: {info['device']}, {info['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_roofline(path, info, rows):
    """Conv rows on a roofline (intensity vs GFLOP/s under each device's measured peaks); memory-bound
    ops as % of the measured copy bandwidth."""
    plt = _pyplot()
    fig, (roof, bandwidth) = plt.subplots(1, 2, figsize=(14, 5.5))
    for device, peak in info["peaks"].items():
        xs = [2.0 ** e for e in range(-4, 12)]
        roof.plot(xs, [min(peak["sgemm_gflops"], peak["copy_gbps"] / 2 * x) for x in xs], "--",
                  label=f"{device} peak (SGEMM, copy)")
    colors = {t: f"C{i + len(info['peaks'])}" for i, t in enumerate(dict.fromkeys(r["target"] for r in rows))}
    conv = [r for r in rows if "gflops" in r]
    for target in dict.fromkeys(r["target"] for r in conv):
        subset = [r for r in conv if r["target"] == target]
        roof.scatter([r["flops"] / r["bytes"] for r in subset], [r["gflops"] for r in subset], label=target, s=18,
                     color=colors[target])
    roof.set_xscale("log")
    roof.set_yscale("log")
    roof.set_xlabel("FLOP per byte (compulsory traffic)")
    roof.set_ylabel("GFLOP/s")
    roof.set_title("conv2d ops against the measured peaks")
    roof.legend(fontsize=8)
    memory = [r for r in rows if "gbps" in r and r.get("pct_peak") is not None]
    labels = list(dict.fromkeys(f"{r['op']} {r['shape']}" for r in memory))
    for target in dict.fromkeys(r["target"] for r in memory):
        values = {f"{r['op']} {r['shape']}": r["pct_peak"] for r in memory if r["target"] == target}
        bandwidth.plot([labels.index(k) for k in values], list(values.values()), "o", label=target,
                       color=colors[target])
    bandwidth.set_xticks(range(len(labels)))
    bandwidth.set_xticklabels(labels, rotation=90, fontsize=6)
    bandwidth.set_ylabel("% of measured copy bandwidth")
    bandwidth.set_title("pooling and ReLU")
    if memory:
        bandwidth.legend(fontsize=8)
    else:
        bandwidth.text(0.5, 0.5, "no measured peak for this device", ha="center", transform=bandwidth.transAxes)
    fig.suptitle(f"{info['device']}, {info['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
