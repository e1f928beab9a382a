"""The chat library (axon_llm/chat.py) and sentence-embedding pooling (axon_llm/pooling.py),
called directly on a tiny random model and a byte tokenizer with a minimal chat template."""

from __future__ import annotations

import io

import numpy as np
import pytest

import axon
from axon_llm import GPT2Config, GPT2LMHead, GenerationConfig
from axon_llm.chat import ChatSession, TextStreamer, check_room, eos_token_ids, max_context, render_chat
from axon_llm.data import ByteTokenizer
from axon_llm.errors import InputError, TokenizerError
from axon_llm.generation import generate
from axon_llm.pooling import embed_texts, mean_pool_normalize


class ChatBytes(ByteTokenizer):
    """Bytes plus a chat template: ``<role>content\\n`` per message, then ``<assistant>``."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return self.encode(text + ("<assistant>" if add_generation_prompt else ""))


@pytest.fixture(scope="module")
def model():
    axon.manual_seed(0)
    return GPT2LMHead(GPT2Config(vocab_size=256, n_positions=256, n_embd=32, n_layer=1, n_head=2))


def test_chat_session_reuses_its_cache_and_equals_generating_from_scratch(model):
    tok = ChatBytes()
    cfg = GenerationConfig.greedy().with_max_tokens(5)
    session = ChatSession(model, tok, cfg, system="be brief")
    first = session.reply("hi", out=io.StringIO())
    assert session.reused_tokens == 0 and len(first) > 0
    out = io.StringIO()
    second = session.reply("more", out=out)
    assert out.getvalue() == second                               # streamed text is the reply
    assert session.reused_tokens >= len(render_chat(tok, session.messages[:2]))   # turn 1 not recomputed
    ids = render_chat(tok, session.messages[:-1])
    scratch = generate(model, np.array([ids]), generation_config=cfg)[0, len(ids):].tolist()
    assert tok.decode(scratch) == second
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    session.reset()
    assert session.messages == [{"role": "system", "content": "be brief"}] and session.cache is None


def test_text_streamer_writes_complete_characters_only():
    out = io.StringIO()
    streamer = TextStreamer(ByteTokenizer(), out=out)
    data = list("né".encode("utf-8"))                 # é is two bytes
    streamer(np.array(data[:2]))
    assert out.getvalue() == "n"                       # half a character is held back
    streamer(np.array(data[2:]))
    assert streamer.finish() == "né" and out.getvalue() == "né"
    quiet = TextStreamer(ByteTokenizer(), out=out, enabled=False)
    quiet(np.array(data))
    assert quiet.finish() == "né" and out.getvalue() == "né"


def test_context_helpers(model):
    assert max_context(model) == 256
    assert check_room(model, 250, 20) == 6 and check_room(model, 10, 20) == 20
    with pytest.raises(InputError, match="context is 256"):
        check_room(model, 256, 1)
    with pytest.raises(TokenizerError, match="chat template"):
        render_chat(ByteTokenizer(), [{"role": "user", "content": "x"}])
    assert eos_token_ids(ByteTokenizer(), model) == [model.config.eos_token_id] or model.config.eos_token_id is None


def test_mean_pool_normalize_uses_only_real_tokens():
    hidden = np.array([[[3.0, 4.0], [100.0, 100.0]],        # row 0: second token is padding
                       [[1.0, 0.0], [0.0, 1.0]]])
    mask = np.array([[1, 0], [1, 1]])
    got = mean_pool_normalize(hidden, mask)
    np.testing.assert_allclose(got, [[0.6, 0.8], [np.sqrt(0.5), np.sqrt(0.5)]], rtol=1e-12)
    np.testing.assert_allclose(mean_pool_normalize(np.zeros((1, 2, 3)), np.ones((1, 2))), 0.0)
    with pytest.raises(InputError, match="mask"):
        mean_pool_normalize(hidden, mask[:, :1])


def test_embed_texts_pools_a_backbone_over_real_tokens():
    from axon_llm import Bert, BertConfig

    axon.manual_seed(0)
    bert = Bert(BertConfig(vocab_size=256, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32))
    tok = ByteTokenizer()
    vecs = embed_texts(bert, tok, ["ab", "abcd"])
    assert vecs.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-12)
    assert bert.training                                   # embedding runs in eval mode and restores it
    alone = embed_texts(bert, tok, ["ab"])                 # padding does not change a row (nor dropout)
    np.testing.assert_allclose(vecs[0], alone[0], atol=1e-6)
    with pytest.raises(InputError, match="exceeds"):
        embed_texts(bert, tok, ["x" * 40])
    with pytest.raises(InputError, match="non-empty list"):
        embed_texts(bert, tok, [])
