"""bf16 vs fp32: how far each condition's mean effect against bare moves, on a demo-sized run.

The demo's conditions (tracker/specs/demo.yaml; llm_extract's surrogate is the doc's first
sentence, so no generation is needed) on the first N tinyqa samples, scored in two_phase by
the same code in fp32 and in bf16, both with the scorer's bucketed shapes and, for bf16, also
with exact (unpadded) shapes. Per condition it prints the mean paired effect
NLL(condition) - NLL(bare) in fp32, its bf16 error (bf16 effect - fp32 effect), and the
per-job NLL error. Models: the embedded SmolLM2-135M and the tiny random Gemma 3.

    python benchmarks/precision.py                     # both models, 60 samples (the demo's size)
    python benchmarks/precision.py --models smollm2-135m --samples 20
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # benchmarks/queue.py shadows `queue`

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from importlib import resources  # noqa: E402

import torch  # noqa: E402

DEMO_CONDITIONS = ["bare", "bare_nl", "random_tokens", "repeat_token", "scrambled_oracle", "oracle",
                   "extractor_matched", "adversarial_matched", "llm_extract"]


def demo_tasks(n: int):
    from tracker.conditions import CATALOGUE, first_sentence
    from workers.backends import ScoreTask

    lines = resources.files("tracker.data").joinpath("tinyqa.jsonl").read_text().splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    tasks = []
    for i, r in enumerate(rows):
        sample = {"id": i, "dataset": "tinyqa", "source_key": r["id"], "doc": r["context"], "query": r["question"],
                  "answer": r["answer"], "meta": {"unrelated_query": rows[(i + 1) % len(rows)]["question"]}}
        for name in DEMO_CONDITIONS:
            d = CATALOGUE[name]
            surrogate = first_sentence(sample["doc"]) if d.needs_surrogate else None
            tasks.append(ScoreTask(len(tasks), "two_phase", sample,
                                   {"name": name, "kind": d.kind, "params": dict(d.params)}, surrogate))
    return tasks


def effects(tasks, results) -> dict[str, float]:
    """Mean over samples of NLL(condition) - NLL(bare)."""
    nll = {(t.sample["id"], t.condition["name"]): r.nll_mean for t, r in zip(tasks, results)}
    samples = sorted({t.sample["id"] for t in tasks})
    return {c: statistics.fmean(nll[(s, c)] - nll[(s, "bare")] for s in samples) for c in DEMO_CONDITIONS[1:]}


def run_model(name: str, n: int) -> None:
    from workers.backends import get_backend
    from workers.scoring.buckets import EXACT

    tasks = demo_tasks(n)
    runs = {}
    for label, dtype, buckets in [("fp32", "float32", None), ("bf16", "bfloat16", None),
                                  ("bf16 exact", "bfloat16", EXACT)]:
        backend = get_backend(name, "cpu", dtype)
        if buckets is not None:
            backend.buckets = buckets
        start = time.perf_counter()
        runs[label] = backend.score(tasks)
        print(f"  {name} {label}: {len(tasks)} scores in {time.perf_counter() - start:.1f}s", flush=True)
    ref = effects(tasks, runs["fp32"])
    per_job = {label: [abs(a.nll_mean - b.nll_mean) for a, b in zip(res, runs["fp32"])] for label, res in runs.items()}
    print(f"\n{name}: {n} samples x {len(DEMO_CONDITIONS)} conditions, two_phase, CPU")
    print(f"{'condition':22s} {'effect fp32':>12s} {'bf16 error':>11s} {'bf16 exact err':>15s}")
    for c in DEMO_CONDITIONS[1:]:
        print(f"{c:22s} {ref[c]:12.4f} {effects(tasks, runs['bf16'])[c] - ref[c]:11.4f} "
              f"{effects(tasks, runs['bf16 exact'])[c] - ref[c]:15.4f}")
    for label in ("bf16", "bf16 exact"):
        errs = [abs(effects(tasks, runs[label])[c] - ref[c]) for c in DEMO_CONDITIONS[1:]]
        print(f"{label:10s}: |effect error| max {max(errs):.4f}, mean {statistics.fmean(errs):.4f} nats; "
              f"per-job |mean NLL error| max {max(per_job[label]):.4f}, mean {statistics.fmean(per_job[label]):.4f}")
    print(f"fp32 |effect| range: {min(abs(v) for v in ref.values()):.4f} .. {max(abs(v) for v in ref.values()):.4f}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "tiny-random-gemma3"])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        for name in args.models:
            run_model(name, args.samples)


if __name__ == "__main__":
    main()
