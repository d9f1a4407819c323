#!/usr/bin/env python3
"""Tokenizer benchmark (D9): `dsv3 tokenizer` beside tiktoken and Hugging Face tokenizers, on the
same text in one run. Not a test: it prints numbers, ratios and markdown rows to paste into a report.

Encoding: GPT-2 (the local gpt2.tiktoken), all files under ../shared/data/text.
  dsv3      `dsv3 tokenizer encode --count_only --json`: encode time only (the CLI times the
            encode call; file reading and tokenizer loading are excluded), best of --repeat.
  tiktoken  encode_ordinary per file (1 thread); encode_ordinary_batch over ~64 KiB line-aligned
            chunks with num_threads = all (tiktoken parallelises over documents, not within one).
  HF        Tokenizer.from_file(tokenizer.json exported by dsv3), encode per file (1 thread).
Training: about 10 MB (the shared texts, topped up with Python standard-library sources), 32K
  vocabulary, GPT-2 pre-tokenisation, 16 special tokens, min_frequency 2, restricted to 2 cores
  (taskset -c 0,1) when the machine has more. Wall time and peak RSS (VmHWM, which each process reports itself);
  for HF the RSS of a Python that only imports tokenizers is shown too, as the baseline.

Usage: python3 bench/bench_tokenizer.py [--dsv3 build/dsv3] [--repeat 3] [--threads 0]
       [--train_mb 10] [--skip_train] [--skip_encode]
Needs tiktoken and tokenizers (pip); re-runs itself under a python3 that has them.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.environ.get("DSV3_SHARED_DIR", os.path.join(REPO, "..", "shared"))
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
REEXEC = "DSV3_BENCH_REEXEC"


def ensure_modules():
    try:
        import tiktoken  # noqa: F401
        import tokenizers  # noqa: F401
        return
    except ImportError:
        pass
    if not os.environ.get(REEXEC):
        for c in [shutil.which("python3"), os.path.expanduser("~/.pyenv/shims/python3")]:
            if not c or os.path.realpath(c) == os.path.realpath(sys.executable):
                continue
            ok = subprocess.run([c, "-c", "import tiktoken, tokenizers"],
                                capture_output=True).returncode == 0
            if not ok:
                subprocess.run([c, "-m", "pip", "install", "-q", "tiktoken", "tokenizers"],
                               capture_output=True)
                ok = subprocess.run([c, "-c", "import tiktoken, tokenizers"],
                                    capture_output=True).returncode == 0
            if ok:
                os.environ[REEXEC] = "1"
                os.execv(c, [c, os.path.abspath(__file__)] + sys.argv[1:])
    sys.exit("needs tiktoken and tokenizers: python3 -m pip install tiktoken tokenizers")


def run_timed(cmd, env=None, pin_two=False):
    """Runs cmd (under `taskset -c 0,1` when pin_two); returns (wall seconds, stdout)."""
    if pin_two and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0,1"] + cmd
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:5]))}... failed: {r.stderr.decode()[-2000:]}")
    return wall, r.stdout


def chunks_of(text, size=64 * 1024):
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def bench_encode(args, tmp):
    import json
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    import tokenizers

    tik_file = os.path.join(SHARED, "data", "tokenizers", "gpt2", "gpt2.tiktoken")
    text_dir = os.path.join(SHARED, "data", "text")
    files = sorted(p for p in glob.glob(os.path.join(text_dir, "**", "*"), recursive=True)
                   if os.path.isfile(p))
    texts = [open(f, "rb").read().decode("utf-8") for f in files]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    threads = args.threads or os.cpu_count()
    enc = tiktoken.Encoding(name="gpt2_local", pat_str=GPT2_PATTERN,
                            mergeable_ranks=load_tiktoken_bpe(tik_file),
                            special_tokens={"<|endoftext|>": 50256})
    hf_json = os.path.join(tmp, "gpt2.json")
    subprocess.run([args.dsv3, "tokenizer", "export", "--tokenizer", tik_file, "--format", "hf",
                    "--out", hf_json], check=True, capture_output=True)
    hf = tokenizers.Tokenizer.from_file(hf_json)

    def best(f):
        return max(f() for _ in range(args.repeat))

    def dsv3_mbs(t):
        out = subprocess.run([args.dsv3, "tokenizer", "encode", "--tokenizer", tik_file, "--input",
                              text_dir, "--count_only", "--json", "--threads", str(t)],
                             check=True, capture_output=True).stdout
        return json.loads(out)["mb_per_s"]

    def tik_single():
        t0 = time.perf_counter()
        for t in texts:
            enc.encode_ordinary(t)
        return nbytes / (time.perf_counter() - t0) / 1e6

    pieces = [c for t in texts for c in chunks_of(t)]

    def tik_batch():
        t0 = time.perf_counter()
        enc.encode_ordinary_batch(pieces, num_threads=threads)
        return nbytes / (time.perf_counter() - t0) / 1e6

    def hf_single():
        t0 = time.perf_counter()
        for t in texts:
            hf.encode(t, add_special_tokens=False)
        return nbytes / (time.perf_counter() - t0) / 1e6

    r = {
        "dsv3_1": best(lambda: dsv3_mbs(1)),
        "dsv3_all": best(lambda: dsv3_mbs(threads)),
        "tiktoken_1": best(tik_single),
        "tiktoken_all": best(tik_batch),
        "hf_1": best(hf_single),
    }
    print(f"\nencode GPT-2, {len(files)} files, {nbytes / 1e6:.2f} MB, best of {args.repeat}, "
          f"all = {threads} threads ({os.cpu_count()} CPUs seen)")
    print(f"  {'':10} {'1 thread':>12} {'all threads':>12}")
    print(f"  {'dsv3':10} {r['dsv3_1']:9.1f} MB/s {r['dsv3_all']:9.1f} MB/s")
    print(f"  {'tiktoken':10} {r['tiktoken_1']:9.1f} MB/s {r['tiktoken_all']:9.1f} MB/s")
    print(f"  {'HF':10} {r['hf_1']:9.1f} MB/s")
    print(f"  dsv3 / tiktoken: {r['dsv3_1'] / r['tiktoken_1']:.2f}x single thread (target >= 1.5x), "
          f"{r['dsv3_all'] / r['tiktoken_all']:.2f}x all threads")
    print("\n| encode (GPT-2) | dsv3 1T | tiktoken 1T | ratio | dsv3 all | tiktoken all | ratio | HF 1T |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {nbytes / 1e6:.1f} MB, {threads} threads | {r['dsv3_1']:.1f} MB/s | "
          f"{r['tiktoken_1']:.1f} MB/s | {r['dsv3_1'] / r['tiktoken_1']:.2f}x | "
          f"{r['dsv3_all']:.1f} MB/s | {r['tiktoken_all']:.1f} MB/s | "
          f"{r['dsv3_all'] / r['tiktoken_all']:.2f}x | {r['hf_1']:.1f} MB/s |")


HF_TRAIN = r"""
import sys
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=int(sys.argv[2]), min_frequency=2, show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              special_tokens=sys.argv[4].split(","))
tok.train([sys.argv[1]], trainer)
tok.save(sys.argv[3])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(tok.get_vocab_size(), int(hwm) * 1024)
"""


def bench_train(args, tmp):
    import json
    target = int(args.train_mb * 1e6)
    files = sorted(p for p in glob.glob(os.path.join(SHARED, "data", "text", "**", "*"),
                                        recursive=True) if os.path.isfile(p))
    files += sorted(glob.glob("/usr/lib/python3*/**/*.py", recursive=True))
    corpus = os.path.join(tmp, "corpus.txt")
    n = 0
    with open(corpus, "wb") as out:
        for f in files:
            if n >= target:
                break
            data = open(f, "rb").read()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            data = data[: target - n]
            out.write(data + b"\n")
            n += len(data) + 1
    pin = (os.cpu_count() or 1) > 2
    specials = ",".join(["<|bos|>", "<|eos|>", "<|pad|>", "<|fim_prefix|>", "<|fim_middle|>",
                         "<|fim_suffix|>", "<|system|>", "<|user|>", "<|assistant|>",
                         "<|end_of_turn|>"] + [f"<|reserved_{i}|>" for i in range(6)])
    vocab = str(args.vocab)
    env = dict(os.environ, OMP_NUM_THREADS="2", RAYON_NUM_THREADS="2", RAYON_RS_NUM_CPUS="2")
    d_wall, out = run_timed([args.dsv3, "tokenizer", "train", "--input", corpus, "--out",
                             os.path.join(tmp, "t.dsv3tok"), "--vocab_size", vocab,
                             "--threads", "2", "--json"], env=env, pin_two=pin)
    dj = json.loads(out)
    d_rss = dj["peak_rss_bytes"]
    hf_script = os.path.join(tmp, "hf_train.py")
    open(hf_script, "w").write(HF_TRAIN)
    h_wall, h_out = run_timed([sys.executable, hf_script, corpus, vocab,
                               os.path.join(tmp, "hf.json"), specials], env=env, pin_two=pin)
    h_vocab, h_rss = map(int, h_out.split())
    _, base = run_timed([sys.executable, "-c", "import tokenizers; print([l for l in "
                         "open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1])"])
    base_rss = int(base) * 1024
    cpus = pin
    mib = 1 / 1048576
    print(f"\ntrain BPE to {vocab} ids on {n / 1e6:.2f} MB ({dj['words']} distinct pieces), "
          f"2 threads{' pinned to CPUs 0-1' if cpus else ''}")
    print(f"  dsv3  {d_wall:6.2f} s wall (count {dj['count_seconds']:.2f} s, merge "
          f"{dj['merge_seconds']:.2f} s), peak RSS {d_rss * mib:6.0f} MiB, {dj['vocab_size']} ids")
    print(f"  HF    {h_wall:6.2f} s wall, peak RSS {h_rss * mib:6.0f} MiB "
          f"(python + tokenizers import alone: {base_rss * mib:.0f} MiB), {h_vocab} ids")
    print(f"  dsv3 / HF time: {d_wall / h_wall:.2f}x (target: dsv3 under 60 s)")
    print("\n| train (GPT-2 pretok) | dsv3 time | dsv3 peak RSS | HF time | HF peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| {n / 1e6:.1f} MB -> {vocab}, 2 threads | {d_wall:.2f} s | {d_rss * mib:.0f} MiB | "
          f"{h_wall:.2f} s | {h_rss * mib:.0f} MiB ({base_rss * mib:.0f} MiB baseline) |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = all CPUs")
    ap.add_argument("--train_mb", type=float, default=10.0)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--skip_encode", action="store_true")
    args = ap.parse_args()
    ensure_modules()
    if not os.path.isdir(os.path.join(SHARED, "data")):
        sys.exit(f"../shared/data is absent ({SHARED})")
    tmp = tempfile.mkdtemp(prefix="dsv3_bench_tok_")
    try:
        if not args.skip_encode:
            bench_encode(args, tmp)
        if not args.skip_train:
            bench_train(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
