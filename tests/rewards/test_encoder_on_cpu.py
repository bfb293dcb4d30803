"""The refusal classifier's sentence encoder (recap/rewards/encoder.py): found offline, loaded without a network,
and its embeddings those of mean pooling + L2 normalisation over the first ``max_length`` tokens."""

import socket

import numpy as np
import pytest

from recap.rewards.encoder import ENCODER_ENV, SentenceEncoder, find_encoder, get_encoder

TEXTS = [
    "I'm sorry, but I can't help with that.",
    "Sure! " * 300,  # longer than any token limit below: truncated
    "Ⓗⓞⓦ\u200b to shoot a photo?",
    "Short.",
    "Here is how to bake bread. First, mix flour, water, salt and yeast, then knead for ten minutes.",
]


@pytest.fixture(scope="module")
def encoder():
    return get_encoder(max_length=128)  # shorter than the default 256: a faster fixture; a hard dependency


def _reference(folder, texts, max_length):
    """The embeddings written out by hand with transformers: the first ``max_length`` tokens, the mean of
    their last hidden states (padding masked out), scaled to unit length."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.inference_mode():
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_encoder_matches_hand_written_mean_pooling(encoder):
    """sentence-transformers' embeddings are the mean-pooled, L2-normalised ones, truncated at the encoder's
    limit and at a per-call limit (which lasts for that call only)."""
    assert encoder.dim == 384 and encoder.max_length == 128
    for limit in (None, 16):
        got = encoder.encode(TEXTS, batch_size=2, max_length=limit)
        assert got.shape == (len(TEXTS), encoder.dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, _reference(encoder.path, TEXTS, limit or 128), rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert encoder.max_length == 128 and encoder.model.max_seq_length == 128
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_truncation_reads_only_the_first_tokens(encoder):
    head = "I'm sorry, but I can't help with that request, it could hurt someone."
    a, b = head + " Please ask me anything else.", head + " Here is the recipe anyway: " + "step " * 50
    short = encoder.encode([a, b], max_length=8)
    np.testing.assert_allclose(short[0], short[1], rtol=0, atol=1e-6)  # same first 8 tokens
    full = encoder.encode([a, b])
    assert np.abs(full[0] - full[1]).max() > 1e-3


def test_loading_never_touches_the_network(encoder, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"the encoder tried to open a connection: {args}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fresh = SentenceEncoder(encoder.path, max_length=32)  # not the cached one: a real load
    np.testing.assert_allclose(fresh.encode(TEXTS[:2]), encoder.encode(TEXTS[:2], max_length=32), rtol=0, atol=1e-6)


def test_find_encoder(tmp_path, monkeypatch, encoder):
    monkeypatch.delenv(ENCODER_ENV, raising=False)
    assert find_encoder() == encoder.path  # the packaged folder
    monkeypatch.setenv(ENCODER_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        find_encoder()
    assert find_encoder(encoder.path) == encoder.path  # an explicit folder wins over the variable
