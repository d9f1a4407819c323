"""Tensor parallelism's communication volume per layer, measured against the formula (issue 11).

Runs `dsv3 train` under mpirun with --tp T on a model with L and L + 2 layers and reads the bytes
every step books under the purpose "tensor" (metrics.jsonl: comm_purpose_bytes.tensor, what the
tp rank sends in its all-reduces, counted by dist/collectives.h as a ring all-reduce's
2 (T-1)/T x S). The difference of the two runs over the 2 added MoE layers is the measured volume
of one layer, with nothing else in it (embedding, heads and MTP modules cancel).

Beside it, two formulas re-derived here from the model config (not from dsv3's code):
  dsv3     per layer and micro-batch of N rows: forward o_proj's and down_proj's outputs (2 N C);
           backward the FFN's input gradient (N C), the MLA latents' gradients
           (N (q_lora + 2 kv_lora + qk_rope); without q_lora q_proj's N C instead) and the gate
           weights' (N K, fp32): docs/parallel.md "Tensor parallelism"; with --sp the forward's
           all-reduces become all-gathers + reduce-scatters, and backward adds the all-gathers of
           dy and dh1 (MLA's input gradient is whole) and the norm weights' 2 C
  Megatron the textbook count: an all-reduce of N C after each row-parallel layer forward and
           of each column-parallel layer's input gradient backward (4 N C per layer); sequence
           parallelism replaces each by a reduce-scatter + all-gather of the same bytes
and the whole step's measured bytes against dsv3's formula (embedding, heads, MTP included).
The planner (src/train/plan.cpp) takes its TP volume from the same per-layer count as dsv3's
(model/tensor_parallel.h tp_pass_elements).

  python3 bench/bench_tp.py [--tp 2] [--sp] [--preset debug] [--model '--heads 4'] [--mpirun mpirun]
Needs a build with MPI (build/dsv3) and Python 3 (standard library only). No timing is
reported: the bytes are the same on any machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DSV3 = os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3"))


def config(preset, extra):
    out = subprocess.run([DSV3, "info", "--preset", preset, "--json"] + extra, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["config"]


def train(args, np, extra, out):
    cmd = [args.mpirun, "-np", str(np), "--oversubscribe"]
    if os.getuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [DSV3, "train", "--preset", args.preset, "--seq_len", str(args.seq_len), "--batch",
            str(args.batch), "--global_batch", str(args.global_batch), "--steps", str(args.steps),
            "--tp", str(args.tp), "--sample_tokens", "0", "--eval_batches", "0", "--peak_gflops",
            "1", "--out", out] + extra
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    steps = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"train"' in l]
    return steps[-1]["comm_purpose_bytes"]["tensor"]


# Elements in units of what a ring moves per (tp-1)/tp: an all-reduce of S elements counts 2 S,
# a reduce-scatter or all-gather of the whole S once.
def layer_elements(c, N, moe, sp):
    C = c["hidden"]
    act = 4 * N * C  # forward: 2 all-reduces, or (sp) 2 all-gathers + 2 reduce-scatters
    # backward: the FFN's input gradient (all-reduce; sp: all-gather dy and dh1, reduce-scatter,
    # the 2 norm weights' gradients all-reduced) and MLA's latents (all-reduce)
    act += 3 * N * C + 4 * C if sp else 2 * N * C
    act += 2 * (N * (2 * c["kv_lora"] + c["qk_rope"]) + N * (c["q_lora"] or C))
    return act, (2 * N * c["topk"] if moe else 0)


def step_elements(c, N, sp):
    C = c["hidden"]
    act, f32 = 2 * N * C, 0  # embedding (all-reduce; sp: reduce-scatter + all-gather backward)
    for l in range(c["layers"]):
        a, f = layer_elements(c, N, c["experts"] > 0 and l >= c["dense_layers"], sp)
        act, f32 = act + a, f32 + f
    # head: dxn all-reduced; max, sum-exp, target logit; sp: the last rows gathered first
    act, f32 = act + 2 * N * C + (N * C if sp else 0), f32 + 6 * N
    for _ in range(c["mtp_depth"]):  # MTP modules run on every row, as without sp
        a, f = layer_elements(c, N, c["experts"] > 0, False)
        act, f32 = act + 4 * N * C + a, f32 + 6 * N + f  # its embedding, block and head
    return act, f32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--preset", default="debug")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq_len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--global_batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--sp", action="store_true", help="sequence parallelism (--sp)")
    ap.add_argument("--model", default="", help="more model flags, e.g. '--heads 4' for --tp 4")
    args = ap.parse_args()
    T, L = args.tp, args.layers
    micros = args.global_batch // args.batch  # dp 1: every micro-batch on every tp rank
    N = args.batch * args.seq_len
    ring = (T - 1) / T  # elements above are in units of (T-1)/T
    measured = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (L, L + 2):
            measured[layers] = train(args, T, ["--layers", str(layers)] + args.model.split() +
                                     (["--sp"] if args.sp else []),
                                     os.path.join(tmp, "l%d" % layers))
    c = config(args.preset, ["--layers", str(L + 2)] + args.model.split())
    cb = 4  # fp32 runs (the default precision of dsv3 train on the CPU)
    per_layer = (measured[L + 2] - measured[L]) / 2 / micros
    act, f32 = layer_elements(c, N, True, args.sp)
    ours = ring * (act * cb + f32 * 4)
    megatron = ring * 8 * N * c["hidden"] * cb
    print("tp %d%s, %s (hidden %d, q_lora %d, kv_lora %d, qk_rope %d, top-%d), N = %d rows per "
          "micro-batch, fp32" % (T, " --sp" if args.sp else "", args.preset, c["hidden"], c["q_lora"], c["kv_lora"],
                                 c["qk_rope"], c["topk"], N))
    print("| per MoE layer and micro-batch | bytes sent per tp rank |")
    print("|---|---|")
    print("| measured (L+2 minus L layers) / 2 | %.0f |" % per_layer)
    print("| formula, dsv3's reductions | %.0f |" % ours)
    print("| formula, Megatron 4 x N C all-reduces (SP: RS + AG, same bytes) | %.0f |" % megatron)
    ok = abs(per_layer - ours) < 0.5
    for layers in (L, L + 2):
        cl = config(args.preset, ["--layers", str(layers)] + args.model.split())
        a, f = step_elements(cl, N, args.sp)
        whole = micros * ring * (a * cb + f * 4)
        print("| whole step, %d layers: measured %.0f, formula %.0f |  |" % (layers, measured[layers], whole))
        ok = ok and abs(measured[layers] - whole) < 0.5
    print("measured == formula:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
