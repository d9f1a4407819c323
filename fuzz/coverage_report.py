#!/usr/bin/env python3
"""Source coverage reached by the fuzz corpora, per parser file (the numbers of docs/fuzzing.md).

    cmake -S fuzz -B build-fuzz-cov -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DDSV3_FUZZ_COVERAGE=ON
    ninja -C build-fuzz-cov
    fuzz/coverage_report.py build-fuzz build-fuzz-cov [target ...]

Replays each target's inputs (build-fuzz/corpus/<t>, build-fuzz/seeds/<t>, fuzz/regressions/<t>)
through the coverage-instrumented harness (cov_<t>) and prints llvm-cov's line and region
coverage of the files that parse that format. A file's total includes its writers, which no
harness calls. Any Python 3, standard library only; needs llvm-profdata and llvm-cov.
"""
import os
import subprocess
import sys

FILES = {
    "checkpoint": ["src/checkpoint/checkpoint.cpp"],
    "safetensors": ["src/checkpoint/safetensors.cpp"],
    "hf_config": ["src/checkpoint/hf.cpp"],
    "gpt2": ["src/tokenizer/formats.cpp"],
    "tokenizer_json": ["src/tokenizer/formats.cpp"],
    "tiktoken": ["src/tokenizer/formats.cpp"],
    "dsv3tok": ["src/tokenizer/formats.cpp"],
    "llmc_shard": ["src/data/token_file.cpp", "src/data/shard.cpp"],
    "dsv3_shard": ["src/data/shard.cpp"],
    "config": ["cli/flags.cpp", "src/core/fields.cpp"],
    "jsonl": ["src/data/reader.cpp"],
    "int8_model": ["src/checkpoint/quantized.cpp"],
}
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def report(fuzz_build, cov_build, target):
    dirs = [os.path.join(fuzz_build, d, target) for d in ("corpus", "seeds")]
    dirs.append(os.path.join(ROOT, "fuzz", "regressions", target))
    dirs = [d for d in dirs if os.path.isdir(d)]
    inputs = sum(len(os.listdir(d)) for d in dirs)
    raw = os.path.join(cov_build, target + ".profraw")
    prof = os.path.join(cov_build, target + ".profdata")
    exe = os.path.join(cov_build, "cov_" + target)
    subprocess.run([exe] + dirs, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, LLVM_PROFILE_FILE=raw))
    subprocess.run(["llvm-profdata", "merge", "-sparse", "-o", prof, raw], check=True)
    files = [os.path.join(ROOT, f) for f in FILES[target]]
    out = subprocess.run(["llvm-cov", "report", exe, "-instr-profile=" + prof] + files,
                         check=True, stdout=subprocess.PIPE).stdout.decode()
    # columns: file, regions, missed, cover, functions, missed, executed, lines, missed, cover, ...
    for line in out.splitlines():
        cols = line.split()
        if not cols or not cols[0].endswith(".cpp"):
            continue
        name = next(f for f in FILES[target] if f.endswith(cols[0].split("/")[-1]))
        print("%-15s %-31s lines %6s of %5s, regions %6s of %5s, functions %6s  (%d inputs)"
              % (target, name, cols[9], cols[7], cols[3], cols[1], cols[6], inputs))


def main():
    fuzz_build, cov_build = sys.argv[1], sys.argv[2]
    for t in sys.argv[3:] or list(FILES):
        report(fuzz_build, cov_build, t)


if __name__ == "__main__":
    main()
