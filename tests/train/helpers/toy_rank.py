"""What the torchrun rank scripts beside it share: the rank's JSONL log (``record``), a callback recording a
checksum of the weights after each step, and the miniature-world base model and mixture every rank trains
on. Imported by a script run as ``torchrun … SCRIPT OUT_DIR …`` (its folder is on ``sys.path``)."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from recap.data.mixture import MixtureConfig, build_mixture
from recap.toy.data import train_examples
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
log = out / f"rank{rank}.jsonl"
torch.set_num_threads(1)


def record(**row):
    with log.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


class Weights(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kw):
        h = hashlib.sha256()
        for name, p in sorted(model.named_parameters()):
            h.update(name.encode() + p.detach().cpu().numpy().tobytes())
        record(event="weights", step=state.global_step, sha=h.hexdigest())


def base_and_examples():
    """Rank 0 writes a tiny untrained base model (once), every rank waits for it; returns its folder and the
    mixture (48 training examples, α = 0.5, 4–8-word prefills) all ranks train on."""
    tok = build_tokenizer()
    base = out / "base"
    if rank == 0 and not (base / "config.json").exists():
        build_model(
            tok, ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0
        ).save_pretrained(base)
        tok.save_pretrained(base)
    torch.distributed.init_process_group("gloo") if not torch.distributed.is_initialized() else None
    torch.distributed.barrier()
    return base, build_mixture(train_examples(seed=0)[:48], MixtureConfig(alpha=0.5, prefill_words="4-8", seed=0))
