#!/usr/bin/env python3
"""Curation benchmark (D1-D7): `dsv3 curate` throughput per stage and for the whole pipeline,
memory as the input grows, datatrove side by side, and the planted quality benchmark.
Not a test: it prints a table and writes everything to --out as JSON.

What is measured
  corpus     JSONL documents cut from ../shared/data/text (wiki + fiction; paragraphs joined so a
             paragraph is one line, as on the web), replicated with a per-copy word substitution
             until it reaches --mb; and, as a second domain, Python standard-library sources
             (--code_glob, default /usr/lib/python3.*/**/*.py) read as one document per file.
  per stage  from the run's summary.json: bytes and documents entering each stage over the
             core-seconds spent in it (each thread times its own work), at --threads 1.
  pipeline   input bytes / (wall seconds x threads) for the whole run, all phases included.
  memory     peak RSS (wait4 ru_maxrss) at 1x and 4x --mem_mb of input.
  datatrove  if `import datatrove` works (pip install datatrove spacy): its Gopher quality,
             Gopher repetition, C4 and FineWeb filters on the same documents in one process,
             docs and MB per CPU second (time.process_time, as dsv3's stage times are CPU time),
             and how often its keep/drop decision equals dsv3's (dsv3's C4 run with datatrove's
             thresholds for that comparison).
  planted    build/tests/test_curate_planted with DSV3_PLANTED_SCALE (near-duplicate recall and
             false merges, PII recall and false positives per MB).

Usage: python3 bench/bench_curate.py [--dsv3 build/dsv3] [--mb 32] [--mem_mb 16] [--threads 1]
       [--dt_mb 4] [--planted build/tests/test_curate_planted] [--scale 2] [--out FILE]
"""
import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.environ.get("DSV3_SHARED_DIR", os.path.join(REPO, "..", "shared"))


def shared_documents():
    files = sorted(glob.glob(os.path.join(SHARED, "data/text/wiki/*.txt")) +
                   glob.glob(os.path.join(SHARED, "data/text/fiction/*.txt")))
    docs = []
    for f in files:
        text = open(f, encoding="utf-8", errors="replace").read()
        paras = [" ".join(p.split()) for p in text.split("\n\n")]
        paras = [p for p in paras if len(p.split()) >= 8]
        doc, words = [], 0
        for p in paras:
            doc.append(p)
            words += len(p.split())
            if words >= 150:
                docs.append("\n".join(doc))
                doc, words = [], 0
    return docs


def write_corpus(path, docs, mb, seed):
    rnd = random.Random(seed)
    size, n, copy = 0, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1e6:
            for d in docs:
                t = d
                if copy:  # later copies differ by a few words, like crawled near-duplicates
                    w = t.split(" ")
                    for _ in range(max(1, len(w) // 20)):
                        w[rnd.randrange(len(w))] = "w%x" % rnd.randrange(1 << 24)
                    t = " ".join(w)
                line = json.dumps({"id": "d%d" % n, "text": t}) + "\n"
                f.write(line)
                size += len(line.encode())
                n += 1
                if size >= mb * 1e6:
                    break
            copy += 1
    return n


def run_curate(dsv3, inputs, out, threads, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [dsv3, "curate", "--input", *inputs, "--output", out, "--threads", str(threads), *extra]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.time() - t0
    outp = p.stdout.read().decode()
    if status != 0:
        sys.exit("dsv3 curate failed:\n" + outp)
    summary = json.load(open(os.path.join(out, "summary.json")))
    return summary, wall, usage.ru_maxrss * 1024


def stage_table(summary):
    rows = {}
    for name, s in summary["stats"]["stages"].items():
        if s["seconds"] > 0:
            rows[name] = {"docs_in": s["docs_in"], "mb_in": s["bytes_in"] / 1e6,
                          "seconds": s["seconds"],
                          "mb_per_s_per_core": s["bytes_in"] / 1e6 / s["seconds"],
                          "docs_per_s_per_core": s["docs_in"] / s["seconds"]}
    return rows


def datatrove_side_by_side(dsv3, docs, tmp, threads):
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter,
                                                GopherQualityFilter, GopherRepetitionFilter)
        from importlib.metadata import version
        dt_version = version("datatrove")
    except Exception as e:  # noqa: BLE001
        return {"available": False, "reason": str(e)}
    path = os.path.join(tmp, "dt.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": "x%d" % i, "text": d}) + "\n")
    mb = sum(len(d.encode()) for d in docs) / 1e6
    filters = {"gopher_quality": (GopherQualityFilter(), []),
               "gopher_repetition": (GopherRepetitionFilter(), []),
               "c4": (C4QualityFilter(), ["--c4_min_words_per_line", "3", "--c4_min_sentences", "5"]),
               "fineweb": (FineWebQualityFilter(), [])}
    out = {"available": True, "version": dt_version, "docs": len(docs), "mb": mb,
           "filters": {}}
    # warm spaCy's tokenizer (loaded lazily) outside the timing
    GopherQualityFilter().filter(Document(text="warm up the tokenizer", id="w"))
    for name, (flt, extra) in filters.items():
        t0 = time.process_time()  # CPU time, like dsv3's per-stage numbers (the machine is shared)
        dropped = set()
        for i, d in enumerate(docs):
            r = flt.filter(Document(text=d, id="x%d" % i))
            if r is not True and not (isinstance(r, tuple) and r[0]):
                dropped.add("x%d" % i)
        dt_s = time.process_time() - t0
        summ, _, _ = run_curate(dsv3, [path], os.path.join(tmp, "dt_" + name), threads,
                                ["--stages", name, "--compression", "none", *extra])
        st = summ["stats"]["stages"][name]
        mine = set()
        for line in open(os.path.join(tmp, "dt_" + name, "rejects", "part-00000.jsonl")):
            j = json.loads(line)
            if j["curate"]["stage"] == name:
                mine.add(j["id"])
        agree = sum((("x%d" % i) in dropped) == (("x%d" % i) in mine) for i in range(len(docs)))
        out["filters"][name] = {
            "datatrove_mb_per_s": mb / dt_s, "datatrove_docs_per_s": len(docs) / dt_s,
            "dsv3_mb_per_s_per_core": st["bytes_in"] / 1e6 / st["seconds"],
            "dsv3_docs_per_s_per_core": st["docs_in"] / st["seconds"],
            "speedup": (st["bytes_in"] / 1e6 / st["seconds"]) / (mb / dt_s),
            "datatrove_dropped": len(dropped), "dsv3_dropped": len(mine),
            "decision_agreement": agree / len(docs)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--mb", type=float, default=32)
    ap.add_argument("--mem_mb", type=float, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dt_mb", type=float, default=4)
    ap.add_argument("--planted", default=os.path.join(REPO, "build", "tests", "test_curate_planted"))
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--code_glob", default="/usr/lib/python3.*/**/*.py",
                    help="code domain (dsv3 expands the glob itself; python3.* = the stdlib only)")
    ap.add_argument("--skip_datatrove", action="store_true")
    a = ap.parse_args()
    docs = shared_documents()
    if not docs:
        sys.exit("no shared texts under %s/data/text" % SHARED)
    tmp = tempfile.mkdtemp(prefix="dsv3_bench_curate_")
    res = {"threads": a.threads,
           "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t")}
    try:
        # 1. the whole pipeline on prose
        corpus = os.path.join(tmp, "corpus.jsonl")
        n = write_corpus(corpus, docs, a.mb, 1)
        summ, wall, rss = run_curate(a.dsv3, [corpus], os.path.join(tmp, "out"), a.threads)
        mb_in = summ["stats"]["bytes_read"] / 1e6
        res["prose"] = {"docs": n, "mb": mb_in, "wall_s": wall, "peak_rss_mb": rss / 1e6,
                        "pipeline_mb_per_s_per_core": mb_in / wall / a.threads,
                        "pipeline_docs_per_s_per_core": n / wall / a.threads,
                        "pipeline_mb_per_cpu_second": summ["throughput"]["mb_per_cpu_second"],
                        "pipeline_docs_per_cpu_second": summ["throughput"]["docs_per_cpu_second"],
                        "docs_written": summ["stats"]["docs_written"],
                        "stages": stage_table(summ), "phases": summ["phases"]}
        filt = [s for s in ("gopher_quality", "gopher_repetition", "c4", "fineweb")
                if s in summ["stats"]["stages"]]
        secs = sum(summ["stats"]["stages"][s]["seconds"] for s in filt)
        res["prose"]["heuristic_filters_chain_mb_per_s_per_core"] = \
            summ["stats"]["stages"]["gopher_quality"]["bytes_in"] / 1e6 / secs
        # 2. code: the Python standard library, one document per file, filters that suit code
        py = sorted(glob.glob(a.code_glob, recursive=True))
        if py:
            summ_c, wall_c, _ = run_curate(a.dsv3, [a.code_glob], os.path.join(tmp, "code"),
                                           a.threads, ["--stages", "normalize,pii,exact_dedup,minhash_dedup"])
            mb_c = summ_c["stats"]["bytes_read"] / 1e6
            res["code"] = {"files": len(py), "mb": mb_c, "wall_s": wall_c,
                           "pipeline_mb_per_s_per_core": mb_c / wall_c / a.threads,
                           "exact_duplicates": summ_c["dedup"].get("exact_duplicates"),
                           "near_duplicates": summ_c["dedup"].get("near_duplicates"),
                           "pii": summ_c["stats"]["pii"], "stages": stage_table(summ_c)}
        # 3. memory as the input grows
        mem = {}
        for k in (1, 4):
            c = os.path.join(tmp, "mem%d.jsonl" % k)
            write_corpus(c, docs, a.mem_mb * k, 7)
            _, w, r = run_curate(a.dsv3, [c], os.path.join(tmp, "mem%d" % k), a.threads)
            mem["%gMB" % (a.mem_mb * k)] = {"peak_rss_mb": r / 1e6, "wall_s": w}
            os.remove(c)
        res["memory"] = mem
        # 4. datatrove side by side
        if not a.skip_datatrove:
            sub, size = [], 0
            for d in docs:
                sub.append(d)
                size += len(d.encode())
                if size >= a.dt_mb * 1e6:
                    break
            res["datatrove"] = datatrove_side_by_side(a.dsv3, sub, tmp, a.threads)
        # 5. the planted benchmark
        if os.path.exists(a.planted):
            pj = os.path.join(tmp, "planted.json")
            env = dict(os.environ, DSV3_PLANTED_OUT=pj, DSV3_PLANTED_SCALE=str(a.scale))
            p = subprocess.run([a.planted], env=env, capture_output=True, text=True)
            res["planted"] = json.load(open(pj)) if os.path.exists(pj) else {"error": p.stdout[-2000:]}
            res["planted"]["passed"] = p.returncode == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # the table
    pr = res["prose"]
    print("dsv3 curate, %d thread(s), %s" % (a.threads, res["cpu"]))
    print("prose: %d docs, %.1f MB: whole pipeline %.2f MB/s per core wall (%.2f MB per CPU second, "
          "%.0f docs per CPU second), peak RSS %.0f MB" %
          (pr["docs"], pr["mb"], pr["pipeline_mb_per_s_per_core"], pr["pipeline_mb_per_cpu_second"],
           pr["pipeline_docs_per_cpu_second"], pr["peak_rss_mb"]))
    print("%-20s %10s %10s %12s %14s" % ("stage", "MB in", "core-s", "MB/s/core", "docs/s/core"))
    for name, s in pr["stages"].items():
        print("%-20s %10.1f %10.2f %12.1f %14.0f" % (name, s["mb_in"], s["seconds"],
                                                     s["mb_per_s_per_core"], s["docs_per_s_per_core"]))
    print("heuristic filter chain (4 filters): %.1f MB/s per core" % pr["heuristic_filters_chain_mb_per_s_per_core"])
    if "code" in res:
        c = res["code"]
        print("code: %d files, %.1f MB: %.2f MB/s per core; %s exact / %s near duplicates; PII %s" %
              (c["files"], c["mb"], c["pipeline_mb_per_s_per_core"], c["exact_duplicates"],
               c["near_duplicates"], {k: v for k, v in c["pii"].items() if v}))
    print("memory: " + ", ".join("%s -> %.0f MB" % (k, v["peak_rss_mb"]) for k, v in res["memory"].items()))
    dt = res.get("datatrove", {})
    if dt.get("available"):
        print("datatrove %s on %.1f MB (%d docs), one process:" % (dt["version"], dt["mb"], dt["docs"]))
        for name, f in dt["filters"].items():
            print("  %-18s datatrove %6.2f MB/s  dsv3 %7.1f MB/s/core  x%-6.0f agreement %.3f" %
                  (name, f["datatrove_mb_per_s"], f["dsv3_mb_per_s_per_core"], f["speedup"],
                   f["decision_agreement"]))
    elif dt:
        print("datatrove not available (%s): published figures are cited in docs/curation.md" % dt.get("reason"))
    if "planted" in res:
        print("planted:", json.dumps({k: v for k, v in res["planted"].get("dedup", {}).items()}),
              json.dumps({k: res["planted"].get("pii", {}).get(k) for k in
                          ("pii_recall", "false_positives_per_mb", "clean_text_mb")}))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
