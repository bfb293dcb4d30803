"""The paper's training corpus (``recap data recipe``): harmful, over-refusal and math prompts drawn from
hub datasets or local files, with provenance per row and test splits refused.

The RECAP paper (Sec. 4.2, App. C) trains on 5K prompts — 1K harmful (BeaverTails), 1K over-refusal
(STAR-1's benign set), 3K math (GSM8K and MATH train) — and prefills α = 0.5 of the safety prompts
with ℓ = 500 words of counter-aligned reasoning; math is never prefilled. A ``RecipeConfig`` lists the
corpus as parts (a kind, a count, and the sources to draw it from); each part takes its first source
that is available: a hub dataset where there is network, a local file otherwise. The pipeline::

    recap data recipe --config configs/recipe/paper.yaml --out corpus.jsonl        # prompts only
    recap data prefill corpus.jsonl --config configs/recipe/paper-prefills.yaml --out reasoned.jsonl
    recap data mix reasoned.jsonl --out mix.jsonl                                     # α, ℓ, per_row

or in one go: ``recap data recipe --config … --prefill --mix --out mix.jsonl`` (same functions).

Every row records where it came from: ``source`` is a JSON object ``{"part", "dataset", "split",
"row", "format"}`` (the hub id or the file, its split, the row's 1-based position there), and the id is
``<part>-<row>``. A manifest (``<out>.recipe.json``) records the config, which source each part used,
the sources skipped and why, and the counts (rows read, rows of other kinds, duplicates, drawn).

Evaluation data never enters the corpus: a source whose split or file name says ``test`` is refused,
so is a row whose prompt is a known item of a public test set (GSM8K test, MATH-500, AIME 2024,
StrongREJECT, XSTest, WildJailbreak eval; fingerprints below), and so is a row found in one of the
``held_out`` evaluation files. Each refusal is an error naming the file, the row and the test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from recap.data.examples import KINDS, DataError, Example, example_from_row, iter_jsonl
from recap.data.mixture import MixtureConfig
from recap.data.prefills import PrefillConfig

log = logging.getLogger(__name__)

# Row formats the recipe reads itself (hub or local rows); any other name is a recap.data.benchmarks format.
RECIPE_FORMATS = ("beavertails", "prompt-column", "math-solution")
_PROMPT_COLUMNS = ("question", "prompt", "instruction", "problem")
_TEST_WORD = re.compile(r"(?:^|[^a-z0-9])test(?:$|[^a-z0-9])", re.IGNORECASE)
_BOXED = "\\boxed{"

# sha256(lower-cased, whitespace-collapsed user prompt)[:16] of 32 items (all of AIME 2024) of public test
# sets, drawn with random.Random(0) from the files in ../shared/datasets. A hit means the source holds
# that test set (or part of it), whatever its file is called.
_KNOWN_TEST_ITEMS = {
    "GSM8K test": (
        "1207a5443388fceb 191191455a5f1e5d 1eeb0a7925ecf049 211f51e52eb05ecb 373b0eb97bbe01d4 "
        "3b8670e085ea1c6d 3c4d4541a6d101cf 3c9cd4c5ca000cde 4182ac947ee538f8 44a275381c18580e "
        "4a90cb3062d6e3e5 4f80c95f7b6a4639 551a94c69aa47944 6345e6a8f6fa16bd 687111d947a8769d "
        "76ce519d1ac0ef66 792e326da61c5483 79a565098a043191 88d74ca01ed9de71 a1ca02898d9b2e99 "
        "ad49f07894b998d7 b20f0020a0380d94 ba928725930d0664 bb2b6666ea1c56ff bb8d64bd6a632801 "
        "ce0fb1b2eade08ac d0d6f58f41598ef1 dad5d30859fae27c e1e8ac67deca45c7 e2e5dde37e265db0 "
        "ea1e6ff920ed9f6d f9c110651b6bff3b"
    ),
    "MATH-500": (
        "0604d8ac9f130eef 0b55ca1a91d2e518 0d86cf55a8857f80 11d5b7f2199d398b 135f136200bca378 "
        "1b68fdeacf196449 24f0e7ba35ebfac0 2939c750029656e3 29f89a51ab3bbad0 2de842b3bd2562a4 "
        "3321841b3c89fbd6 4dad94fcb6ba7d86 5243d5ff20becc99 603fd90c421d0699 649b0f31387ba62e "
        "6ba79fa23b8e1ccf 6f47e221e6ae9910 755d3f8b497323d6 7b4b4ddca834a53f 8548c95ef2d1da16 "
        "a3aa18b6ca8c3e3c ac2a335a5551fc27 b0c14f0ccb71646f b7078ff02963d3df bd9a39f293607a3a "
        "c9410fad8fb8cc36 d957aa541753d70a daae62c4fea5cd39 e1c3dbda0b82fac7 e7a2d0db0685010a "
        "eb68110de12f3bb6 f319859146ffa9de"
    ),
    "AIME 2024": (
        "01d99bcf6c14833f 052bd9d53fce9ef7 09b1638417b43aa0 0cb2eca511d7d61b 1757d89534ffd6ff "
        "1c7c2e6a3e146086 32d3ced9e928cf92 37bf54026efc96c9 38938c5d7f3a17fb 40edfaa2c9438b86 "
        "44db51b461edca70 4f2147f9bfe986ec 503ad4d8956476c6 59cf7eea2dcde9d5 5bdb4c2b1516d135 "
        "771d6eddceb0c95e 87d843231c158739 9314847056e426c1 971a93b50734f4e0 97fcdd7416f240af "
        "a574237a898bf809 a6590c98dfc6716e ab02491e5b91c10f b895c0ef04c3f244 bd93137c966b65eb "
        "c2ff8ea0f2289937 d70d5e1c0a70a9fc e14d3fdb54ee3cac e2333898540bac64 e4b8c8c772b17a33"
    ),
    "StrongREJECT": (
        "10c6f359bd7956f1 1112dc6e55338ff9 137142fbc524350e 1d0e07e56573d7a4 27b75395d7eb60d1 "
        "2d5ca36fb443177c 32298da4565a715b 3351f324c6d4139f 398126dc562d2170 3ca861d618120cec "
        "48dca031653631c1 4c573500a0b29da6 4fc5d2fa46941b36 5e862c7b62b22cb3 5f83ff70da8049ce "
        "622132b792e5ba7a 6a4ce25ee5c54ecc 7431837d336d8337 755fbb974cc87f6b 7b52ae00fa2a91e2 "
        "7b7506729b2a8358 7df28c13d959919e 8499bb0cb353b398 86b067ef4d35a949 8b090f5d31d87d7f "
        "9c30d98139baa8dd 9d6fe1be85a59b0a a739bcc4d10ce9e1 b828697d4402f183 bc7e90e375451ca6 "
        "c9f60895323495d2 ecd59667ad1a5715"
    ),
    "XSTest": (
        "0a40a392d14e9992 0f4c3e08e2ac47c0 2af61431ebca7d76 30c9fba16cb7c02d 3fbe3cf56da272c2 "
        "415eafd10f986e46 4fefa3877050849b 4ff955695fe8191d 5c7a6584185ab0db 605cf4518cf05e83 "
        "694398cb9b0f0178 6ba9e62486974165 6feb6631bafabc32 761f5ad9993607df 7e5f53a5de0002dd "
        "8b425d58483fe15b 8d61fcaf56a982a4 8e539fae82feaf4a 8e9293014b58ed20 901f5d5b07e460a4 "
        "9110e1416f380750 96f24426e8379acc a1ac12115ab7a117 ba7a42231e56f88e cc299a4b313e91b1 "
        "ce0537004456ffca dc048e1740478113 de823a93ef6b0d84 e2944b75dfb1d99c e46087d7496c9644 "
        "eb84335d7379865c f7debc3e84850f47"
    ),
    "WildJailbreak eval": (
        "08dcd89d23903537 0ca2f2b5ec11726f 0fd61462a5b64f12 4132be7c3e24a969 493b08930e86d729 "
        "4bc1ccfa0dec1182 4e646b3bdadfcab3 526005ec6c871d5c 59e65c253ceea4ae 5b221a3a1d7c4a32 "
        "62dfcd4f367f0455 65bceebc1aadeb37 67c852d938295052 713296f48f85126e 728d3f5ccf1e182a "
        "92574abfbd3267a4 9bb3d3735d0b27b2 a638eef27a772887 a686980968071f20 b31c84cddc9dc409 "
        "bb7d3465517fd6f5 c2403b1615b366d4 c2dbebb6bbcc4c40 c455549a13e1a89b d41b341113542742 "
        "d429e6a6dd6987bb e2eb2a7f808225b0 e92b65003596c4e6 eb5af2465487105d ecac93ddf28d7243 "
        "f8c2162252b9338b f900bed68c7671ed"
    ),
}
KNOWN_TEST_ITEMS = {fp: name for name, items in _KNOWN_TEST_ITEMS.items() for fp in items.split()}


def normalize_prompt(text: str) -> str:
    return " ".join(text.lower().split())


def fingerprint(text: str) -> str:
    """The key a prompt is recognised by: sha256 of its normalised text, 16 hex digits."""
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:16]


@dataclass
class RecipeSource:
    """Where a part's prompts can come from: a hub dataset or a local file (exactly one)."""

    hub: str = field(
        default="",
        metadata={"help": "Hugging Face dataset id (loaded with `datasets`; skipped when offline or unreachable)."},
    )
    path: str = field(
        default="",
        metadata={
            "help": "Local file, used when the sources before it are unavailable: JSONL or Parquet in a recipe format, any file `recap data stats` reads otherwise."
        },
    )
    split: str = field(
        default="train",
        metadata={
            "help": "Split to load (hub) or that the file holds (local; recorded per row). A split or file name saying 'test' is refused."
        },
    )
    config: str | None = field(default=None, metadata={"help": "Hub dataset config (e.g. 'main' for openai/gsm8k)."})
    format: str = field(
        default="auto",
        metadata={
            "help": "Row format: beavertails (prompt + is_safe: unsafe rows are harmful), prompt-column (one prompt column — question/prompt/instruction/problem — every row of the part's kind: STAR-1), math-solution (problem + solution, reference = the last \\boxed{}: MATH), or any `recap data stats` format (gsm8k, chat-jsonl, …)."
        },
    )

    def origin(self) -> str:
        return self.hub or self.path


@dataclass
class RecipePart:
    """One part of the corpus: ``n`` prompts of one kind, from the first available source."""

    name: str = field(
        default="", metadata={"help": "Name of the part (ids are <name>-<row>; also in provenance and the manifest)."}
    )
    kind: str = field(
        default="",
        metadata={"help": "harmful, benign or task; rows of other kinds in a source are skipped (and counted)."},
    )
    n: int | None = field(
        default=None,
        metadata={
            "range": "[1, inf)",
            "help": "Prompts to draw (a seeded sample, kept in source order); null takes all. Fewer available prompts is an error.",
        },
    )
    sources: list[RecipeSource] = field(
        default_factory=list,
        metadata={
            "help": "Tried in order; the first available one is used (hub where there is network, then local files)."
        },
    )


def paper_parts() -> list[RecipePart]:
    """The paper's 5K corpus from the hub (App. C): 1K BeaverTails harmful, STAR-1's benign set
    (915 prompts: the paper's "1K"), 3K math (the paper does not give the GSM8K/MATH split: 1.5K each)."""
    return [
        RecipePart(
            "harmful",
            "harmful",
            1000,
            [RecipeSource(hub="PKU-Alignment/BeaverTails", split="30k_train", format="beavertails")],
        ),
        RecipePart(
            "overrefusal",
            "benign",
            915,
            [RecipeSource(hub="UCSC-VLAA/STAR-benign-915", split="train", format="prompt-column")],
        ),
        RecipePart(
            "gsm8k", "task", 1500, [RecipeSource(hub="openai/gsm8k", config="main", split="train", format="gsm8k")]
        ),
        RecipePart(
            "math",
            "task",
            1500,
            [RecipeSource(hub="DigitalLearningGmbH/MATH-lighteval", split="train", format="math-solution")],
        ),
    ]


@dataclass
class RecipeConfig:
    """The paper's training corpus (``recap data recipe``): parts, test-set checks, and optionally the
    counter-aligned reasoning and the mixture."""

    parts: list[RecipePart] = field(
        default_factory=paper_parts,
        metadata={
            "help": "The corpus, part by part (default: the paper's 1K BeaverTails harmful, STAR-benign-915, 1.5K GSM8K train, 1.5K MATH train, from the hub)."
        },
    )
    seed: int = field(
        default=0,
        metadata={"range": "[0, 4294967295]", "help": "Seed of each part's sample (combined with the part's name)."},
    )
    offline: bool = field(
        default=False,
        metadata={
            "help": "Never try hub sources (also when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set): local files only."
        },
    )
    held_out: list[str] = field(
        default_factory=list,
        metadata={"help": "Evaluation files (any loader format): a corpus prompt found in one is an error."},
    )
    prefill: bool = field(
        default=False,
        metadata={
            "help": "Also write the counter-aligned reasoning of the safety prompts with `prefills` (as `recap data prefill`); off: the output is the prompt file that `recap data prefill` fills."
        },
    )
    prefills: PrefillConfig | str = field(
        default="",
        metadata={
            "help": "The prefill generators: a PrefillConfig mapping, or the path of a PrefillConfig YAML (e.g. configs/recipe/paper-prefills.yaml); '' is PrefillConfig's defaults."
        },
    )
    mix: bool = field(
        default=False,
        metadata={
            "help": "Also build the RECAP mixture with `mixture` (as `recap data mix`; needs the reasoning: prefill, or rows that have it)."
        },
    )
    mixture: MixtureConfig = field(
        default_factory=MixtureConfig,
        metadata={
            "help": "α of the safety prompts prefilled with ℓ words (math never); the paper: α = 0.5, ℓ = 500, per_row selection."
        },
    )


def _offline(cfg: RecipeConfig) -> bool:
    return cfg.offline or any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


class _Unavailable(Exception):
    """A source that cannot be read here (offline, no network, no such file): the next one is tried."""


def check_not_test_split(src: RecipeSource) -> None:
    """Refuse a source whose split or file name says it is a test split."""
    where = src.origin()
    if _TEST_WORD.search(src.split or ""):
        raise DataError(
            where,
            None,
            "split",
            f"split {src.split!r} is a test split: evaluation data must never be trained on (use the train split)",
        )
    name = Path(src.path).stem if src.path else src.hub.split("/")[-1]
    if _TEST_WORD.search(name):
        raise DataError(
            where,
            None,
            "path" if src.path else "hub",
            "the name says it is a test split: evaluation data must never be trained on (use the train "
            "split, e.g. gsm8k_train.jsonl)",
        )


def _hub_dataset(src: RecipeSource):
    try:
        import datasets
    except ImportError:
        raise _Unavailable("the 'datasets' package is not installed") from None
    try:
        return (
            datasets.load_dataset(src.hub, src.config, split=src.split)
            if src.config
            else datasets.load_dataset(src.hub, split=src.split)
        )
    except Exception as e:  # no network, unknown id, auth: the next source is tried
        raise _Unavailable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _file_rows(path: Path) -> list[tuple[int, dict]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    return [(n, row) for n, row in iter_jsonl(path)]


def _text(row: dict, key: str, where, line: int) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, line, key, "missing, empty or not text")
    return value


def last_boxed(solution: str) -> str | None:
    """The content of the last ``\\boxed{…}`` in a solution (braces balanced), or None."""
    start = solution.rfind(_BOXED)
    if start == -1:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[j], 0)
        if depth == 0:
            return solution[i:j].strip() or None
    return None


def _convert_row(fmt: str, row: dict, kind: str, where, line: int) -> dict | None:
    """Fields of an Example (kind, prompt, reference, category) from a row of a recipe format; None when
    the row is not of a kind the format gives (a BeaverTails pair judged safe)."""
    if not isinstance(row, dict):
        raise DataError(where, line, None, f"expected an object, got {type(row).__name__}")
    if fmt == "beavertails":
        prompt = _text(row, "prompt", where, line)
        if not isinstance(row.get("is_safe"), bool):
            raise DataError(where, line, "is_safe", "missing or not true/false")
        if row["is_safe"]:
            return None
        cats = row.get("category") if isinstance(row.get("category"), dict) else {}
        return {"kind": "harmful", "prompt": prompt, "category": ",".join(k for k, v in cats.items() if v) or None}
    if fmt == "prompt-column":
        key = next((k for k in _PROMPT_COLUMNS if k in row), None)
        if key is None:
            raise DataError(where, line, "question", f"no prompt column (expected one of {', '.join(_PROMPT_COLUMNS)})")
        category = row.get("category") if isinstance(row.get("category"), str) else None
        return {"kind": kind, "prompt": _text(row, key, where, line), "category": category}
    if fmt == "math-solution":
        problem = _text(row, "problem", where, line)
        answer = row.get("answer")
        if not (isinstance(answer, str) and answer.strip()):
            answer = last_boxed(_text(row, "solution", where, line))
        if not answer:
            raise DataError(where, line, "solution", "no final answer (no \\boxed{…} and no 'answer' column)")
        return {"kind": "task", "prompt": problem, "reference": answer}
    raise ValueError(f"unknown recipe format {fmt!r}")


def _read_source(src: RecipeSource, part: RecipePart, offline: bool) -> list[tuple[int, Example | None]]:
    """``(row, example)`` for every row of the source in its order (examples of any kind; None for a row
    the format gives no kind, a BeaverTails pair judged safe); raises ``_Unavailable`` when the source
    cannot be read here."""
    if bool(src.hub) == bool(src.path):
        raise ValueError(f"part {part.name!r}: a source names exactly one of hub or path, got {asdict(src)}")
    check_not_test_split(src)
    where = src.origin()
    if src.hub:
        if offline:
            raise _Unavailable("offline")
        ds = _hub_dataset(src)  # a loader format is then read by recap.data.benchmarks (from datasets' cache)
        rows = [(i, dict(row)) for i, row in enumerate(ds, start=1)] if src.format in RECIPE_FORMATS else None
    else:
        path = Path(src.path)
        if not path.is_file():
            raise _Unavailable("no such file")
        rows = _file_rows(path) if src.format in RECIPE_FORMATS else None
    if rows is None:
        from recap.data.benchmarks import load_benchmark

        examples = load_benchmark(where, format=src.format, source=part.name, split=src.split, config=src.config)
        return list(enumerate(examples, start=1))
    out = []
    for line, row in rows:
        fields = _convert_row(src.format, row, part.kind, where, line)
        out.append(
            (line, None if fields is None else example_from_row({**fields, "id": f"{part.name}-{line}"}, where, line))
        )
    return out


def _check_known_test_items(examples: list[tuple[int, Example | None]], where: str) -> None:
    for line, e in examples:
        hit = e is not None and KNOWN_TEST_ITEMS.get(fingerprint(e.user_text()))
        if hit:
            raise DataError(
                where,
                line,
                "prompt",
                f"this prompt is an item of the {hit} evaluation set (known "
                "content): the source holds test data, which must never be "
                "trained on",
            )


def build_corpus(cfg: RecipeConfig, log_fn: Callable[[str], None] | None = None) -> tuple[list[Example], dict]:
    """The corpus (parts in config order, each a seeded sample kept in source order) and the manifest
    (config, the source each part used, skipped sources with the reason, counts)."""
    from recap.data.benchmarks import load_benchmark, seeded_subset

    say = log_fn or log.info
    if not cfg.parts:
        raise ValueError("the recipe names no parts")
    names = [p.name for p in cfg.parts]
    if len(set(names)) != len(names):
        raise ValueError(f"part names must be unique, got {names}")
    offline = _offline(cfg)
    corpus: list[Example] = []
    seen: dict[str, str] = {}  # fingerprint -> id of the row that has it
    parts_manifest = []
    for part in cfg.parts:
        if not part.name:
            raise ValueError(f"every part needs a name (parts: {names})")
        if part.kind not in KINDS:
            raise ValueError(f"part {part.name!r}: kind must be one of {', '.join(KINDS)}, got {part.kind!r}")
        if part.n is not None and part.n < 1:
            raise ValueError(f"part {part.name!r}: n must be positive or null (all), got {part.n}")
        if not part.sources:
            raise ValueError(f"part {part.name!r} has no sources")
        skipped, rows, used = [], None, None
        for src in part.sources:
            try:
                rows = _read_source(src, part, offline)
                used = src
                break
            except _Unavailable as e:
                skipped.append({"source": src.origin(), "why": str(e)})
                say(f"{part.name}: {src.origin()} unavailable ({e}); trying the next source")
        if used is None:
            tried = "; ".join(f"{s['source']}: {s['why']}" for s in skipped)
            raise DataError(part.name, None, "sources", f"no source of this part is available ({tried})")
        where = used.origin()
        _check_known_test_items(rows, where)
        n_read = len(rows)
        of_kind = [(line, e) for line, e in rows if e is not None and e.kind == part.kind]
        unique, duplicates = [], 0
        part_seen: set[str] = set()
        for line, e in of_kind:
            key = fingerprint(e.user_text())
            if key in part_seen:
                duplicates += 1
                continue
            part_seen.add(key)
            unique.append((line, e))
        if part.n is not None and part.n > len(unique):
            raise DataError(
                where,
                None,
                None,
                f"part {part.name!r} asks for {part.n} {part.kind} prompts but the "
                f"source has {len(unique)} (after {duplicates} duplicates); lower n "
                "or add a source",
            )
        drawn = (
            unique if part.n is None else seeded_subset(unique, part.n, zlib.crc32(f"{cfg.seed}:{part.name}".encode()))
        )
        for line, e in drawn:
            key = fingerprint(e.user_text())
            if key in seen:
                raise DataError(
                    where,
                    line,
                    "prompt",
                    f"part {part.name!r}: the same prompt is already in the corpus as {seen[key]!r}",
                )
            ex_id = f"{part.name}-{line:05d}"
            seen[key] = ex_id
            provenance = {"part": part.name, "dataset": where, "split": used.split, "row": line, "format": used.format}
            corpus.append(replace(e, id=ex_id, source=json.dumps(provenance, ensure_ascii=False)))
        parts_manifest.append(
            {
                "name": part.name,
                "kind": part.kind,
                "used": asdict(used),
                "skipped": skipped,
                "rows": n_read,
                "other_kinds": n_read - len(of_kind),
                "duplicates": duplicates,
                "available": len(unique),
                "drawn": len(drawn),
            }
        )
        say(
            f"{part.name}: {len(drawn)} {part.kind} prompts from {where} [{used.split}] ({n_read} rows, "
            f"{n_read - len(of_kind)} of other kinds, {duplicates} duplicates)"
        )
    for path in cfg.held_out:
        held = {fingerprint(e.user_text()): e.id for e in load_benchmark(path)}
        for e in corpus:
            if fingerprint(e.user_text()) in held:
                prov = json.loads(e.source)
                raise DataError(
                    prov["dataset"],
                    prov["row"],
                    "prompt",
                    f"this prompt is evaluation item {held[fingerprint(e.user_text())]!r} of {path}: "
                    "evaluation prompts must never be trained on",
                )
    manifest = {
        "config": asdict(cfg),
        "parts": parts_manifest,
        "held_out_checked": list(cfg.held_out),
        "n": len(corpus),
        "kinds": {k: sum(1 for e in corpus if e.kind == k) for k in KINDS},
    }
    return corpus, manifest


def resolve_prefills(spec: PrefillConfig | str) -> PrefillConfig:
    """A PrefillConfig from the recipe's ``prefills`` field (a config, a YAML path, or '' for defaults)."""
    from recap.util.config import load_config

    if isinstance(spec, PrefillConfig):
        return spec
    return load_config(PrefillConfig, spec or None)


def run_recipe(
    cfg: RecipeConfig,
    out: str | Path,
    *,
    load: Callable | None = None,
    log_fn: Callable[[str], None] | None = None,
    progress=None,
) -> dict:
    """Build the corpus, optionally its counter-aligned reasoning (``cfg.prefill``) and the mixture
    (``cfg.mix``), write it to ``out`` (JSONL or Parquet) and the manifest to ``<out>.recipe.json``.
    ``load`` is handed to ``generate_prefills`` (tests pass a stand-in generator). Returns the manifest."""
    from recap.data.examples import write_examples
    from recap.data.mixture import build_mixture
    from recap.data.prefills import generate_prefills
    from recap.util.files import write_text

    examples, manifest = build_corpus(cfg, log_fn)
    if cfg.prefill:
        pcfg = resolve_prefills(cfg.prefills)
        examples = generate_prefills(examples, pcfg, load=load, progress=progress)
        manifest["prefills"] = {
            "generator": pcfg.generator,
            "refuser": pcfg.refuser or pcfg.generator,
            "with_reasoning": sum(1 for e in examples if e.counter_reasoning),
        }
    if cfg.mix:
        examples = build_mixture(examples, cfg.mixture)
        manifest["mixture"] = {k: sum(1 for e in examples if e.kind == k and e.prefill) for k in ("harmful", "benign")}
    out = Path(out)
    write_examples(out, examples)
    manifest["out"] = str(out)
    write_text(manifest_path(out), json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def manifest_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".recipe.json")
