"""Security defaults (recap/util/security.py and the loaders): secrets from the environment only and redacted
from every dump and error, no remote code or pickles unless asked, no transcripts to trackers, and
names from data or configs cannot write outside their folder."""

import json

import pytest
from typer.testing import CliRunner

from recap.cli import app
from recap.inference.models import load_model
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer
from recap.train import TrainConfig, grpo_config
from recap.util.security import MASK, inside, redact_text, redacted

KEY = "sk-test-0123456789abcdef"
TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HOME_DIR_NAME", "not-a-secret-name")  # a long value under a harmless name stays


def test_secret_values_are_redacted_from_text_and_config_dumps(secret):
    assert redact_text(f"Bearer {KEY} failed") == f"Bearer {MASK} failed"
    assert redact_text("not-a-secret-name") == "not-a-secret-name"
    dump = {
        "judge": f"rubric with {KEY}",
        "nested": {"api_key": "typed-into-a-config", "hf_token": ""},
        "items": [KEY, 3],
    }
    assert redacted(dump) == {
        "judge": f"rubric with {MASK}",
        "nested": {"api_key": MASK, "hf_token": ""},
        "items": [MASK, 3],
    }


def test_cli_errors_never_print_a_secret(secret, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--config", "nowhere.yaml", "--set", f"model={KEY}"])
    assert result.exit_code == 2
    (tmp_path / "x.jsonl").write_text(json.dumps({"id": "a", "kind": "harmful", "prompt": "p"}) + "\n")
    result = CliRunner().invoke(app, ["eval", "--model", f"./{KEY}", "--data", "x.jsonl", "--results", "r.jsonl"])
    assert result.exit_code == 2 and KEY not in result.output and f"./{MASK}" in result.output


def test_train_config_dump_is_redacted(secret, tmp_path):
    from recap.train import config_dump

    cfg = TrainConfig(model="m", train_file="f", output_dir=str(tmp_path), judge=f"guard:{KEY}.yaml")
    dump = config_dump(cfg)  # what recap train writes to train_config.json
    assert KEY not in json.dumps(dump) and dump["judge"] == f"guard:{MASK}.yaml" and dump["model"] == "m"


def test_trackers_are_off_and_never_get_transcripts():
    assert TrainConfig().report_to == "none"
    assert grpo_config(TrainConfig(use_cpu=True, vllm="off")).report_to in ([], "none", ["none"])
    chosen = grpo_config(TrainConfig(use_cpu=True, vllm="off", report_to="tensorboard"))
    assert chosen.log_completions is False  # scalar metrics only


def _toy_folder(folder, pickled=False):
    import torch

    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if pickled:  # the weights as a pytorch_model.bin pickle only
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    folder = _toy_folder(tmp_path / "pickled", pickled=True)
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()
    with pytest.raises(ValueError, match="only pickled PyTorch weights.*allow_pickle_weights"):
        load_model(folder)
    model, _ = load_model(folder, allow_pickle=True)
    assert model.config.hidden_size == 32


def test_remote_code_is_never_run_unless_asked(tmp_path):
    folder = _toy_folder(tmp_path / "remote")
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    config["model_type"] = "evil-custom"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(folder)
    assert not marker.exists()


def test_names_from_configs_stay_inside_their_folder(tmp_path):
    assert inside(tmp_path, "results/recap-seed0.jsonl") == (tmp_path / "results/recap-seed0.jsonl").resolve()
    for name in ("../escape.jsonl", "a/../../escape", "/etc/passwd"):
        with pytest.raises(ValueError, match="outside"):
            inside(tmp_path, name)
