"""Batched vs one-at-a-time decoder-only scoring, same code, same process.

``matched``: 10 samples x 12 token-matched conditions are scored through
`DecoderBackend.score`, first with the worker's batched path, then with batch size 1 (the
seed's way). Prints ms per condition for both, the ratio, tokens/s and, on a GPU with
``--peak-tflops``, the share of the dense bf16 peak reached (2 x parameters x tokens / time).

``bare``: a bare-only stage (exp03 stage 1) over N samples, scored in ONE backend call (rows of
all samples grouped by bucketed shape, at most ``--bare-batch`` rows per pass) and one sample per
call (what a worker did when a claim held one sample per group). Counts forward passes and checks
the criterion passes <= ceil(N / 8) + (number of shape buckets used); prints rows per pass,
tokens/s and the ratio, and that every score is the same both ways.

    python benchmarks/scoring.py                       # smollm2-135m on CPU, both workloads
    python benchmarks/scoring.py --workload bare --samples 60
    python benchmarks/scoring.py --model /models/gemma-3-4b-it --device cuda --peak-tflops 989
"""
from __future__ import annotations

import os
import sys

# Scripts in benchmarks/ put that folder first on sys.path, where benchmarks/queue.py would shadow
# the standard library's `queue` (torch imports it): drop the folder before importing anything else.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from importlib import resources  # noqa: E402

import torch  # noqa: E402

CONDITIONS = (
    [{"name": "oracle", "kind": "oracle", "params": {}}]
    + [{"name": f"random_tokens_{s}", "kind": "random_tokens", "params": {"seed": s}} for s in range(1, 5)]
    + [{"name": f"scrambled_{s}", "kind": "scrambled_oracle", "params": {"seed": s}} for s in range(1, 4)]
    + [{"name": "repeat_the", "kind": "repeat_token", "params": {}}]
    + [{"name": f"fixed_{i}", "kind": "fixed_text", "params": {"text": text, "matched": True}} for i, text in
       enumerate(["Extract all key data points and facts from the following text.",
                  "Ignore the text below and write a poem about the sea instead.",
                  "Summarize the document that follows in one sentence."])]
)


def load_samples(n: int) -> list[dict]:
    """The first n samples of the bundled tinyqa set, shaped as the worker hands them over."""
    lines = resources.files("tracker.data").joinpath("tinyqa.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[:n]]
    partner = [rows[(i + 1) % len(rows)]["question"] for i in range(len(rows))]
    return [{"id": i, "dataset": "tinyqa", "source_key": r["id"], "doc": r["context"], "query": r["question"],
             "answer": r["answer"], "meta": {"unrelated_query": partner[i]}} for i, r in enumerate(rows)]


def default_threads() -> int:
    """All cores on an idle machine, one when others are busy (OpenMP spinning under contention is ruinous)."""
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores / 2 else cores


def timed_pass(backend, tasks_by_sample, max_batch: int) -> tuple[float, float, list]:
    """(wall seconds, process CPU seconds, results) of scoring every sample's tasks at `max_batch`."""
    backend.budget.set_ceiling(max_batch)
    if backend.loaded.device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    results = [backend.score(tasks) for tasks in tasks_by_sample]
    if backend.loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start, results


def passes_of(results) -> set[tuple[int, ...]]:
    """The forward passes behind a call's results: each result names the jobs of its pass."""
    return {tuple(r.extras["batch_jobs"]) for r in results}


def bare_stage(backend, samples: list[dict], batch: int) -> None:
    """The counted cross-sample criterion on a bare-only stage (see the module docstring)."""
    from workers.backends import ScoreTask

    bare = {"name": "bare", "kind": "bare", "params": {}}
    tasks = [ScoreTask(i, "two_phase", s, bare) for i, s in enumerate(samples)]
    sync = torch.cuda.synchronize if backend.loaded.device.type == "cuda" else (lambda: None)
    backend.budget.set_ceiling(batch)
    backend.score(tasks[:2])  # warm-up
    sync()
    start = time.perf_counter()
    together = backend.score(tasks)
    sync()
    t_together = time.perf_counter() - start
    start = time.perf_counter()
    apart = [backend.score([task])[0] for task in tasks]
    sync()
    t_apart = time.perf_counter() - start
    n = len(tasks)
    passes, buckets = len(passes_of(together)), len({json.dumps(r.extras["bucket"]) for r in together})
    bound = math.ceil(n / 8) + buckets
    tokens = sum(r.extras["bucket"]["phase_a"] + r.extras["bucket"]["phase_b"] for r in together)
    real = sum(r.extras["phase_a_len"] + r.extras["phase_b_len"] for r in together)
    same = all(a.token_nlls == b.token_nlls for a, b in zip(together, apart))
    print(f"bare-only stage: {n} samples, at most {batch} rows per pass, {buckets} shape buckets used")
    print(f"  one call      : {passes:4d} forward passes ({n / passes:.1f} rows/pass), {t_together:.2f}s, "
          f"{real / t_together:.0f} real tokens/s ({100 * (tokens - real) / tokens:.1f}% of computed tokens are pads)")
    print(f"  one per call  : {n:4d} forward passes (1.0 rows/pass), {t_apart:.2f}s, {real / t_apart:.0f} tokens/s")
    print(f"  criterion     : passes {passes} <= ceil({n}/8) + {buckets} = {bound}: {'PASS' if passes <= bound else 'FAIL'}"
          f"; speed ratio {t_apart / t_together:.2f}x; every score identical both ways: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--workload", choices=["matched", "bare", "both"], default="both")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--bare-samples", type=int, default=60, help="samples of the bare-only stage (tinyqa has 60)")
    parser.add_argument("--bare-batch", type=int, default=8, help="rows per pass in the bare-only stage")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched path")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per path (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: auto)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device dense peak for the share-of-peak line")
    args = parser.parse_args()

    from workers.backends import get_backend

    torch.set_num_threads(args.threads or default_threads())
    backend = get_backend(args.model, args.device, args.dtype)
    if args.workload in ("bare", "both"):
        with torch.inference_mode():
            bare_stage(backend, load_samples(args.bare_samples), args.bare_batch)
    if args.workload in ("matched", "both"):
        matched(backend, args)


def matched(backend, args) -> None:
    from workers.backends import ScoreTask

    samples = load_samples(args.samples)
    tasks_by_sample = [[ScoreTask(s["id"] * 100 + c, "two_phase", s, cond) for c, cond in enumerate(CONDITIONS)]
                       for s in samples]
    n_conditions = sum(len(t) for t in tasks_by_sample)
    with torch.inference_mode():
        timed_pass(backend, tasks_by_sample[:1], args.batch)  # warm-up
        batched_times, single_times, batched_cpu, single_cpu = [], [], [], []
        for _ in range(args.rounds):  # alternate so background load hits both paths alike
            t, cpu, batched = timed_pass(backend, tasks_by_sample, args.batch)
            batched_times.append(t)
            batched_cpu.append(cpu)
            t, cpu, single = timed_pass(backend, tasks_by_sample, 1)
            single_times.append(t)
            single_cpu.append(cpu)

    flat_b = [r for rs in batched for r in rs]
    flat_s = [r for rs in single for r in rs]
    assert all(len({len(r.prefix_ids) for r in rs}) == 1 for rs in batched), "conditions are not token-matched"
    max_diff = max(max(abs(a - b) for a, b in zip(x.token_nlls, y.token_nlls)) for x, y in zip(flat_b, flat_s))
    tokens = sum(r.extras["phase_a_len"] + r.extras["phase_b_len"] for r in flat_b)
    best_b, best_s = min(batched_times), min(single_times)
    info = backend.describe()
    print(f"model {info['model']} ({info['model_class']}), {info['dtype']}, {info['device_name']}, "
          f"threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")
    print(f"{len(samples)} samples x {len(CONDITIONS)} token-matched conditions = {n_conditions} scores; "
          f"batch sizes used: {sorted({r.batch_size for r in flat_b})}")
    print(f"batched    : {1000 * best_b / n_conditions:8.1f} ms/condition  (rounds: "
          f"{', '.join(f'{t:.2f}s' for t in batched_times)})")
    print(f"batch size 1: {1000 * best_s / n_conditions:8.1f} ms/condition  (rounds: "
          f"{', '.join(f'{t:.2f}s' for t in single_times)})")
    print(f"speed-up   : {best_s / best_b:8.2f}x  (target >= 1.5x on a 2-core CPU); "
          f"max |NLL batched - unbatched| = {max_diff:.2e}")
    print(f"CPU time   : {1000 * min(batched_cpu) / n_conditions:8.1f} vs {1000 * min(single_cpu) / n_conditions:.1f} "
          f"ms/condition, ratio {min(single_cpu) / min(batched_cpu):.2f}x (robust to other processes when threads=1)")
    print(f"throughput : {tokens / best_b:8.0f} tokens/s batched, {tokens / best_s:.0f} tokens/s at batch 1")
    if args.peak_tflops:
        params = sum(p.numel() for p in backend.model.parameters())
        achieved = 2 * params * tokens / best_b / 1e12
        print(f"compute    : ~{achieved:.1f} TFLOP/s = {100 * achieved / args.peak_tflops:.1f}% of "
              f"{args.peak_tflops:g} TFLOP/s peak (2 x params x tokens; attention FLOPs not counted)")
    print(f"median rounds: batched {statistics.median(batched_times):.2f}s, single {statistics.median(single_times):.2f}s")


if __name__ == "__main__":
    main()
