"""The report as blocks: headings, paragraphs, lists and tables of strings, built once from report.json's content.

Every table is built once here and only *rendered* (benchmarks.report.markdown, .html, .plots), so the files
cannot disagree about a figure.
"""
from __future__ import annotations

from benchmarks.report.build import first_latency, measured, metric, metric_label, score, score_names
from compress.core.section import Section

Table = tuple[list[str], list[list[str]]]
# One block of the report: ("h1" | "h2" | "h3", title), ("p", text), ("ul", lines), ("table", (css class, Table)),
# ("note", lines) or ("plots", plot_files keys). Add a section here and it appears in report.md and report.html alike.
Block = tuple[str, object]


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def label(row: dict) -> str:
    return f"{row['artifact']} (reference: {row['reference']})" if row.get("reference") else row["artifact"]


def _s(value) -> str:
    return "" if value is None else str(value)


def _fixed(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def millions(n: int | None) -> str:
    return f"{n / 1e6:.2f} M" if n is not None else ""


def giga(n: int | None) -> str:
    return f"{n / 1e9:.3f}" if n is not None else ""


def size_split_table(report: dict) -> Table:
    """Where each artifact's bytes are: embeddings vs encoder vs head (tensor data, once per artifact)."""
    splits = {r["artifact"]: r["size_split"] for r in measured(report) if r.get("size_split")}
    body = [[name] + [f"{mb(split[p]['bytes'])}, {split[p]['parameters'] / 1e6:.2f} M"
                      for p in ("embeddings", "encoder", "head")] for name, split in splits.items()]
    return ["artifact", "embeddings", "encoder", "head"], body


def _share(part: float | None, whole: dict | None) -> str:
    """`part` GMAC/s as a percentage of `whole`'s (a measured GEMM rate or a nominal peak), where both are known."""
    return f"{100 * part / whole['gmacs_per_s']:.1f}%" if part and whole else ""


def gemm_share(row: dict) -> str:
    """Achieved GMAC/s as a share of this machine's measured GEMM rate at the row's shapes."""
    return _share(row.get("gmacs_per_s"), row.get("gemm_rate"))


def peak_share(row: dict) -> str:
    """Achieved GMAC/s as a share of the row's nominal peak, where both are known."""
    return _share(row.get("gmacs_per_s"), row.get("nominal_peak"))


def names(report: dict) -> dict:
    """How the report names its score and its rows' classes (report.json's `score_names`; older reports: from the
    metric's key)."""
    return report.get("score_names") or score_names(metric(report))


def headline(report: dict) -> str:
    """The report's score column, as its readers know it: "accuracy" or "entity F1"."""
    return names(report)["label"]


def summary_table(report: dict) -> Table:
    head = ["artifact", "back end", "precision", "threads", headline(report), "macro-F1", "drop (pts)", "size",
            "size×",
            "params", "encoder params", "GMACs @128", "load s", "RSS before load MB", "peak RSS MB", "p50 ms", "p95 ms", "p99 ms", "speed-up×",
            "own-length p50 ms", "own-length p95 ms", "mean tokens", "GMAC/s", "% of GEMM rate", "Pareto"]
    body = []
    for r in measured(report):
        lat, own = first_latency(r) or {}, r.get("dynamic_latency") or {}
        front = [k for k, on in r.get("pareto", {}).items() if on]
        body.append([label(r), r["backend"], r["precision"], _s(r.get("threads")), f"{score(r):.4f}",
                     f"{r['macro_f1']:.4f}", _fixed(r.get("score_drop_points"), 2), mb(r["size_bytes"]),
                     _s(r.get("size_ratio")), millions(r["parameters"]),
                     millions(r.get("encoder_parameters")), giga(r.get("macs_seq128")), _s(r.get("load_seconds")),
                     _s(r.get("rss_before_load_mb")), _s(r.get("peak_rss_mb")), _s(lat.get("p50_ms")),
                     _s(lat.get("p95_ms")), _s(lat.get("p99_ms")), _s(r.get("speedup")), _s(own.get("p50_ms")),
                     _s(own.get("p95_ms")), _s(own.get("mean_tokens")), _s(r.get("gmacs_per_s")), gemm_share(r),
                     ", ".join(front)])
    return head, body


def _shape(s: dict) -> str:
    return f"{s['m']}×{s['k']}×{s['n']} ×{s['calls']}: {s['gmacs_per_s']}"


def efficiency_table(report: dict) -> Table:
    """Each CPU row's achieved GMAC/s against the GEMM rate its own engine measured on this machine at its model's
    shapes, and against the nominal peak; the shapes with their calls per pass and their own GMAC/s."""
    head = ["artifact", "back end", "precision", "threads", "GMAC/s", "GEMM GMAC/s (measured)", "% of GEMM rate",
            "nominal peak GMAC/s", "GEMM % of nominal peak", "GEMM kernel", "shapes M×K×N ×calls: GMAC/s"]
    body = []
    for r in measured(report):
        rate, peak = r.get("gemm_rate"), r.get("nominal_peak")
        if not rate and not peak:
            continue
        body.append([label(r), r["backend"], r["precision"], _s(r.get("threads")), _s(r.get("gmacs_per_s")),
                     _s(rate and rate["gmacs_per_s"]), gemm_share(r), _s(peak and peak["gmacs_per_s"]),
                     _share(rate and rate["gmacs_per_s"], peak), rate["kernel"] if rate else "not measured",
                     "; ".join(map(_shape, rate["shapes"])) if rate else ""])
    return head, body


TOP_OPS = 6  # operator types named per row; the rest are summed as "others"


def operator_cell(split: dict | None) -> str:
    """"QAttention 50.6%, DynamicQuantizeMatMul 22.3%, …, 7 others 3.1%": shares of the row's node time."""
    if not split:
        return "not profiled (only ONNX Runtime CPU rows are)"
    ops, rest = split["ops"][:TOP_OPS], split["ops"][TOP_OPS:]
    cells = [f"{o['op']} {100 * o['share']:.1f}%" for o in ops]
    if rest:
        cells.append(f"{len(rest)} others {100 * sum(o['share'] for o in rest):.1f}%")
    return ", ".join(cells)


def operator_table(report: dict) -> Table:
    """Where each row's time goes, by operator type, from an ONNX Runtime profile of a short run of its own."""
    head = ["artifact", "back end", "profiled at", "run ms", "node ms", "time by operator type (share of node time)"]
    body = []
    for r in measured(report):
        split = r.get("operator_split")
        shape = (f"batch {split['batch_size']}, sequence {split['sequence_length']}, {split['runs']} runs"
                 if split else "")
        body.append([label(r), r["backend"], shape, _s(split and split["run_ms"]), _s(split and split["node_ms"]),
                     operator_cell(split)])
    return head, body


def sweep_table(report: dict) -> Table:
    head = ["artifact", "back end", "batch", "sequence", "model p50 ms", "model p95 ms", "model p99 ms",
            "model per s", "repeats", "stable", "+tokenize p50 ms", "+tokenize p95 ms", "+tokenize p99 ms",
            "+tokenize per s"]
    body = []
    for r in measured(report):
        for p in r.get("latency", []):
            tok = p.get("with_tokenization", {})
            body.append([label(r), r["backend"], str(p["batch_size"]), str(p["sequence_length"]), str(p["p50_ms"]),
                         str(p["p95_ms"]), str(p["p99_ms"]), str(p["throughput_per_s"]), str(p["repeats"]),
                         _s(p.get("stable")), _s(tok.get("p50_ms")), _s(tok.get("p95_ms")), _s(tok.get("p99_ms")),
                         _s(tok.get("throughput_per_s"))])
    return head, body


def per_class_table(row: dict, per_class: str) -> Table:
    """Per class, or for a token row per entity type (entity-level figures, support in gold entities)."""
    body = [[name, f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"])]
            for name, c in row["per_class"].items()]
    return [per_class, "precision", "recall", "F1", "support"], body


def by_class_table(report: dict) -> Table:
    """F1 per class (entity type), one row per measured row: where a compressed tagger loses (rare types first,
    usually)."""
    rows = [r for r in measured(report) if r.get("per_class")]
    types = sorted({t for r in rows for t in r["per_class"]})
    body = [[label(r), r["backend"], f"{score(r):.4f}"]
            + [f"{r['per_class'][t]['f1']:.4f}" if t in r["per_class"] else "" for t in types] for r in rows]
    return ["artifact", "back end", f"{headline(report)} (micro)", *types], body


def _minus(text: str) -> str:
    """A signed figure as printed text: a real minus sign, not a hyphen."""
    return text.replace("-", "\u2212")


def reference_lines(report: dict) -> list[str]:
    """The reference, and our best beside it (the note's rule): its drop against the baseline, and the reference's
    size and p50 over ours (how many times smaller, and faster, ours is)."""
    note = report.get("reference_note")
    if not note:
        return []
    ref, best = note["reference"], note["best"]
    name = metric_label(metric(ref))
    reference = (f"Reference: {ref['artifact']} on {ref['backend']}: {name} {score(ref):.4f}, {mb(ref['size_bytes'])}, "
                 f"p50 {ref['p50_ms']} ms.")
    if best is None:  # every model of ours is at chance: none is called our best
        return [reference, f"Our best: none ({note['rule']}: a model at chance is no one's best, however fast)."]
    size_ratio, speed_ratio, drop = note["size_ratio"], note["speed_ratio"], best["drop_points"]
    size = (f"{size_ratio:.1f}× smaller than the reference" if size_ratio >= 1
            else f"{1 / size_ratio:.1f}× larger than the reference")
    return [
        reference,
        f"Our best ({note['rule']}): {best['artifact']}: {name} {score(best):.4f}"
        + (f" ({_minus(f'{0.0 - drop:+.2f}')} points vs the baseline)" if drop is not None else "")  # None: no baseline
        + f", {mb(best['size_bytes'])} ({size}), p50 {best['p50_ms']} ms ({speed_ratio:.2f}× the reference's speed).",
    ]


def device_lines(report: dict) -> list[str]:
    """Rows merged by benchmarks.ingest: measured on another device, on a sample of the test split."""
    return [f"{r['artifact']} on {r['backend']}: {r['split']}; "
            + ", ".join(f"{k} {v}" for k, v in r["measured_on"].items() if v) for r in report["rows"] if "measured_on" in r]


def skipped_lines(report: dict) -> list[str]:
    """Rows without figures and why: "not measured" (this machine cannot run the back end) or "failed"."""
    return [f"{r['artifact']} on {r['backend']}: {r['status']}: {r['reason']}"
            for r in report["rows"] if r["status"] != "measured"]


def lineage_lines(report: dict) -> list[str]:
    """Each artifact's chain back to the model source, each link with its stage and kind: `b (its stage, onnx) ←
    a (its stage, hf-checkpoint) ← source`."""
    by_name = {a["name"]: a for a in report["artifacts"]}
    lines = []
    for a in report["artifacts"]:
        chain, seen, cur = [], set(), a
        while cur is not None and cur["name"] not in seen:
            seen.add(cur["name"])
            chain.append(f"{cur['name']} ({cur['stage']}, {cur['kind']})")
            parent = cur.get("parent")
            cur = by_name.get(parent) if parent else None
            if parent and cur is None:
                chain.append(parent)
        lines.append(" ← ".join(chain))
    return lines


def hardware_lines(report: dict) -> list[str]:
    hw = report["hardware"]
    isa = ", ".join(k for k, v in hw["isa"].items() if v) or "none of " + ", ".join(hw["isa"])
    threads = sorted({str(r["threads"]) for r in measured(report) if r.get("threads")})
    loads = [r["load_average_1min"] for r in measured(report) if r.get("load_average_1min") is not None]
    busy = (f"; 1-minute load average when rows were measured: {min(loads)}–{max(loads)} on "
            f"{hw['logical_cores']} logical cores" if loads else "")
    bases = sorted({f"{p['basis']} = {p['gmacs_per_s']} GMAC/s" for r in measured(report) if (p := r.get("nominal_peak"))})
    return [
        f"CPU: {hw['cpu']} ({hw['logical_cores']} logical / {hw['physical_cores']} physical cores, "
        f"{hw['memory_gib']} GiB); ISA: {isa}",
        f"GPU: {hw['gpu'] or 'none'}; ONNX Runtime providers: {', '.join(hw['onnxruntime_providers'])}",
        f"Inference threads: {', '.join(threads) or 'n/a'} (fixed per row; each row measured in its own process)"
        + busy,
        *([f"Nominal peak (an upper bound from the ISA flags and clock, not a measured figure): {'; '.join(bases)}"]
          if bases else []),
        f"Python {hw['python']} on {hw['os']}",
        ", ".join(f"{k} {v}" for k, v in hw["versions"].items()),
    ]


INTRO = ("Drop is in points of the score column, size× and speed-up× are baseline ÷ row at the first latency point. "
         "Model latency is on pre-tokenized inputs; '+tokenize' is text in, logits out. "
         "Peak RSS is the peak resident memory of the process that measured the row (libraries included; "
         "'before load' is that process before the model was opened). "
         "'Own-length' latency is batch 1 on a seeded sample of test texts, each tokenized alone at its own length "
         "(no padding; 'mean tokens' is their mean); the other latencies are at the sweep's fixed shapes. "
         "GMAC/s is the MACs of one sequence-128 example over the batch-1, sequence-128 p50; '% of GEMM rate' sets it "
         "against the rate the row's own engine reaches on this machine in bare matrix multiplies at the model's "
         "linear-layer shapes, with the row's threads (see Efficiency).")

EFFICIENCY = ("GEMM GMAC/s is measured here, once per machine, library versions, shapes, precision and threads (then "
              "cached): the row's engine times its model's linear layers as bare matrix multiplies (M = 128 tokens, "
              "batch 1; all calls of a shape in one run, each with a weight of its own), with the row's session "
              "settings and threads, and divides all their MACs by the shapes' summed times. The nominal peak is the "
              "ISA flags' vendor figure (see Hardware); a GEMM far from 100% of it shows what the flags miss (AMX) "
              "or a wrong clock. Time by operator type is an ONNX Runtime profile of the row's model in a session of "
              "its own (same settings, the profiler on), at batch 1 and the sweep's first sequence length, the first "
              "run left out; run ms is a whole run, node ms the operators' sum (the difference is the session's own "
              "overhead).")

PLOTS = {"latency": ("pareto-latency.png", "p50 latency"), "size": ("pareto-size.png", "size on disk")}


def stage_sections(report: dict) -> list[Section]:
    """What the run's stages show of themselves (report.json's `sections`, written by the report's build)."""
    return [Section.model_validate(s) for s in report.get("sections", [])]


def stage_plots(report: dict) -> dict[str, dict]:
    """The stages' plots by key (their file names), as report.json holds them."""
    return {s.plot.file: s.plot.model_dump() for s in stage_sections(report) if s.plot}


def plot_files(report: dict) -> dict[str, str]:
    """Every plot of the report, by key: the Pareto plots (PLOTS' keys), then the stages' (each its file name)."""
    return {axis: file for axis, (file, _) in PLOTS.items()} | {key: key for key in stage_plots(report)}


def plot_title(report: dict, key: str) -> str:
    """"Accuracy vs p50 latency", "Entity F1 vs size on disk": the score the plot's vertical axis shows; a stage's
    plot: its own title."""
    if key in PLOTS:
        name = headline(report)
        return f"{name[0].upper()}{name[1:]} vs {PLOTS[key][1]}"
    return stage_plots(report)[key]["title"]


def section_blocks(section: Section) -> list[Block]:
    """A stage's section: its title, then its lines, its table and its plot, each where it has one."""
    return [("h2", section.title), *([("ul", section.lines)] if section.lines else []),
            *([("table", (section.table.css, (section.table.head, section.table.rows)))] if section.table else []),
            *([("plots", [section.plot.file])] if section.plot else [])]


def baseline_line(report: dict) -> str:
    base = report["baseline"]
    value = "not measured" if score(base) is None else f"{score(base):.4f}"
    return f"Baseline: {base['artifact']} on {base['backend']} (test {headline(report)} {value})."


def failure_line(report: dict) -> str | None:
    """Why the run stopped, when it did: the step, its exit code and its reason (the rows are what finished)."""
    failure = report.get("failure")
    if not failure:
        return None
    return (f"Run FAILED at step {failure['step']} (exit {failure['exit_code']}): {failure['reason']}. The rows below "
            f"are the steps that finished before it.")


def sections(report: dict) -> list[Block]:
    blocks: list[Block] = [("h1", f"compress report: {report['recipe']}")]
    if failure_line(report):
        blocks += [("note", [failure_line(report)])]
    blocks += [("p", f"{baseline_line(report)} {INTRO}"), ("table", ("summary", summary_table(report)))]
    if report.get("warnings"):
        blocks += [("h2", "Warnings"), ("note", report["warnings"])]
    if reference_lines(report):
        blocks += [("h2", "Against the reference"), ("note", reference_lines(report))]
    blocks += [("h2", "Pareto plots"), ("plots", list(PLOTS))]
    for section in stage_sections(report):
        blocks += section_blocks(section)
    if skipped_lines(report):
        blocks += [("h2", "Not measured here, or failed"), ("ul", skipped_lines(report))]
    if size_split_table(report)[1]:
        blocks += [("h2", "Size split"), ("table", ("size-split", size_split_table(report)))]
    rates = efficiency_table(report)
    if rates[1] or any(r.get("operator_split") for r in measured(report)):
        blocks += [("h2", "Efficiency: measured GEMM rate and time by operator type"), ("p", EFFICIENCY),
                   *([("table", ("efficiency", rates))] if rates[1] else []),
                   ("table", ("operators", operator_table(report)))]
    if device_lines(report):
        blocks += [("h2", "Measured on devices (benchmarks.ingest; a test-split sample, no ratios)"),
                   ("ul", device_lines(report))]
    blocks += [("h2", "Latency sweep"), ("table", ("sweep", sweep_table(report)))]
    per_class, by_class = names(report)["per_class"], names(report)["by_class"]
    if by_class:
        blocks += [("h2", by_class), ("table", ("entity-types", by_class_table(report)))]
    blocks += [("h2", f"Per-{per_class.replace(' ', '-')} precision, recall and F1 (test split)")]
    for r in measured(report):
        if "per_class" in r:  # rows ingested from a device carry only their scores and macro-F1
            blocks += [("h3", f"{label(r)} on {r['backend']}"), ("table", ("per-class", per_class_table(r, per_class)))]
    blocks += [("h2", "Lineage"), ("ul", lineage_lines(report)), ("h2", "Hardware"), ("ul", hardware_lines(report))]
    return blocks
