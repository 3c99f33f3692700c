"""Device benchmark: the scoring layer on a Gemma-3-12B-shaped model with random weights.

Needs only torch, transformers and the repository's files (no database, MLflow, datasets,
gguf; nothing of ours installed): it imports `workers.scoring` and `workers.backends.memory`
and checks that nothing else was pulled in. The model is built from its config directly on
the device in the given dtype (same shapes and FLOPs as the real checkpoint; no hub needed).

It measures, in one call:
- an exp02-shaped workload (400-token-class docs, 13 token-matched conditions per sample) and
  an exp03-stage-1-shaped one (bare rows only, mixed doc lengths): tokens/s, rows per pass,
  share of the dense peak (``--peak-tflops``), time split Phase A / selection + re-rotation /
  Phase B;
- 64-token greedy surrogate generation at the generation batch size;
- the start-up self-check on this model (margins = measured / tolerance);
- batch invariance on this device: rows batched vs alone (same shape), and the same rows in
  other shapes (padding changes, across buckets), with the table entry to write into
  ``workers/scoring/selfcheck.py::BATCH_INVARIANCE_TOLERANCE``;
- the extrapolated exp02 + exp03 wall time (5,200 + 1,200 + 5,760 scores, 4,400 generations).

    python benchmarks/device.py                                  # GPU: 12B shape, bf16, ~2-4 min on an H200
    python benchmarks/device.py --device cpu --tiny              # rehearsal on a CPU
    python benchmarks/device.py --device cpu --layers 2 --samples 2 --gen-prompts 2
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# benchmarks/queue.py would shadow the standard library's `queue` (torch imports it); the repository root
# must be importable without installing anything.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402

import workers.scoring.decoder as dec  # noqa: E402
from workers.backends.memory import AdaptiveBatchSize  # noqa: E402
from workers.scoring.buckets import DEFAULT_BUCKETS, EXACT, LengthLadder, ShapeBuckets  # noqa: E402
from workers.scoring.decoder import (  # noqa: E402
    PassShape,
    ScoringRow,
    layout_row,
    pass_shape,
    score_rows,
)
from workers.scoring.generation import generate_greedy  # noqa: E402
from workers.scoring.lm_view import view_of  # noqa: E402
from workers.scoring.selfcheck import self_check  # noqa: E402

FORBIDDEN_MODULES = ("sqlalchemy", "alembic", "psycopg", "mlflow", "datasets", "gguf", "tracker.db")
BOS, NL, SPECIALS = 2, 108, 4  # Gemma 3 ids: <bos> = 2, "\n" = 108; random ids avoid the first few
# exp02 + exp03 (tracker/specs): exp02 400 x 13 scores, 5 LLM kinds x 400 generations; exp03 after exp02:
# 3 datasets x (400 bare + 160 hard x 12) scores and 3 x 160 x 5 generations.
EXP02_SHAPED_SCORES = 400 * 13 + 3 * 160 * 12
EXP03_STAGE1_SCORES = 3 * 400
GENERATIONS = 5 * 400 + 3 * 160 * 5


def gemma3_12b_config(*, tiny: bool, layers: int | None):
    """google/gemma-3-12b-it's text config (or a small one with the same layout for CPU rehearsals)."""
    from transformers import Gemma3TextConfig

    widths = dict(hidden_size=3840, intermediate_size=15360, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=256, query_pre_attn_scalar=256, vocab_size=262208, num_hidden_layers=48)
    if tiny:
        widths = dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, query_pre_attn_scalar=64, vocab_size=32000, num_hidden_layers=6)
    n_layers = layers or widths.pop("num_hidden_layers")
    widths.pop("num_hidden_layers", None)  # when --layers overrides it
    layer_types = [("full_attention" if (i + 1) % 6 == 0 else "sliding_attention") for i in range(n_layers)]
    return Gemma3TextConfig(
        **widths, num_hidden_layers=n_layers, layer_types=layer_types, sliding_window=1024,
        max_position_embeddings=131072, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}},
        pad_token_id=0, bos_token_id=BOS, eos_token_id=1,
    )


def build_model(config, device: torch.device, dtype: torch.dtype):
    """Random weights, allocated and initialised on `device` in `dtype` (no host copy)."""
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None  # random weights: always generate the full budget
    return model.eval()


def _ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(SPECIALS + 200, vocab) for _ in range(n)]


def exp02_rows(rng: random.Random, samples: int, vocab: int) -> list[ScoringRow]:
    """Per sample: a 360-440-token doc, query of Q tokens, answer; bare + 12 prefixes of exactly Q tokens."""
    rows = []
    for _ in range(samples):
        doc, query, answer = _ids(rng, rng.randint(360, 440), vocab), _ids(rng, rng.randint(6, 14), vocab), \
            _ids(rng, rng.randint(4, 24), vocab)
        rows.append(ScoringRow.of(None, doc, query, answer))
        rows += [ScoringRow.of(_ids(rng, len(query), vocab), doc, query, answer) for _ in range(12)]
    return rows


def exp03_stage1_rows(rng: random.Random, samples: int, vocab: int) -> list[ScoringRow]:
    """Bare rows of docs from 60 to 1,000 tokens (log-uniform: SQuAD paragraphs to HotpotQA distractors)."""
    return [ScoringRow.of(None, _ids(rng, int(math.exp(rng.uniform(math.log(60), math.log(1000)))), vocab),
                          _ids(rng, rng.randint(6, 20), vocab), _ids(rng, rng.randint(2, 24), vocab))
            for _ in range(samples)]


class PhaseClock:
    """Wall time of the scorer's phases (device-synchronised wrappers around the module's functions)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {"phase_a": 0.0, "select_rerotate": 0.0, "phase_b": 0.0}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def installed(self):
        names = {"phase_a": "run_phase_a", "select_rerotate": "select_and_rerotate", "phase_b": "run_phase_b"}
        originals = {key: getattr(dec, name) for key, name in names.items()}

        def timed(key, fn):
            def wrapper(*args, **kwargs):
                self.sync()
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                self.sync()
                self.seconds[key] += time.perf_counter() - start
                return out
            return wrapper

        for key, name in names.items():
            setattr(dec, name, timed(key, originals[key]))
        try:
            yield self
        finally:
            for key, name in names.items():
                setattr(dec, name, originals[key])


def dense_params(model) -> int:
    """Parameters that cost 2 FLOPs per token (the embedding table is a lookup)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


def score_workload(name: str, view, rows, args, device, peak: float, n_params: int) -> dict:
    budget = AdaptiveBatchSize(args.batch)
    buckets = args.buckets
    score_rows(view, "two_phase", BOS, NL, rows[: min(len(rows), 2)], budget=budget, buckets=buckets)  # warm-up
    clock = PhaseClock(device)
    with clock.installed():
        clock.sync()
        start = time.perf_counter()
        scores = score_rows(view, "two_phase", BOS, NL, rows, budget=budget, max_tokens=args.max_tokens,
                            buckets=buckets)
        clock.sync()
        seconds = time.perf_counter() - start
    real = sum(len(s.phase_a_ids) + len(s.phase_b_ids) for s in scores)
    computed = sum(s.shape.phase_a + s.shape.phase_b for s in scores)
    passes = len({s.chunk for s in scores})
    tflops = 2 * n_params * computed / seconds / 1e12
    out = {"rows": len(rows), "passes": passes, "rows_per_pass": len(rows) / passes, "seconds": seconds,
           "rows_per_s": len(rows) / seconds, "real_tokens_per_s": real / seconds,
           "padding_share": (computed - real) / computed, "tflops": tflops, "ooms": budget.ooms,
           "split_s": {k: round(v, 3) for k, v in clock.seconds.items()}}
    if peak:
        out["share_of_peak"] = tflops * 1e12 / (peak * 1e12)
    split = ", ".join(f"{k} {v:.2f}s" for k, v in clock.seconds.items())
    print(f"[{name}] {len(rows)} rows in {passes} passes ({out['rows_per_pass']:.1f} rows/pass), {seconds:.2f}s: "
          f"{out['rows_per_s']:.1f} rows/s, {out['real_tokens_per_s']:.0f} tokens/s, "
          f"{100 * out['padding_share']:.1f}% pad tokens, ~{tflops:.1f} TFLOP/s"
          + (f" = {100 * out['share_of_peak']:.1f}% of {peak:g}" if peak else "") + f"; split: {split}"
          + (f"; {budget.ooms} OOM splits" if budget.ooms else ""))
    return out


def generation_workload(model, vocab: int, args, device) -> dict:
    rng = random.Random(7)
    prompts = [[BOS] + _ids(rng, rng.randint(400, 460), vocab) for _ in range(args.gen_prompts)]
    budget = AdaptiveBatchSize(args.gen_batch)
    generate_greedy(model, prompts[:1], 2, pad_id=0, eos_id=None, budget=AdaptiveBatchSize(1))  # warm-up
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    out = generate_greedy(model, prompts, args.new_tokens, pad_id=0, eos_id=None, budget=budget)
    sync()
    seconds = time.perf_counter() - start
    new = sum(len(g.new_ids) for g in out)
    k = min(len(prompts), args.gen_check)
    alone = [generate_greedy(model, [p], args.new_tokens, pad_id=0, eos_id=None, budget=AdaptiveBatchSize(1))[0]
             for p in prompts[:k]]
    same = sum(a.new_ids == b.new_ids for a, b in zip(alone, out[:k]))
    first_diff = [next((i for i, (x, y) in enumerate(zip(a.new_ids, b.new_ids)) if x != y), None)
                  for a, b in zip(alone, out[:k])]
    result = {"prompts": len(prompts), "new_tokens": new, "seconds": seconds, "prompts_per_s": len(prompts) / seconds,
              "batch_sizes": sorted({g.batch_size for g in out}), "ooms": budget.ooms,
              "identical_alone_vs_batched": f"{same}/{k}", "first_divergence": first_diff}
    print(f"[generation] {len(prompts)} prompts x {args.new_tokens} new tokens at batch <= {args.gen_batch} "
          f"(used {result['batch_sizes']}): {seconds:.2f}s, {result['prompts_per_s']:.1f} prompts/s, "
          f"{new / seconds:.0f} new tokens/s; alone vs batched identical: {same}/{k} (first divergence {first_diff})")
    return result


def invariance_figures(view, rows) -> dict:
    """Same shape: rows batched vs alone. Across buckets: a row in its bucket vs unpadded vs one rung wider."""
    sample = rows[: min(len(rows), 26)]
    batched = score_rows(view, "two_phase", BOS, NL, sample, max_batch=64)
    alone = score_rows(view, "two_phase", BOS, NL, sample, max_batch=1)
    exact = score_rows(view, "two_phase", BOS, NL, sample, max_batch=1, buckets=EXACT)

    def worst(a, b):
        return max(max(abs(x - y) for x, y in zip(r.token_nlls, s.token_nlls)) for r, s in zip(a, b))

    wider = []
    for row in sample[:4]:
        layout = layout_row(BOS, (NL,), row)
        own = pass_shape("two_phase", layout, DEFAULT_BUCKETS)
        step = max(4, own.phase_a // 8)
        shape = PassShape(own.phase_a + step, own.cache + step, own.phase_b + 8)
        padded = dec.score_chunk(view, "two_phase", [layout], shape, True)[0].tolist()
        mine = score_rows(view, "two_phase", BOS, NL, [row], max_batch=1)[0].token_nlls
        wider.append(max(abs(x - y) for x, y in zip(padded, mine)))
    out = {"same_shape_batched_vs_alone": worst(batched, alone), "bucket_vs_unpadded": worst(alone, exact),
           "bucket_vs_one_rung_wider": max(wider), "rows": len(sample),
           "max_rows_per_pass": max(s.batch_size for s in batched)}
    print(f"[invariance] same shape, batched (up to {out['max_rows_per_pass']} rows) vs alone: "
          f"{out['same_shape_batched_vs_alone']:.3g} nats/token max; across shapes: bucket vs unpadded "
          f"{out['bucket_vs_unpadded']:.3g}, bucket vs one rung wider {out['bucket_vs_one_rung_wider']:.3g}")
    return out


def self_check_margins(view, vocab: int) -> dict:
    rng = random.Random(11)
    doc, query, answer, prefix = _ids(rng, 60, vocab), _ids(rng, 9, vocab), _ids(rng, 7, vocab), _ids(rng, 9, vocab)
    try:
        result = self_check(view, BOS, [NL], doc, query, answer, prefix)
    except Exception as error:  # noqa: BLE001 - a failure is a finding to print, not a crash
        print(f"[self-check] FAILED: {str(error).splitlines()[0]}")
        return {"passed": False, "error": str(error)}
    shares = {k: (None if m["share"] is None else round(m["share"], 3)) for k, m in result["margins"].items()}
    print(f"[self-check] passed; margins (measured / tolerance): {shares}")
    print(f"[self-check] batches probe: {json.dumps(result['batches'])}")
    return {"passed": True, "margins": result["margins"], "batches": result["batches"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="a small config with Gemma 3's layout (CPU rehearsal)")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers (48)")
    parser.add_argument("--samples", type=int, default=None, help="exp02-shaped samples (13 rows each)")
    parser.add_argument("--bare-samples", type=int, default=None, help="exp03 stage-1 bare rows")
    parser.add_argument("--batch", type=int, default=None, help="scoring rows per pass (default 64 GPU, 16 CPU)")
    parser.add_argument("--max-tokens", type=int, default=None, help="Phase A tokens per pass (default 65536 on GPU)")
    parser.add_argument("--gen-prompts", type=int, default=None, help="surrogate prompts to generate")
    parser.add_argument("--gen-batch", type=int, default=None, help="generation batch size (default 128 GPU, 4 CPU)")
    parser.add_argument("--gen-check", type=int, default=4, help="prompts regenerated alone for the invariance check")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--phase-a-steps", type=int, default=DEFAULT_BUCKETS.phase_a.steps,
                        help="Phase A bucket rungs per octave (fewer: more rows per pass, more padding)")
    parser.add_argument("--phase-b-steps", type=int, default=DEFAULT_BUCKETS.phase_b.steps)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.samples = args.samples or (48 if gpu else 3)
    args.bare_samples = args.bare_samples or (256 if gpu else 12)
    args.batch = args.batch or (64 if gpu else 16)
    args.max_tokens = args.max_tokens or (65536 if gpu else None)
    args.gen_prompts = args.gen_prompts or (128 if gpu else 4)
    args.gen_batch = args.gen_batch or (128 if gpu else 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.buckets = ShapeBuckets(LengthLadder(args.phase_a_steps, DEFAULT_BUCKETS.phase_a.min_step),
                                LengthLadder(args.phase_b_steps, DEFAULT_BUCKETS.phase_b.min_step))
    dtype = getattr(torch, args.dtype)
    leaked = sorted(m for m in FORBIDDEN_MODULES if m in sys.modules)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if gpu else (platform.processor() or platform.machine())
    print(f"device {device} ({name}), {args.dtype}, python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; modules outside the scoring layer imported: {leaked or 'none'}")

    config = gemma3_12b_config(tiny=args.tiny, layers=args.layers)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(config, device, dtype)
    n_params = dense_params(model)
    peak = args.peak_tflops if (gpu and dtype == torch.bfloat16) else 0.0
    print(f"model: Gemma-3-12B-shaped ({config.num_hidden_layers} layers, hidden {config.hidden_size}), "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params, built in {time.perf_counter() - t0:.1f}s"
          + (f", {torch.cuda.memory_allocated(device) / 2**30:.1f} GiB on the GPU" if gpu else ""))
    view = view_of(model)
    vocab = config.vocab_size
    rng = random.Random(42)
    figures: dict = {"device": str(device), "device_name": name, "dtype": args.dtype, "torch": torch.__version__,
                     "transformers": transformers.__version__, "layers": config.num_hidden_layers,
                     "forbidden_modules_imported": leaked}
    with torch.inference_mode():
        figures["self_check"] = self_check_margins(view, vocab)
        exp02 = exp02_rows(rng, args.samples, vocab)
        figures["exp02"] = score_workload("exp02-shaped", view, exp02, args, device, peak, n_params)
        figures["exp03_stage1"] = score_workload("exp03 stage 1", view, exp03_stage1_rows(rng, args.bare_samples, vocab),
                                                 args, device, peak, n_params)
        figures["invariance"] = invariance_figures(view, exp02)
        figures["generation"] = generation_workload(model, vocab, args, device)
    wall = (EXP02_SHAPED_SCORES / figures["exp02"]["rows_per_s"]
            + EXP03_STAGE1_SCORES / figures["exp03_stage1"]["rows_per_s"]
            + GENERATIONS / figures["generation"]["prompts_per_s"])
    figures["extrapolated_exp02_exp03_s"] = wall
    figures["elapsed_s"] = time.perf_counter() - started
    if gpu:
        figures["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    measured = figures["invariance"]["same_shape_batched_vs_alone"]
    print(f"extrapolated exp02 + exp03 ({EXP02_SHAPED_SCORES} exp02-shaped + {EXP03_STAGE1_SCORES} bare scores, "
          f"{GENERATIONS} generations): {wall / 60:.1f} min "
          f"(scoring {(EXP02_SHAPED_SCORES / figures['exp02']['rows_per_s'] + EXP03_STAGE1_SCORES / figures['exp03_stage1']['rows_per_s']) / 60:.1f} min, "
          f"generation {GENERATIONS / figures['generation']['prompts_per_s'] / 60:.1f} min)")
    print(f"selfcheck table entry: BATCH_INVARIANCE_TOLERANCE[({device.type!r}, torch.{args.dtype})] = "
          f"{max(4 * measured, 1e-6):.3g}  # 4 x measured {measured:.3g} on {name}")
    print(f"this call: {figures['elapsed_s']:.0f}s" + (f", peak GPU memory {figures['max_memory_gib']:.1f} GiB" if gpu else ""))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
