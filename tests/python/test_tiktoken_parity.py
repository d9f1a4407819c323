#!/usr/bin/env python3
"""Tokenizer parity (D9): `dsv3 tokenizer` against tiktoken and Hugging Face tokenizers.

- Every file under ../shared/data/text encodes to exactly tiktoken's GPT-2 ids (tiktoken built
  from the local gpt2.tiktoken, no network), both when dsv3 loads gpt2.tiktoken and when it loads
  encoder.json + vocab.bpe; on one thread and on several; and decodes back to the same bytes.
- Edge-case strings (Unicode whitespace, marks, CJK, digits, contractions) agree with tiktoken.
- GPT-2 exported by dsv3 as tokenizer.json gives the same ids in HF tokenizers.
- A DeepSeek-V3-pre-tokenised BPE trained by dsv3, exported as tokenizer.json, gives the same ids
  in HF tokenizers (whose Oniguruma runs DeepSeek's regexes) as in dsv3 (PCRE2).

tiktoken and tokenizers come from PyPI. ctest runs this file under /usr/bin/python3, which lacks
them; the script then re-runs itself under another python3 (pyenv's, on PATH) that has them or can
pip-install them, and exits 77 (skip) when none can.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("DSV3_SHARED_DIR", os.path.join(REPO, "..", "shared"))
DSV3 = os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3"))
GPT2_DIR = os.path.join(SHARED, "data", "tokenizers", "gpt2")
TEXT_DIR = os.path.join(SHARED, "data", "text")
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
REEXEC = "DSV3_PARITY_REEXEC"


def have_modules(python):
    return subprocess.run([python, "-c", "import tiktoken, tokenizers"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def ensure_modules():
    try:
        import tiktoken  # noqa: F401
        import tokenizers  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get(REEXEC):
        print("SKIP: tiktoken/tokenizers unavailable even after pip install")
        sys.exit(77)
    candidates = [shutil.which("python3"), shutil.which("python3.11"),
                  os.path.expanduser("~/.pyenv/shims/python3")]
    for c in candidates:
        if not c or not os.path.exists(c) or os.path.realpath(c) == os.path.realpath(sys.executable):
            continue
        ok = have_modules(c)
        if not ok:
            subprocess.run([c, "-m", "pip", "install", "-q", "tiktoken", "tokenizers"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ok = have_modules(c)
        if ok:
            os.environ[REEXEC] = "1"
            os.execv(c, [c, os.path.abspath(__file__)] + sys.argv[1:])
    print("SKIP: no python3 with tiktoken and tokenizers (pip install tiktoken tokenizers)")
    sys.exit(77)


passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok    {what}")
    else:
        failed += 1
        print(f"FAIL  {what}")


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"index {i}: {x} vs {y}"
    return f"lengths {len(a)} vs {len(b)}"


def dsv3(*args, stdin=None):
    r = subprocess.run([DSV3, "tokenizer", *args], input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError(f"dsv3 tokenizer {' '.join(args)} failed: {r.stderr.decode()}")
    return r.stdout


def dsv3_ids(tokenizer, path, *extra):
    return [int(x) for x in dsv3("encode", "--tokenizer", tokenizer, "--input", path,
                                 *extra).split()]


def main():
    ensure_modules()
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    import tokenizers

    if not os.path.isdir(GPT2_DIR) or not os.path.isdir(TEXT_DIR):
        print(f"SKIP: ../shared/data is absent ({SHARED})")
        sys.exit(77)
    tik_file = os.path.join(GPT2_DIR, "gpt2.tiktoken")
    enc = tiktoken.Encoding(name="gpt2_local", pat_str=GPT2_PATTERN,
                            mergeable_ranks=load_tiktoken_bpe(tik_file),
                            special_tokens={"<|endoftext|>": 50256})
    files = sorted(p for p in glob.glob(os.path.join(TEXT_DIR, "**", "*"), recursive=True)
                   if os.path.isfile(p))
    check(len(files) > 0, f"{len(files)} text files under {TEXT_DIR}")
    tmp = tempfile.mkdtemp(prefix="dsv3_tok_parity_")
    try:
        # 1. Every shared text, both GPT-2 file layouts, one thread.
        for f in files:
            data = open(f, "rb").read()
            want = enc.encode_ordinary(data.decode("utf-8"))
            name = os.path.relpath(f, TEXT_DIR)
            got = dsv3_ids(tik_file, f, "--threads", "1")
            check(got == want, f"{name}: gpt2.tiktoken ids == tiktoken ({len(want)} tokens)"
                  + ("" if got == want else " " + first_difference(got, want)))
            got2 = dsv3_ids(GPT2_DIR, f, "--threads", "1")
            check(got2 == got, f"{name}: encoder.json + vocab.bpe ids == gpt2.tiktoken ids")

        # 2. Several threads (the input is cut between words) and decode.
        big = max(files, key=os.path.getsize)
        data = open(big, "rb").read()
        want = enc.encode_ordinary(data.decode("utf-8"))
        got = dsv3_ids(GPT2_DIR, big, "--threads", "4")
        check(got == want, f"{os.path.basename(big)}: 4 threads == tiktoken")
        ids_path = os.path.join(tmp, "ids.txt")
        with open(ids_path, "w") as fh:
            fh.write("\n".join(map(str, want)))
        back = dsv3("decode", "--tokenizer", GPT2_DIR, "--input", ids_path)
        check(back == data, f"{os.path.basename(big)}: decode(tiktoken ids) == the file's bytes")
        shard = os.path.join(tmp, "shard.bin")
        dsv3("encode", "--tokenizer", GPT2_DIR, "--input", big, "--out", shard)
        back = dsv3("decode", "--tokenizer", GPT2_DIR, "--input", shard)
        check(back == data, f"{os.path.basename(big)}: encode to an llm.c shard, decode it back")

        # 3. Edge cases: Unicode whitespace (\s must be White_Space), marks, scripts, digits.
        edge = ("Hello  world\u00a0\u00a0x \u3000y\u2028z\u0085w\u180ev\u200bu\t\t\n\n  \n"
                "caf\u00e9 cafe\u0301 na\u00efve \u0645\u0631\u062d\u0628\u0627 \u4f60\u597d\u4e16\u754c "
                "\u3053\u3093\u306b\u3061\u306f \ud55c\uad6d\uc5b4 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 "
                "1234567 \u0663\u0664\u0665 \u00bd \u2167 I'm you'RE they've it's 'quoted' "
                "emoji \U0001F600\U0001F44D\U0001F3FD !!! ... --- <<>> {}[]() \\path\\ $%^&*\n\r\n"
                "   trailing spaces   \n\n\n")
        edge_path = os.path.join(tmp, "edge.txt")
        open(edge_path, "wb").write(edge.encode("utf-8"))
        want = enc.encode_ordinary(edge)
        got = dsv3_ids(tik_file, edge_path)
        check(got == want, "edge-case text == tiktoken" +
              ("" if got == want else " " + first_difference(got, want)))
        check(dsv3("decode", "--tokenizer", tik_file, "--ids", " ".join(map(str, got)))
              == edge.encode("utf-8"), "edge-case text decodes back")
        special = "a<|endoftext|>b"
        got = [int(x) for x in dsv3("encode", "--tokenizer", tik_file, "--text", special,
                                    "--allow_special").split()]
        check(got == enc.encode(special, allowed_special="all"),
              "--allow_special matches tiktoken's allowed_special='all'")

        # 4. GPT-2 exported as tokenizer.json, read by HF tokenizers.
        hf_path = os.path.join(tmp, "gpt2_tokenizer.json")
        dsv3("export", "--tokenizer", GPT2_DIR, "--format", "hf", "--out", hf_path)
        hf = tokenizers.Tokenizer.from_file(hf_path)
        for f in files[:3] + [edge_path]:
            text = open(f, "rb").read().decode("utf-8")
            want = enc.encode_ordinary(text)
            got = hf.encode(text, add_special_tokens=False).ids
            check(got == want, f"HF tokenizers on dsv3's tokenizer.json == tiktoken: "
                  f"{os.path.basename(f)}")
        gpt2_out = os.path.join(tmp, "gpt2_export")
        dsv3("export", "--tokenizer", tik_file, "--format", "gpt2", "--out", gpt2_out)
        for name in ("encoder.json", "vocab.bpe"):
            import json
            if name == "encoder.json":
                same = json.load(open(os.path.join(gpt2_out, name))) == \
                    json.load(open(os.path.join(GPT2_DIR, name)))
            else:
                same = open(os.path.join(gpt2_out, name), "rb").read().split(b"\n")[1:] == \
                    open(os.path.join(GPT2_DIR, name), "rb").read().split(b"\n")[1:]
            check(same, f"gpt2.tiktoken exported as GPT-2 files reproduces OpenAI's {name}")

        # 5. DeepSeek-V3 pre-tokenisation: dsv3 (PCRE2) vs HF tokenizers (Oniguruma).
        ds_tok = os.path.join(tmp, "ds.dsv3tok")
        train_in = ",".join(files[:2])
        dsv3("train", "--input", train_in, "--out", ds_tok, "--vocab_size", "3000",
             "--pretokenizer", "deepseek_v3", "--json")
        ds_json = os.path.join(tmp, "ds_tokenizer.json")
        dsv3("export", "--tokenizer", ds_tok, "--format", "hf", "--out", ds_json)
        hf = tokenizers.Tokenizer.from_file(ds_json)
        for f in files[::3] + [edge_path]:
            text = open(f, "rb").read().decode("utf-8")
            want = hf.encode(text, add_special_tokens=False).ids
            got = dsv3_ids(ds_tok, f)
            check(got == want, f"deepseek_v3 pre-tokenizer, dsv3 == HF tokenizers: "
                  f"{os.path.basename(f)} ({len(want)} tokens)"
                  + ("" if got == want else " " + first_difference(got, want)))
        got = dsv3_ids(ds_json, edge_path)
        check(got == hf.encode(edge, add_special_tokens=False).ids,
              "dsv3 reading its own exported tokenizer.json gives the same ids")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
