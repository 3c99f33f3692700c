"""Decoder attention probing for encoder-decoder scores (seed ed07/ed08).

For each answer token we read the attention row of the decoder position that PREDICTS it
(the position one before the token: the one whose logit gives the token's NLL) and sum its
attention weights over token groups, averaged over heads, per layer and averaged over layers.

Groups ("targets"):
  decoder side: ``start`` (the start token), ``query`` (the query, or the random ids of
  ``encdec_rq``; zero mass under ``encdec_nq``), ``answer`` (earlier answer tokens);
  encoder side: ``prefix`` (the prefix positions; exactly 0 when hidden) and ``doc`` (every
  other encoder position: the doc and the family's special tokens).

Which softmax a share belongs to depends on the family:
  * T5Gemma 2 (``merged``): the decoder attends to its own tokens and the encoder's in ONE
    softmax, so ``decoder`` + ``encoder`` = 1 and the cross/self split is meaningful; the five
    groups above are shares of that same softmax.
  * T5, BART, T5Gemma 1 (``self`` and ``cross``): self- and cross-attention are separate
    softmaxes that each sum to 1, so a cross/self split is UNDEFINED and not recorded; we
    record each softmax's own shares (self: start/query/answer; cross: prefix/doc).

Rows: ``{"layer": int (-1 = mean over layers), "position": answer token index,
"softmax": "self"|"cross"|"merged", "target": str, "share": float}``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.scoring.encdec_layout import EncDecLayout

MEAN_OVER_LAYERS = -1
SEPARATE_TARGETS: tuple[tuple[str, str], ...] = (
    ("self", "start"), ("self", "query"), ("self", "answer"), ("cross", "prefix"), ("cross", "doc"),
)
MERGED_TARGETS: tuple[tuple[str, str], ...] = tuple(
    ("merged", target) for target in ("start", "query", "answer", "decoder", "prefix", "doc", "encoder")
)


def attention_masses(
    self_attn: torch.Tensor, cross_attn: torch.Tensor, layout: EncDecLayout, *, merged: bool
) -> dict[tuple[str, str], torch.Tensor]:
    """Per-head attention mass on each target for one row.

    ``self_attn`` is ``[layers, heads, dec_len, dec_len]`` and ``cross_attn`` is
    ``[layers, heads, dec_len, enc_len]`` (for T5Gemma 2: the two slices of the merged
    softmax). Returns ``{(softmax, target): mass [layers, heads, n_answer]}`` in fp32.
    """
    rows = list(layout.predicting_positions)
    self_rows = self_attn[:, :, rows, :].float()    # [layers, heads, n_answer, dec_len]
    cross_rows = cross_attn[:, :, rows, :].float()  # [layers, heads, n_answer, enc_len]
    m0, m1 = layout.middle_span
    a0, a1 = layout.answer_span
    p0, p1 = layout.prefix_span
    masses = {
        "start": self_rows[..., 0],
        "query": self_rows[..., m0:m1].sum(-1),
        "answer": self_rows[..., a0:a1].sum(-1),
        "prefix": cross_rows[..., p0:p1].sum(-1),
        "doc": cross_rows[..., :p0].sum(-1) + cross_rows[..., p1:].sum(-1),
    }
    if merged:
        masses["decoder"] = self_rows.sum(-1)
        masses["encoder"] = cross_rows.sum(-1)
        return {key: masses[key[1]] for key in MERGED_TARGETS}
    return {key: masses[key[1]] for key in SEPARATE_TARGETS}


def share_rows(masses: dict[tuple[str, str], torch.Tensor]) -> list[dict]:
    """Head-averaged shares as table rows, per layer and averaged over layers (layer -1)."""
    rows: list[dict] = []
    for (softmax, target), mass in masses.items():
        per_layer = mass.mean(dim=1)  # [layers, n_answer]
        table = torch.cat([per_layer, per_layer.mean(dim=0, keepdim=True)])  # [layers + 1, n_answer]
        layer_ids = [*range(per_layer.shape[0]), MEAN_OVER_LAYERS]
        for layer, values in zip(layer_ids, table.tolist()):
            for position, share in enumerate(values):
                rows.append(
                    {"layer": layer, "position": position, "softmax": softmax, "target": target, "share": share}
                )
    return rows


def attention_rows_for_batch(
    decoder_attentions: Sequence[torch.Tensor] | None,
    cross_attentions: Sequence[torch.Tensor] | None,
    layouts: Sequence[EncDecLayout],
    *,
    merged: bool,
) -> list[list[dict]]:
    """Share rows for every layout of a batch, from the model's ``output_attentions``.

    Each attention tuple holds one ``[batch, heads, q_len, k_len]`` tensor per layer. An
    empty tuple means the model ran sdpa attention, which returns no weights.
    """
    if not decoder_attentions or not cross_attentions or decoder_attentions[0] is None:
        raise RuntimeError(
            "the model returned no attention weights: probing modes need attn_implementation='eager'"
        )
    self_all = torch.stack(tuple(decoder_attentions))    # [layers, batch, heads, dec_len, dec_len]
    cross_all = torch.stack(tuple(cross_attentions))     # [layers, batch, heads, dec_len, enc_len]
    return [
        share_rows(attention_masses(self_all[:, row], cross_all[:, row], layout, merged=merged))
        for row, layout in enumerate(layouts)
    ]
