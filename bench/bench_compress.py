#!/usr/bin/env python3
"""Compression benchmarks (issue 15, I3-I5), all through the dsv3 command on one model:

  quant    the trained model in fp32 and bf16 against its int8 versions (dsv3 quantize w8a8,
           w8a16): validation loss (and its change, the target is < 1%), evaluation tokens/s,
           file size and the bytes of weights a process holds.
  prune    dsv3 prune at several keep fractions: parameters kept, validation loss right after
           pruning and after recovery fine-tuning (train --init_from) for --recover steps.
  distill  a smaller student trained for --student_steps from scratch, and the same student with
           the same seed and steps distilled from the model (train --teacher): validation loss.

Data: UTF-8 bytes (byte-level ids) of ../shared/data/text/fiction: the other novels train,
tinyshakespeare validates, written as llm.c token files. The model is `dsv3 train --preset
PRESET` for --steps steps (or --model: an existing run directory / checkpoint on the same data).

  python3 bench/bench_compress.py                       # tiny, 300 steps, every section (long)
  python3 bench/bench_compress.py --preset debug --steps 60 --recover 20 --student_steps 40
  python3 bench/bench_compress.py --sections quant --model runs/tiny
Prints tables and, with --json, one JSON object on stdout. Any Python 3 (no packages needed).
"""
import argparse
import glob
import json
import os
import re
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(dsv3, args, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    r = subprocess.run([dsv3] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"dsv3 {' '.join(args)} failed:\n{r.stdout}")
    return r.stdout, time.time() - t0


def write_tokens(path, data):
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, len(data), *([0] * 253)))
        f.write(struct.pack(f"<{len(data)}H", *data))


def make_data(shared, work):
    train, val = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
    if not os.path.exists(val):
        fiction = os.path.join(shared, "data", "text", "fiction")
        files = sorted(glob.glob(os.path.join(fiction, "*.txt")))
        tr = b"".join(open(f, "rb").read() for f in files if not f.endswith("tinyshakespeare.txt"))
        write_tokens(train, tr)
        write_tokens(val, open(os.path.join(fiction, "tinyshakespeare.txt"), "rb").read())
    return train, val


def eval_model(a, model, val, precision="fp32"):
    out, secs = run(a.dsv3, ["eval", "--model", model, "--data", val, "--batch", "8", "--seq_len", "256",
                             "--max_batches", str(a.eval_batches), "--precision", precision, "--json"], a.threads)
    j = json.loads(out[out.rfind("{"):])
    j["tokens_per_s"] = j["tokens"] / j["seconds"]
    return j


def weight_bytes(path, bytes_per_param):
    """fp32/bf16: the parameters (from the checkpoint header) x bytes; an int8 file: its size."""
    if not os.path.isdir(path) and not path.endswith(".dsv3"):
        return os.path.getsize(path)
    ck = path if not os.path.isdir(path) else sorted(glob.glob(os.path.join(path, "ckpt_*.dsv3")))[-1]
    with open(ck, "rb") as f:
        head = f.read(24)
        n = struct.unpack("<Q", head[16:24])[0]
        return json.loads(f.read(n))["n_params"] * bytes_per_param


def info_params(a, model_args):
    out, _ = run(a.dsv3, ["info", "--json"] + model_args, a.threads)
    return json.loads(out[out.rfind("{"):])


def section_quant(a, model, val):
    rows = []
    ref = None
    for name, path, prec in [("fp32", model, "fp32"), ("bf16", model, "bf16"),
                             ("w8a8", None, "fp32"), ("w8a16", None, "fp32"), ("w8a8 bf16-act", None, "bf16")]:
        if path is None:
            scheme = name.split()[0]
            path = os.path.join(a.work, f"model.{scheme}.dsv3q")
            if not os.path.exists(path):
                run(a.dsv3, ["quantize", "--model", model, "--out", path, "--scheme", scheme], a.threads)
        e = eval_model(a, path, val, prec)
        ref = ref or e["loss"]
        rows.append({"variant": name, "val_loss": e["loss"], "delta_pct": 100 * (e["loss"] - ref) / ref,
                     "eval_tokens_per_s": e["tokens_per_s"],
                     "weight_bytes": weight_bytes(path, 2 if name == "bf16" else 4)})
    log("\n| variant | val loss | vs fp32 | eval tokens/s | weights MiB |\n|---|---:|---:|---:|---:|")
    for r in rows:
        log(f"| {r['variant']} | {r['val_loss']:.4f} | {r['delta_pct']:+.3f}% | {r['eval_tokens_per_s']:.0f} | "
            f"{r['weight_bytes'] / 2**20:.2f} |")
    return rows


def section_prune(a, model, train, val):
    rows = []
    base = eval_model(a, model, val)
    for keep in a.keeps:
        out_p = os.path.join(a.work, f"pruned_{keep}.dsv3")
        # keep 1.0 is the control: the unpruned model fine-tuned for the same steps
        calib = ["--data", train] if keep < 1 else []
        out, _ = run(a.dsv3, ["prune", "--model", model, "--out", out_p, "--ffn_keep", str(keep),
                              "--experts_keep", str(keep), "--json"] + calib, a.threads)
        rep = json.loads(out[out.rfind("\n{") + 1:])
        e0 = eval_model(a, out_p, val)
        ft = os.path.join(a.work, f"recover_{keep}")
        run(a.dsv3, ["train", "--init_from", out_p, "--train_data", train, "--val_data", val,
                     "--steps", str(a.recover), "--lr", str(a.recover_lr), "--warmup", "0",
                     "--batch", "8", "--seq_len", "256", "--eval_every", "0",
                     "--save_every", "0", "--out", ft], a.threads)
        e1 = eval_model(a, ft, val)
        rows.append({"keep": keep, "params": rep["params"][1], "params_full": rep["params"][0],
                     "experts": rep["experts"][1], "val_loss_pruned": e0["loss"], "val_loss_recovered": e1["loss"],
                     "val_loss_full": base["loss"]})
    log(f"\nfull model: val loss {base['loss']:.4f}, recovery {a.recover} steps at lr {a.recover_lr}")
    log("| keep (ffn, experts) | params kept | experts | val loss pruned | after recovery |\n|---|---:|---:|---:|---:|")
    for r in rows:
        log(f"| {r['keep']} | {r['params'] / 1e6:.3f}M ({100 * r['params'] / r['params_full']:.0f}%) | "
            f"{r['experts']} | {r['val_loss_pruned']:.4f} | {r['val_loss_recovered']:.4f} |")
    return rows


def section_distill(a, model, train, val):
    common = ["--train_data", train, "--val_data", val, "--steps", str(a.student_steps), "--batch", "8",
              "--seq_len", "256", "--eval_every", "0", "--save_every", "0",
              "--seed", "7", "--preset", a.preset] + a.student.split()  # the teacher's preset, shrunk
    rows = []
    for name, extra in [("from scratch", []),
                        ("distilled", ["--teacher", model, "--distill_alpha", str(a.alpha),
                                       "--distill_temp", str(a.temp)])]:
        out_d = os.path.join(a.work, "student_" + name.split()[0])
        _, secs = run(a.dsv3, ["train"] + common + extra + ["--out", out_d], a.threads)
        e = eval_model(a, out_d, val)
        rows.append({"student": name, "val_loss": e["loss"], "train_seconds": secs})
    teacher = eval_model(a, model, val)
    log(f"\nteacher val loss {teacher['loss']:.4f}; student {a.student}, {a.student_steps} steps, "
        f"alpha {a.alpha}, T {a.temp}")
    log("| student | val loss | train s |\n|---|---:|---:|")
    for r in rows:
        log(f"| {r['student']} | {r['val_loss']:.4f} | {r['train_seconds']:.0f} |")
    return {"teacher_val_loss": teacher["loss"], "rows": rows}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    p.add_argument("--work", default=os.path.join(REPO, "runs", "bench_compress"))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--model", help="an already trained run directory or checkpoint (same data; "
                   "--preset must name its preset, the student is that preset shrunk by --student)")
    p.add_argument("--sections", default="quant,prune,distill")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval_batches", type=int, default=16)
    p.add_argument("--keeps", default="1.0,0.85,0.7,0.5", help="1.0: the unpruned control")
    p.add_argument("--recover", type=int, default=100)
    p.add_argument("--recover_lr", type=float, default=1e-3)
    p.add_argument("--student", default="--hidden 128 --layers 2 --dense_inter 384 --moe_inter 64")
    p.add_argument("--student_steps", type=int, default=300)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temp", type=float, default=2.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    a.keeps = [float(x) for x in a.keeps.split(",")]
    os.makedirs(a.work, exist_ok=True)
    train, val = make_data(a.shared, a.work)
    model = a.model
    if not model:
        model = os.path.join(a.work, f"model_{a.preset}_{a.steps}")
        if not glob.glob(os.path.join(model, "ckpt_*.dsv3")):
            log(f"training {a.preset} for {a.steps} steps -> {model}")
            run(a.dsv3, ["train", "--preset", a.preset, "--train_data", train, "--val_data", val,
                         "--steps", str(a.steps), "--batch", "8", "--seq_len", "256", "--eval_every", "0",
                         "--save_every", "0", "--out", model], a.threads)
    out = {"model": model, "threads": a.threads}
    sections = a.sections.split(",")
    if "quant" in sections:
        out["quant"] = section_quant(a, model, val)
    if "prune" in sections:
        out["prune"] = section_prune(a, model, train, val)
    if "distill" in sections:
        out["distill"] = section_distill(a, model, train, val)
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
