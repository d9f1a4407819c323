#!/usr/bin/python3
"""`dsv3 evaluate` (E2) against independent scorers.

1. Multiple choice: a debug model trained a few steps on the built-in corpus (byte-level ids) is
   exported to Hugging Face safetensors; `dsv3 evaluate --model HF_DIR` scores HellaSwag-, ARC-
   and MMLU-layout files; this script scores the same items the way lm-evaluation-harness does
   (its HellaSwag preprocessing, its ARC and MMLU templates, context + " " + choice, the sum of
   the continuation's log-probabilities, acc = argmax, acc_norm = argmax of ll / len(choice))
   with the float64 PyTorch reference model (dsv3_ref.py, written from the docs, not the engine)
   on the exported weights, and compares every log-likelihood, every prediction and the
   aggregate acc/acc_norm. Few-shot prompts (--shots 2) are checked for their structure (the
   shots are other items of the file, query + " " + target, joined by blank lines).
2. BLEU: hypotheses scored by `dsv3 evaluate --predictions` (and the model's own greedy
   generations) equal sacreBLEU's corpus_bleu (default: 13a, exp smoothing) to 0.01.

Needs Debian's /usr/bin/python3 (torch) and sacrebleu from PyPI (scripts/install_deps.sh
installs it); without sacrebleu the test fails rather than skip.
Tolerance: the engine computes in fp32, the reference in float64; a continuation's summed
log-probability is a sum of ~10-60 per-token values each good to ~1e-6 relative, so 2e-3
absolute (+1e-5 relative) leaves a wide margin while a wrong token or position is off by > 0.1.
A row that differs where the reference's MoE routing is within 1e-5 of a tie (fp32 noise can
flip such a choice) is excused and counted; at most one item per task may be.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
DSV3 = os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3"))

try:
    import sacrebleu
except ImportError:
    print("FAIL: the sacrebleu package is missing: run scripts/install_deps.sh (pip install sacrebleu)")
    sys.exit(1)
try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print("SKIP: torch not importable (%s); use Debian's /usr/bin/python3" % e)
    sys.exit(77)

import dsv3_ref as R

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
LL_ABS, LL_REL, TIE = 2e-3, 1e-5, 1e-5
FAILS = []


def check(cond, msg):
    print(("ok: " if cond else "FAIL: ") + msg)
    if not cond:
        FAILS.append(msg)


def run(*args):
    r = subprocess.run([DSV3, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"dsv3 {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


# ---- lm-evaluation-harness's task definitions (hellaswag/utils.py, arc_easy.yaml, mmlu default)
def hs_preprocess(text):
    import re
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hs_doc(d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    return {"query": hs_preprocess(d["activity_label"] + ": " + ctx),
            "choices": [hs_preprocess(e) for e in d["endings"]], "gold": int(d["label"])}


def arc_doc(d):
    labels = d["choices"]["label"]
    return {"query": "Question: " + d["question"] + "\nAnswer:", "choices": d["choices"]["text"],
            "gold": labels.index(d["answerKey"])}


def mmlu_doc(d):
    q = d["question"].strip() + "\n" + "".join(
        "%s. %s\n" % (l, c) for l, c in zip("ABCDEFGH", d["choices"])) + "Answer:"
    return {"query": q, "choices": list("ABCDEFGH"[:len(d["choices"])]), "gold": d["answer"]}


class Scorer:
    """loglikelihood(context, continuation) with the float64 reference on the HF export."""

    def __init__(self, hf_dir):
        self.cfg, self.params = R.load_hf_dir(hf_dir, torch.float64)
        self.tc = R.TrainCfg()
        self.max_len = self.cfg.max_seq
        self.ties = 0

    def encode(self, s):  # byte-level ids (the model has no tokenizer)
        return list(s.encode("utf-8"))

    def loglikelihood(self, context, continuation):
        n = len(context) - len(context.rstrip())  # harness _encode_pair
        if n:
            continuation = context[-n:] + continuation
            context = context[:-n]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        cont = whole[len(ctx):]
        toks = (ctx + cont)[-(self.max_len + 1):]
        with torch.no_grad():
            out = R.forward(self.cfg, self.tc, self.params, torch.tensor([toks]))
        tie = out["margin"] < TIE
        self.ties += tie
        lp = F.log_softmax(out["logits"], dim=-1)
        T = len(toks) - 1
        s = sum(float(lp[t, toks[t + 1]]) for t in range(T - len(cont), T))
        return s, tie


def check_choice_task(name, docs, samples, scorer, shots, all_docs=None):
    """Compares dsv3's per-item records with the reference's scoring of the same items."""
    all_docs = all_docs or docs
    worst, n_ties, acc, acc_norm = 0.0, 0, [], []
    check(len(samples) == len(docs), f"{name}: {len(samples)} records for {len(docs)} items")
    for doc, s in zip(docs, samples):
        if shots == 0:
            check(s["context"] == doc["query"], f"{name} line {s['line']}: context is the harness's query")
        else:
            parts = s["context"].split("\n\n")
            ok = parts[-1] == doc["query"] or s["context"].endswith("\n\n" + doc["query"])
            shot_texts = {d["query"] + " " + d["choices"][d["gold"]] for d in all_docs if d is not doc}
            body = s["context"][: len(s["context"]) - len(doc["query"])]
            found = sum(1 for t in shot_texts if (t + "\n\n") in body)
            check(ok and found == shots and (doc["query"] + " " + doc["choices"][doc["gold"]]) not in body,
                  f"{name} line {s['line']}: {shots} shots from the other items, then the query")
        check(s["choices"] == doc["choices"] and s["gold"] == doc["gold"], f"{name} line {s['line']}: choices and gold")
        lls, skip = [], False
        for k, ch in enumerate(doc["choices"]):
            ll, tie = scorer.loglikelihood(s["context"], " " + ch)
            lls.append(ll)
            r = abs(ll - s["loglik"][k]) / (LL_ABS + LL_REL * abs(ll))
            if r > 1.0 and tie:
                skip = True  # a routing near-tie flipped: excused, counted
            else:
                worst = max(worst, r)
        if skip:
            n_ties += 1
            continue
        lens = [float(len(c)) for c in doc["choices"]]  # the harness: len(choice), characters
        pred = max(range(len(lls)), key=lambda k: (lls[k], -k))
        pred_norm = max(range(len(lls)), key=lambda k: (lls[k] / lens[k], -k))
        acc.append(float(pred == doc["gold"]))
        acc_norm.append(float(pred_norm == doc["gold"]))
        check(pred == s["pred"] and pred_norm == s["pred_norm"],
              f"{name} line {s['line']}: pred {s['pred']}/{pred}, pred_norm {s['pred_norm']}/{pred_norm}")
    check(worst <= 1.0, f"{name}: log-likelihoods agree with the float64 reference "
                        f"(worst {worst:.3f} of the tolerance)")
    check(n_ties <= 1, f"{name}: {n_ties} items differ where the reference's routing is a near-tie")
    return acc, acc_norm, n_ties


def main():
    tmp = tempfile.mkdtemp(prefix="dsv3_evaluate_")
    try:
        run_dir, hf = os.path.join(tmp, "run"), os.path.join(tmp, "hf")
        run("train", "--preset", "debug", "--vocab", "300", "--steps", "8", "--batch", "4",
            "--seq_len", "64", "--eval_every", "0", "--sample_tokens", "0", "--out", run_dir)
        run("export", "--model", run_dir, "--format", "hf", "--out", hf)
        scorer = Scorer(hf)

        hs = [
            {"activity_label": "Cooking", "ctx_a": "A man is in a kitchen.", "ctx_b": "HE picks up a pan",
             "endings": ["and puts it on the stove.", "and throws it [title] at the wall.",
                         "then sings.", "and makes a caf\u00e9 au lait with it"], "label": "0"},
            {"activity_label": "Sports", "ctx_a": "The team runs onto the field.", "ctx_b": "the crowd",
             "endings": ["cheers loudly.", "is a fish.", "goes home [step] quietly.", "eats the ball."], "label": "0"},
            {"activity_label": "Home", "ctx_a": "She opens the door.", "ctx_b": "she",
             "endings": ["walks in.", "flies away to the moon and back again", "is a door.", "the the the"], "label": "0"},
            {"activity_label": "Music", "ctx_a": "He tunes the guitar.", "ctx_b": "then he",
             "endings": ["plays a song.", "eats it.", "x", "paints the sky with a long brush"], "label": "0"},
        ]
        arc = [
            {"question": "Which of these is a color?", "choices": {"text": ["blue", "table", "run"], "label": ["A", "B", "C"]}, "answerKey": "A"},
            {"question": "The sun rises in the", "choices": {"text": ["east", "west", "north", "south"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"},
            {"question": "Water is", "choices": {"text": ["wet", "dry"], "label": ["A", "B"]}, "answerKey": "A"},
            {"question": "A cat says", "choices": {"text": ["meow", "moo", "quack"], "label": ["A", "B", "C"]}, "answerKey": "A"},
        ]
        mmlu = [
            {"question": " What is 2 + 2? ", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo", "Bern"], "answer": 1},
            {"question": "Largest planet?", "choices": ["Mars", "Venus", "Jupiter", "Mercury"], "answer": 2},
        ]
        paths = {n: os.path.join(tmp, n + ".jsonl") for n in ("hs", "arc", "mmlu")}
        write_jsonl(paths["hs"], hs)
        write_jsonl(paths["arc"], arc)
        write_jsonl(paths["mmlu"], mmlu)
        # a malformed line in the middle is counted and skipped, not fatal
        with open(paths["arc"], "a") as f:
            f.write("{not json\n")
        docs = {"hs": [hs_doc(d) for d in hs], "arc": [arc_doc(d) for d in arc], "mmlu": [mmlu_doc(d) for d in mmlu]}

        # 1a. zero-shot, cloze format, one big batch
        samples, results = os.path.join(tmp, "s0.jsonl"), os.path.join(tmp, "r0.json")
        run("evaluate", "--model", hf, "--tasks", paths["hs"] + "," + paths["arc"], "--samples", samples,
            "--out", results)
        recs, res = read_jsonl(samples), json.load(open(results))["results"]
        check(res["arc"]["malformed_lines"] == 1, "arc: the malformed line is counted")
        for name in ("hs", "arc"):
            acc, acc_norm, ties = check_choice_task(name, docs[name], [r for r in recs if r["task"] == name], scorer, 0)
            if ties == 0:
                check(abs(res[name]["acc"] - sum(acc) / len(acc)) < 1e-12 and
                      abs(res[name]["acc_norm"] - sum(acc_norm) / len(acc_norm)) < 1e-12,
                      f"{name}: acc {res[name]['acc']:.4f} acc_norm {res[name]['acc_norm']:.4f} equal the reference's")
        # the non-ASCII ending: acc_norm divides by characters (12), not bytes (13)
        r0 = [r for r in recs if r["task"] == "hs"][0]
        check(len(r0["choices"][3]) == 32 and len(r0["choices"][3].encode()) == 33, "hs: a non-ASCII choice is scored")

        # 1b. two shots, MMLU letters, tiny micro-batches (many forwards)
        samples = os.path.join(tmp, "s2.jsonl")
        run("evaluate", "--model", hf, "--tasks", paths["mmlu"] + "," + paths["hs"], "--shots", "2",
            "--mc_format", "letters", "--batch_tokens", "64", "--samples", samples)
        recs = read_jsonl(samples)
        check_choice_task("mmlu", docs["mmlu"], [r for r in recs if r["task"] == "mmlu"], scorer, 2)
        check_choice_task("hs", docs["hs"], [r for r in recs if r["task"] == "hs"], scorer, 2)
        print(f"reference routing near-ties: {scorer.ties}")

        # E3: tiers stop at the first tier not passed; indicators over the model's generations
        tiers = os.path.join(tmp, "tiers.json")
        with open(tiers, "w") as f:
            json.dump({"tiers": [
                {"name": "one", "tasks": [{"path": "arc.jsonl", "metric": "acc", "threshold": 0.0}]},
                {"name": "two", "tasks": [{"path": "mmlu.jsonl", "metric": "acc", "threshold": 1.01, "shots": 1}]},
                {"name": "three", "tasks": [{"path": "hs.jsonl", "metric": "acc_norm", "threshold": 0.0}]}]}, f)
        prompts, words = os.path.join(tmp, "ind.jsonl"), os.path.join(tmp, "words.txt")
        write_jsonl(prompts, [{"prompt": "The"}, {"prompt_a": "He said", "prompt_b": "She said"}])
        with open(words, "w") as f:
            f.write("# short common words, so that a barely trained model hits some\nin\ne\nthe\n")
        samples = os.path.join(tmp, "st.jsonl")
        out = json.loads(run("evaluate", "--model", hf, "--tiers", tiers, "--indicators", prompts,
                             "--toxicity_words", words, "--indicator_tokens", "16", "--samples", samples, "--json"))
        t = out["tiers"]
        check(len(t) == 2 and t[0]["passed"] and not t[1]["passed"] and out["highest_tier_passed"] == "one"
              and "hs" not in out["results"], "tiers: tier one passed, two not, three not run")
        ind = out["indicators"]
        gens = [r for r in read_jsonl(samples) if r["task"] == "indicators"]
        import re
        tox = sum(1 for g in gens if {"in", "e", "the"} & set(re.findall(r"[a-z0-9']+", g["generation"].lower())))
        check(ind["generations"] == 3 and len(gens) == 3 and ind["pairs"] == 1 and ind["toxic_generations"] == tox
              and abs(ind["bias_gap"] - (gens[1]["regard"] - gens[2]["regard"])) < 1e-12,
              f"indicators: {tox} of 3 generations hit the word list, bias gap {ind['bias_gap']:.3f}")

        # 2. BLEU against sacreBLEU on the same hypotheses
        refs1 = ["The cat sat on the mat.", "It costs $3.50, or 1,000 yen!", "state-of-the-art 1990-2000 &amp; more",
                 "Caf\u00e9s open at 9.", "A quick brown fox jumps over the lazy dog."]
        refs2 = ["A cat was sitting on the mat.", "The price is $3.50 (1,000 yen).", "modern, 1990 - 2000 and more",
                 "Caf\u00e9s open at nine.", "The quick brown fox jumped over a lazy dog."]
        hyps = ["the cat sat on a mat .", "The price is $3.50 (1,000 yen)!", "state of the art 1990-2000 & more",
                "Caf\u00e9s open at 9 .", "A quick brown fox jumps over the lazy dog."]
        tr = os.path.join(tmp, "tr.jsonl")
        write_jsonl(tr, [{"source": "s%d" % i, "reference": [a, b]} for i, (a, b) in enumerate(zip(refs1, refs2))])
        tr1 = os.path.join(tmp, "tr1.jsonl")
        write_jsonl(tr1, [{"source": "s%d" % i, "reference": a} for i, a in enumerate(refs1)])
        preds = os.path.join(tmp, "preds.jsonl")
        write_jsonl(preds, [{"task": t, "line": i + 1, "generation": h} for t in ("tr", "tr1") for i, h in enumerate(hyps)])
        out = json.loads(run("evaluate", "--tasks", tr + "," + tr1, "--predictions", preds, "--json"))["results"]
        want2 = sacrebleu.corpus_bleu(hyps, [refs1, refs2]).score
        want1 = sacrebleu.corpus_bleu(hyps, [refs1]).score
        check(abs(out["tr"]["bleu"] - want2) < 0.01, f"BLEU, 2 references: dsv3 {out['tr']['bleu']:.4f} sacreBLEU {want2:.4f}")
        check(abs(out["tr1"]["bleu"] - want1) < 0.01, f"BLEU, 1 reference: dsv3 {out['tr1']['bleu']:.4f} sacreBLEU {want1:.4f}")
        check(want1 > 10, "the BLEU corpus is not degenerate")
        # the model's own greedy generations
        samples = os.path.join(tmp, "sg.jsonl")
        out = json.loads(run("evaluate", "--model", hf, "--tasks", tr1, "--max_gen_tokens", "24",
                             "--samples", samples, "--json"))["results"]
        gens = [r["generation"] for r in read_jsonl(samples)]
        want = sacrebleu.corpus_bleu(gens, [refs1]).score
        check(abs(out["tr1"]["bleu"] - want) < 0.01, f"BLEU of the model's generations: dsv3 {out['tr1']['bleu']:.4f} sacreBLEU {want:.4f}")
    finally:
        if os.environ.get("DSV3_EVAL_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'FAILED' if FAILS else 'passed'}: {len(FAILS)} failed checks")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
