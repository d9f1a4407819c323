#!/usr/bin/env python3
"""TensorBoard event files (O1) read back by TensorBoard's own reader.

- A run with --tensorboard true: every number of every metrics.jsonl record (train, eval,
  expert load) is a scalar at the same step in TensorBoard, equal to the value rounded to float32
  (simple_value is a float); each MoE layer has a histogram of its per-expert loads per step.
- A run killed with SIGKILL and resumed (plus a half record planted at the end of its events
  file): TensorBoard reads every file without a CRC error, and what it shows equals metrics.jsonl
  with the killed process's records past the checkpoint superseded (SessionLog START).

Needs `tensorboard` (PyPI) for /usr/bin/python3: scripts/install_deps.sh installs it. Without it
this test fails (it never skips).
"""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    from tensorboard.backend.event_processing import event_accumulator, event_file_loader
except ImportError:
    print("FAIL: the tensorboard package is missing for %s (run scripts/install_deps.sh)" % sys.executable)
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DSV3 = os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3"))
COMMON = ["--preset", "debug", "--batch", "4", "--seq_len", "32", "--sample_tokens", "0",
          "--peak_gflops", "100", "--tensorboard", "true"]

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL  " + what)


def records(run):
    return [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]


def effective(recs):
    """What a reader should see: a "start" record at step s supersedes earlier records past s."""
    out = []
    for r in recs:
        if r["kind"] == "start":
            out = [x for x in out if x["step"] <= r["step"]]
        else:
            out.append(r)
    return out


def expected_scalars(recs):
    exp = {}  # tag -> {step: value}
    def put(tag, step, v):
        exp.setdefault(tag, {})[step] = v
    for r in recs:
        s = r["step"]
        nums = {k: v for k, v in r.items() if k not in ("kind", "step") and isinstance(v, (int, float))
                and not isinstance(v, bool)}
        if r["kind"] == "train":
            for k, v in nums.items():
                put("train/" + k, s, v)
            for l in r.get("expert_load", []):
                layer = "expert_load/" + l["layer"].replace(" ", "_")
                for k, v in l.items():
                    if isinstance(v, (int, float)):
                        put(layer + "/" + k, s, v)
        elif r["kind"] == "eval":
            for k, v in nums.items():
                put("eval/" + r["domain"].replace(" ", "_") + "/" + k, s, v)
    return exp


def load(run):
    # every file through TensorBoard's record reader (CRC checks), then the accumulator
    n = 0
    for f in sorted(glob.glob(os.path.join(run, "events.out.tfevents.*"))):
        for _ in event_file_loader.EventFileLoader(f).Load():
            n += 1
    acc = event_accumulator.EventAccumulator(
        run, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc, n


def compare(run, recs, what):
    acc, nevents = load(run)
    check(nevents > len(recs), f"{what}: TensorBoard's reader read {nevents} events")
    exp = expected_scalars(effective(recs))
    tags = set(acc.Tags()["scalars"])
    check(set(exp) == tags, f"{what}: tags differ: only in jsonl {sorted(set(exp) - tags)[:5]}, "
          f"only in TensorBoard {sorted(tags - set(exp))[:5]}")
    bad = 0
    for tag, by_step in exp.items():
        if tag not in tags:
            continue
        got = {e.step: e.value for e in acc.Scalars(tag)}
        if set(got) != set(by_step):
            bad += 1
            print(f"  {tag}: steps {sorted(got)[:8]} vs {sorted(by_step)[:8]}")
            continue
        for s, v in by_step.items():
            if got[s] != float(np.float32(v)):
                bad += 1
                print(f"  {tag} step {s}: {got[s]} vs {v}")
    check(bad == 0, f"{what}: {bad} scalar series differ from metrics.jsonl")
    # histograms of expert loads
    hist_tags = set(acc.Tags()["histograms"])
    eff = [r for r in effective(recs) if r["kind"] == "train"]
    layers = {l["layer"] for l in eff[0]["expert_load"]}
    check(hist_tags == {"expert_load/" + l.replace(" ", "_") for l in layers},
          f"{what}: histogram tags {sorted(hist_tags)}")
    for r in eff:
        for l in r["expert_load"]:
            hs = {h.step: h.histogram_value for h in acc.Histograms("expert_load/" + l["layer"].replace(" ", "_"))}
            h = hs.get(r["step"])
            loads = l["loads"]
            ok = (h is not None and h.num == len(loads) and h.sum == sum(loads) and h.min == min(loads)
                  and h.max == max(loads) and sum(h.bucket) == len(loads))
            if not ok:
                check(False, f"{what}: histogram {l['layer']} at step {r['step']}: {h} vs {loads}")
                return
    check(True, "histograms")


def main():
    tmp = tempfile.mkdtemp(prefix="dsv3_tb_")
    # 1. a straight run with evaluations
    run = os.path.join(tmp, "a")
    p = subprocess.run([DSV3, "train"] + COMMON + ["--steps", "12", "--eval_every", "4", "--out", run],
                       capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        sys.exit(1)
    recs = records(run)
    check(any(r["kind"] == "eval" for r in recs), "eval records present")
    compare(run, recs, "straight run")

    # 2. killed with SIGKILL mid-run, a half record planted, resumed
    run = os.path.join(tmp, "b")
    args = [DSV3, "train"] + COMMON + ["--steps", "60", "--save_every", "10", "--eval_every", "10",
                                       "--out", run]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpts = glob.glob(os.path.join(run, "ckpt_*.dsv3"))
        m = os.path.join(run, "metrics.jsonl")
        n = sum(1 for l in open(m) if '"train"' in l) if os.path.exists(m) else 0
        if ckpts and n >= 25:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ev = sorted(glob.glob(os.path.join(run, "events.out.tfevents.*")))
    check(len(ev) == 1, "one events file before the resume")
    size = os.path.getsize(ev[0])
    with open(ev[0], "ab") as f:  # what a kill in the middle of a write leaves
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02")
    p = subprocess.run([DSV3, "train", "--resume", run, "--out", run], capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        sys.exit(1)
    check("cut a partial record" in p.stderr, "the resume repaired the events file")
    check(os.path.getsize(ev[0]) == size, "repaired file ends at its last whole record")
    recs = records(run)
    check(sum(1 for r in recs if r["kind"] == "start") == 2, "a start record per process")
    steps = [r["step"] for r in effective(recs) if r["kind"] == "train"]
    check(steps == list(range(1, 61)), f"effective train steps {steps[:3]}..{steps[-3:]}")
    compare(run, recs, "killed and resumed run")

    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
