"""The shared-prefix forward of GRPO groups (Prefix Grouper, Liu et al. 2025, arXiv 2506.05433).

All G rollouts of a group continue the same prompt (RECAP's prefill included); the unshared loss pass
reads that prompt G times. Here the rows of a batch are packed into one token stream in which each
distinct prompt appears once, followed by its rows' continuations, each as long as its own completion (no
padding)::

    [prompt_a[:-1] | a[-1] c_a1 | a[-1] c_a2 | … | prompt_b[:-1] | b[-1] c_b1 | …]

and attention is split as Prefix Grouper does: each prefix attends causally to itself, each suffix
(the prompt's last token, then one completion) to its group's prefix and causally to itself. The
prompt's last token goes with every suffix so that the first completion token is predicted from a
position of the suffix; every label stays inside its own row. Position ids continue the prefix in
each suffix, so the model sees every row exactly as in the unshared pass: same log-probabilities and
same gradients (the prefix's gradient is the sum of its G rows'), up to float rounding.

The split attention is an attention function registered with transformers' ``AttentionInterface``
(``install``) that wraps the model's own one (sdpa or eager): without a ``recap_prefix`` layout in the
forward's keyword arguments it *is* the model's attention, so generation and evaluation are unchanged;
with one, it computes the split attention with the model's attention for each part (a group's suffixes
are laid side by side in a padded block for it, and taken back out after). The layout rides
in the keyword arguments, so gradient checkpointing replays it. Rows whose completion mask is empty
(dynamic-sampling fillers, overlong-filtered rows) are left out of the forward: their log-probabilities
are 0, as TRL's are at masked positions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

PREFIX = "recap_shared_prefix_"  # registered attention names: recap_shared_prefix_sdpa, recap_shared_prefix_eager
BASES = ("sdpa", "eager")  # attention implementations the split attention can wrap
LAYOUT_KWARG = "recap_prefix"  # the forward keyword argument that carries a Layout


@dataclass(eq=False)
class Layout:
    """Where each group lies in the packed token stream (all of it in batch row 0): per group, the first
    position of its prefix, the prefix length, its number of suffix rows, the width of its padded suffix
    block (the longest suffix), where each suffix token goes in that block (``slots``: row × width + column,
    in stream order), and each block row's key mask (the prompt's last token and the row's completion mask;
    False past the row's end). ``calls`` counts the attention layers that read it: a model whose attention
    bypasses the interface reads none."""

    starts: list[int]
    prefixes: list[int]
    rows: list[int]
    widths: list[int]
    slots: list[torch.Tensor]  # per group: (suffix tokens,) long
    keys: list[torch.Tensor]  # per group: (rows, width) bool
    calls: int = 0
    _masks: dict = field(default_factory=dict)

    def masks(self, kind: str, dtype: torch.dtype, device) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """Per group, (prefix mask, suffix mask) in the format of the wrapped attention: ``sdpa`` takes
        booleans (True: attend) and no prefix mask (its causal kernel), ``eager`` additive floats. Built once
        per layout and reused by every layer. A block position past its row's end is a key of no one; as a
        query it still sees the prefix or its row's first token, so no row of the mask is empty."""
        key = (kind, dtype, device)
        if key not in self._masks:
            out = []
            for p, s, ok in zip(self.prefixes, self.widths, self.keys):
                ok = ok.to(device)
                causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
                suffix = torch.cat([ok.new_ones(ok.shape[0], s, p), causal & ok[:, None, :]], dim=2)[:, None]
                prefix = None
                if kind == "eager" and p:
                    prefix = torch.ones(p, p, dtype=torch.bool, device=device).tril()[None, None]
                out.append((_as(prefix, kind, dtype), _as(suffix, kind, dtype)))
            self._masks[key] = out
        return self._masks[key]


def _as(mask: torch.Tensor | None, kind: str, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or kind == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


@dataclass
class Packed:
    """One forward's inputs and how to read its outputs back into the unshared (rows, width) layout."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    shift_labels: torch.Tensor  # (1, T): the token each position predicts, -100 where none is scored
    layout: Layout
    source: torch.Tensor  # stream positions whose outputs are kept …
    target: torch.Tensor  # … and where they go in the flattened (rows, width) output
    shape: tuple[int, int]  # (rows, completion width) of the unshared layout


def group_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """The batch rows grouped by identical prompt (its unpadded token ids), groups in order of first row."""
    keyed = prompt_ids.masked_fill(prompt_mask == 0, -1)
    _, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    groups: dict[int, list[int]] = {}
    for row, g in enumerate(inverse.tolist()):
        groups.setdefault(g, []).append(row)
    return list(groups.values())


def left_padded(mask: torch.Tensor) -> bool:
    """Every row of ``mask`` is zeros then ones, with a last column of ones (a non-empty prompt)."""
    return bool(mask.shape[1] and mask[:, -1].all() and (mask.cummax(1).values == mask).all())


def pack(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    groups: list[list[int]],
) -> Packed | None:
    """The packed stream of ``groups`` (lists of batch rows sharing a prompt; see ``group_rows``). Each row's
    suffix is the prompt's last token and its completion up to the last position in its mask. None when no
    row of them has a completion token in the mask (nothing to compute)."""
    rows, width = completion_ids.shape
    cmask = completion_mask.bool()
    ends = torch.where(cmask.any(1), width - cmask.flip(1).int().argmax(1), 0).tolist()  # past the last 1
    lengths = prompt_mask.sum(1).tolist()
    ids, pos, labels, source, target = [], [], [], [], []
    starts, prefixes, counts, widths, slots, keys = [], [], [], [], [], []
    at = 0
    for group in groups:
        members = [r for r in group if ends[r] > 0]
        if not members:
            continue
        first, n = members[0], int(lengths[members[0]])
        p = n - 1  # the shared prefix: the prompt without its last token
        s = 1 + max(ends[r] for r in members)
        starts.append(at)
        prefixes.append(p)
        counts.append(len(members))
        widths.append(s)
        ids.append(prompt_ids[first, prompt_ids.shape[1] - n : prompt_ids.shape[1] - 1])
        pos.append(torch.arange(p))
        labels.append(torch.full((p,), -100, dtype=torch.long))
        at += p
        block, ok = [], torch.zeros(len(members), s, dtype=torch.bool)
        for j, r in enumerate(members):
            e = ends[r]
            c_ids, c_mask = completion_ids[r, :e], cmask[r, :e]
            ids.append(torch.cat([prompt_ids[r, -1:], c_ids]))
            pos.append(p + torch.arange(e + 1))
            labels.append(torch.cat([c_ids.masked_fill(~c_mask, -100), c_ids.new_full((1,), -100)]))
            ok[j, 0], ok[j, 1 : e + 1] = True, c_mask
            block.append(j * s + torch.arange(e + 1))
            source.append(at + torch.arange(e))
            target.append(r * width + torch.arange(e))
            at += e + 1
        slots.append(torch.cat(block))
        keys.append(ok)
    if not starts:
        return None
    device = prompt_ids.device
    return Packed(
        input_ids=torch.cat([t.to(device) for t in ids])[None],
        position_ids=torch.cat(pos).to(device)[None],
        shift_labels=torch.cat([t.to(device) for t in labels])[None],
        layout=Layout(starts, prefixes, counts, widths, [t.to(device) for t in slots], keys),
        source=torch.cat(source).to(device),
        target=torch.cat(target).to(device),
        shape=(rows, width),
    )


def unpack(values: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Per-position outputs of the packed stream (1, T) back in the unshared (rows, width) layout; positions
    not computed are 0. Differentiable."""
    rows, width = packed.shape
    out = values.new_zeros(rows * width)
    return out.index_put((packed.target,), values[0, packed.source]).view(rows, width)


def placeholder_mask(device) -> torch.Tensor:
    """A 4-D attention mask transformers passes through untouched (a prepared custom mask), so that no
    (T × T) mask is built for the packed stream; the split attention reads the layout instead."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


def _base(kind: str, module):
    if kind == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward in its modeling module")
    return eager


def _split_attention(kind: str, module, query, key, value, attention_mask, **kwargs):
    """The attention function registered as ``PREFIX + kind``: the model's own (``kind``) when the forward
    carries no layout; the split attention over the packed stream when it does."""
    layout: Layout | None = kwargs.pop(LAYOUT_KWARG, None)
    base = _base(kind, module)
    if layout is None:
        return base(module, query, key, value, attention_mask, **kwargs)
    layout.calls += 1
    masks = layout.masks(kind, query.dtype, query.device)
    out = []
    for g, (start, p, n, s) in enumerate(zip(layout.starts, layout.prefixes, layout.rows, layout.widths)):
        prefix_mask, suffix_mask = masks[g]
        kp = vp = None
        if p:
            qp, kp, vp = (t[:, :, start : start + p] for t in (query, key, value))
            out.append(base(module, qp, kp, vp, prefix_mask, **kwargs)[0])
        b, slots = start + p, layout.slots[g]
        qs, ks, vs = (_block(t[0, :, b : b + len(slots)], slots, n, s) for t in (query, key, value))
        if p:
            ks = torch.cat([kp.expand(n, -1, -1, -1), ks], dim=2)
            vs = torch.cat([vp.expand(n, -1, -1, -1), vs], dim=2)
        suffix = base(module, qs, ks, vs, suffix_mask, **kwargs)[0]  # (n, s, heads, dim)
        out.append(suffix.reshape(n * s, *suffix.shape[2:]).index_select(0, slots)[None])
    return torch.cat(out, dim=1), None


def _block(x: torch.Tensor, slots: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """A group's suffix tokens ``x`` (heads, tokens, dim) laid out as a padded block (rows, heads, width, dim),
    zeros where a row is shorter than the block."""
    heads, _, dim = x.shape
    block = x.new_zeros(rows * width, heads, dim).index_copy(0, slots, x.transpose(0, 1))
    return block.view(rows, width, heads, dim).transpose(1, 2)


def _register() -> None:
    import functools

    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for kind in BASES:
        AttentionInterface.register(PREFIX + kind, functools.partial(_split_attention, kind))
        AttentionMaskInterface.register(PREFIX + kind, ALL_MASK_ATTENTION_FUNCTIONS[kind])


def why_unsupported(model) -> str | None:
    """Why the split attention cannot stand in for ``model``'s attention exactly, or None when it can: the
    model must use transformers' attention interface with sdpa or eager, and no sliding-window layers."""
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no transformers config"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(text, "_attn_implementation", None)
    kind = kind[len(PREFIX) :] if isinstance(kind, str) and kind.startswith(PREFIX) else kind
    if kind not in BASES:
        return f"attention implementation {kind!r} (the split attention wraps {' or '.join(BASES)})"
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return "sliding-window attention layers"
    if text is not config:
        return "a multimodal or composite model"
    return None


def install(model) -> None:
    """Route ``model``'s attention through the split attention (the same function as before while no layout
    is passed). Idempotent; ``uninstall`` restores the implementation it wrapped."""
    why = why_unsupported(model)
    if why is not None:
        raise ValueError(f"shared_prefix cannot run this model: {why}")
    _register()
    kind = model.config._attn_implementation
    if not kind.startswith(PREFIX):
        model.config._attn_implementation = PREFIX + kind


def uninstall(model) -> None:
    kind = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if isinstance(kind, str) and kind.startswith(PREFIX):
        model.config._attn_implementation = kind[len(PREFIX) :]
