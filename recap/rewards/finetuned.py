"""The fine-tuned refusal classifier (``recap judge fit --method finetune``): MiniLM trained end to end.

``FinetunedRefusalJudge`` is all-MiniLM-L6-v2 (``recap.rewards.encoder.find_encoder``) with a
sequence-classification head (``transformers.AutoModelForSequenceClassification``), trained with the
``transformers`` ``Trainer`` on CPU on labelled completions (``recap.rewards.labelled``) — the answer
text only, read up to ``max_length`` tokens — over the classes of ``recap.rewards.classifier.CLASS_SETS``.
P(refusal) = 1 − P(compliance), a refusal when that is ≥ 0.5, as for ``EmbeddingRefusalJudge``; the same
abstain band (``abstain=(lo, hi)``: a P(refusal) inside it scores 0.5) applies.

A fitted judge is a folder: ``model.safetensors`` + ``config.json`` + the tokenizer files
(``save_pretrained``), and ``recap_judge.json`` (format tag, classes, training files with their sha256,
training settings, the sha256 of ``model.safetensors``). ``classifier:FOLDER`` (``load_judge``) reads it;
a damaged or foreign folder is refused with ``RefusalJudgeFileError`` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recap.rewards.encoder import ENCODER_ID, ENCODER_PACKAGE, encoder_package_version, find_encoder
from recap.rewards.judges import JudgeItem, Verdict
from recap.rewards.labelled import BUILTIN_LABELS, read_labelled_files

__all__ = [
    "FinetunedRefusalJudge",
    "fit_finetuned_judge",
    "META_FILE",
    "FINETUNE_FORMAT",
    "FINETUNE_DEFAULTS",
]

META_FILE = "recap_judge.json"
WEIGHTS_FILE = "model.safetensors"
FINETUNE_FORMAT = "recap-refusal-judge-finetuned"
FINETUNE_VERSION = 1
#: Training settings of ``fit_finetuned_judge`` (chosen in ``benchmarks/judge_accuracy.py --finetune``).
FINETUNE_DEFAULTS = {
    "max_length": 128,
    "epochs": 3,
    "learning_rate": 5e-5,
    "batch_size": 16,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
}


@contextlib.contextmanager
def _quiet():
    """transformers' progress bars ("Loading weights", "Writing model shards") and warnings off, then back."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # e.g. "newly initialized head" while fitting: expected
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FinetunedRefusalJudge:
    """Refusal/compliance judge: MiniLM fine-tuned end to end with a classification head. Implements the
    judge interface (``name``, ``judge(items)``) with the verdicts of ``EmbeddingRefusalJudge``.

    Build one with ``fit_finetuned_judge`` or ``FinetunedRefusalJudge.load(folder)``.
    """

    name = "refusal-finetuned"

    def __init__(self, model, tokenizer, meta: dict, batch_size: int = 32, abstain: tuple[float, float] | None = None):
        from recap.rewards.classifier import CLASS_SETS, check_abstain

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.classes = tuple(meta["classes"])
        if self.classes not in CLASS_SETS.values():
            raise ValueError(f"unknown classes {self.classes!r}")
        self.max_length = int(meta["max_length"])
        self.batch_size = batch_size
        self.abstain = check_abstain(abstain if abstain is not None else meta.get("abstain"))

    @property
    def features(self) -> str:
        return f"finetuned MiniLM (answer, {self.max_length} tokens)"

    def predict_classes(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """``(n, len(self.classes))`` class probabilities. Answers are sorted by length and batched, so
        that little padding is computed; the output keeps the input order."""
        import torch

        out = np.zeros((len(answers), len(self.classes)), dtype=np.float64)
        order = sorted(range(len(answers)), key=lambda i: len(answers[i]))
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.tokenizer(
                    [answers[i] for i in idx],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = self.model(**enc).logits.double()
                out[idx] = torch.softmax(logits, dim=-1).numpy()
        return out

    def predict_proba(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """P(refusal) = 1 − P(compliance) for each (prompt, answer)."""
        return 1.0 - self.predict_classes(prompts, answers)[:, 0]

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        from recap.rewards.classifier import judge_with_classes, probability_verdict

        return judge_with_classes(
            items,
            self.predict_classes,
            lambda item, row: probability_verdict(item.kind, row, self.classes, self.abstain),
        )

    # -- persistence -----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the judge to ``folder`` (safetensors weights, config, tokenizer, ``recap_judge.json``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with _quiet():
            self.model.save_pretrained(folder)  # safetensors
            self.tokenizer.save_pretrained(folder)
        meta = dict(
            self.meta,
            format=FINETUNE_FORMAT,
            version=FINETUNE_VERSION,
            weights_file=WEIGHTS_FILE,
            weights_sha256=_sha256(folder / WEIGHTS_FILE),
        )
        from recap.util.files import atomic_write

        with atomic_write(folder / META_FILE, "w") as fh:
            fh.write(json.dumps(meta, indent=1))
        self.meta = meta
        return folder

    @classmethod
    def load(
        cls, folder: str | Path, batch_size: int = 32, abstain: tuple[float, float] | None = None
    ) -> FinetunedRefusalJudge:
        """Read a judge written by ``save``. Raises ``FileNotFoundError`` if the folder is absent and
        ``RefusalJudgeFileError`` (naming the file) if its metadata or weights are damaged or foreign."""
        from recap.rewards.classifier import RefusalJudgeFileError

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such fine-tuned refusal-judge folder")
        meta_path, weights = folder / META_FILE, folder / WEIGHTS_FILE

        def bad(path: Path, why: str) -> RefusalJudgeFileError:
            return RefusalJudgeFileError(
                f"{path}: not a valid {FINETUNE_FORMAT} file ({why}); refit it with `recap judge fit --method finetune`"
            )

        if not meta_path.is_file():
            raise bad(meta_path, "missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(meta_path, f"{type(e).__name__}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FINETUNE_FORMAT:
            raise bad(meta_path, "wrong format tag")
        if meta.get("version") != FINETUNE_VERSION:
            raise bad(meta_path, f"version {meta.get('version')!r}, this code reads version {FINETUNE_VERSION}")
        if not weights.is_file():
            raise bad(weights, "missing")
        if _sha256(weights) != meta.get("weights_sha256"):
            raise bad(weights, "weights checksum mismatch")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            with _quiet():
                model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:
            raise bad(folder / "config.json", f"{type(e).__name__}: {e}") from e
        if model.config.num_labels != len(meta.get("classes", ())):
            raise bad(folder / "config.json", f"{model.config.num_labels} labels for classes {meta.get('classes')}")
        try:
            return cls(model, tokenizer, meta, batch_size=batch_size, abstain=abstain)
        except (KeyError, TypeError, ValueError) as e:
            raise bad(meta_path, f"bad metadata: {e}") from e


def _train(rows, y, names, max_length, epochs, learning_rate, batch_size, seed, encoder_path):
    """MiniLM + a fresh classification head, trained with the ``Trainer`` on CPU; returns (model, tokenizer)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_callback import PrinterCallback

    set_seed(seed)
    folder = find_encoder(encoder_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    with _quiet():
        model = AutoModelForSequenceClassification.from_pretrained(
            folder,
            local_files_only=True,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
    enc = tokenizer([r.completion for r in rows], truncation=True, max_length=max_length)
    data = [
        {"input_ids": ids, "attention_mask": m, "labels": lab}
        for ids, m, lab in zip(enc["input_ids"], enc["attention_mask"], y)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            weight_decay=FINETUNE_DEFAULTS["weight_decay"],
            warmup_steps=FINETUNE_DEFAULTS["warmup_ratio"],  # a float < 1 is a ratio of the steps
            lr_scheduler_type="linear",
            train_sampling_strategy="group_by_length",
            seed=seed,
            data_seed=seed,
            use_cpu=True,
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.remove_callback(PrinterCallback)  # it prints the training metrics to stdout
        trainer.train()
    return trainer.model.cpu().eval(), tokenizer


def fit_finetuned_judge(
    paths: str | Path | Sequence[str | Path] = (),
    out_dir: str | Path | None = None,
    *,
    classes: str = "partial",
    builtin: bool = True,
    max_length: int = FINETUNE_DEFAULTS["max_length"],
    epochs: float = FINETUNE_DEFAULTS["epochs"],
    learning_rate: float = FINETUNE_DEFAULTS["learning_rate"],
    batch_size: int = FINETUNE_DEFAULTS["batch_size"],
    max_rows: int | None = None,
    seed: int = 0,
    threads: int | None = 2,
    encoder_path: str | Path | None = None,
    abstain: tuple[float, float] | None = None,
) -> FinetunedRefusalJudge:
    """Fine-tune MiniLM end to end on labelled-completion CSVs (plus, with ``builtin``, the shipped set)
    and write the judge folder to ``out_dir`` if given.

    The ``transformers`` ``Trainer`` on CPU: AdamW, linear schedule with warm-up, ``epochs`` passes, batches
    of ``batch_size`` answers of similar length (``group_by_length``), a fixed ``seed``; ``threads`` fixes
    torch's CPU threads so that the result does not depend on the machine's load (None leaves them).
    ``max_rows``: fit on a seeded random subset of this many rows (for quick tests).
    """
    import torch

    from recap.rewards.classifier import CLASS_SETS, _check_choice, check_abstain

    _check_choice("class set", classes, tuple(CLASS_SETS), none_ok=False)
    abstain = check_abstain(abstain)
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if builtin:
        if not BUILTIN_LABELS.is_file():
            raise FileNotFoundError(f"{BUILTIN_LABELS}: the shipped labelled set is missing (or fit with --no-builtin)")
        paths.append(BUILTIN_LABELS)
    if not paths:
        raise ValueError("no training data: give labelled CSV files or use the built-in set")
    rows, files, _ = read_labelled_files(paths)
    if max_rows is not None and max_rows < len(rows):
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:max_rows])]
    y = [0 if not r.refused else (2 if r.partial and classes == "partial" else 1) for r in rows]
    names = CLASS_SETS[classes]
    if len({v > 0 for v in y}) < 2:
        raise ValueError("training rows hold only one class (need both refusals and compliances)")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model, tokenizer = _train(rows, y, names, max_length, epochs, learning_rate, batch_size, seed, encoder_path)
    finally:
        torch.set_num_threads(before)

    meta = {
        "encoder": {"id": ENCODER_ID, "package": ENCODER_PACKAGE, "package_version": encoder_package_version()},
        "method": "finetune",
        "input": "answer",
        "max_length": max_length,
        "classes": list(names),
        "threshold": 0.5,
        "abstain": list(abstain) if abstain else None,
        "training": {
            "files": files,
            "n": len(rows),
            "n_refused": int(sum(v > 0 for v in y)),
            "builtin": builtin,
            "max_rows": max_rows,
            "seed": seed,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "weight_decay": FINETUNE_DEFAULTS["weight_decay"],
            "warmup_ratio": FINETUNE_DEFAULTS["warmup_ratio"],
            "threads": threads,
        },
    }
    judge = FinetunedRefusalJudge(model, tokenizer, meta, abstain=abstain)
    if out_dir is not None:
        judge.save(out_dir)
    return judge
