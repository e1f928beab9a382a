"""axon-llm train: every architecture learns, resume is exact, bad input is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import axon
from axon_llm.cli import main
from axon_llm.data import ByteTokenizer, TokenDataset, mask_tokens, shard_rows
from axon_llm.errors import CheckpointError, ConfigError, InputError
from axon_llm.training import TrainArgs, Trainer, TrainingError, list_presets, train

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40       # small and repetitive


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def _args(text_file, out, **kw) -> TrainArgs:
    base = dict(arch="llama", preset="tiny", data=str(text_file), out=str(out), steps=4, batch_size=4, seq_len=32,
                lr=1e-2, log_every=1, progress=False)
    base.update(kw)
    return TrainArgs(**base)


# -- data ------------------------------------------------------------------------------------
def test_batches_are_a_function_of_seed_and_step():
    tok = ByteTokenizer()
    ds = TokenDataset(tok.encode(TEXT), 16, seed=3)
    a, b = ds.global_batch(5, 4), ds.global_batch(5, 4)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.input_ids[:, 1:], a.labels[:, :-1])          # labels are shifted inputs
    assert not np.array_equal(ds.global_batch(6, 4).input_ids, a.input_ids)
    halves = [shard_rows(a, r, 2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate([h.input_ids for h in halves]), a.input_ids)
    assert tok.decode(tok.encode("héllo ✓")) == "héllo ✓"


def test_mlm_masking_follows_bert():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 256, size=(64, 128))
    ids, labels = mask_tokens(windows, rng, mask_token_id=257, vocab_size=256)
    picked = labels != -100
    assert 0.12 < picked.mean() < 0.18 and picked.any(axis=1).all()
    np.testing.assert_array_equal(labels[picked], windows[picked])
    np.testing.assert_array_equal(ids[~picked], windows[~picked])
    assert 0.75 < (ids[picked] == 257).mean() < 0.85


# -- every architecture learns ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama", "mistral", "phi", "ssm", "hydra", "chimera", "trident"])
def test_tiny_preset_reduces_loss(arch, text_file, tmp_path):
    trainer = train(_args(text_file, tmp_path / "run", arch=arch, steps=5, warmup=1, seq_len=16))
    losses = [loss for _, loss in trainer.losses]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.5, losses
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()


def test_checkpoint_loads_with_from_pretrained_and_generates(text_file, tmp_path):
    from axon_llm.auto import from_pretrained

    trainer = train(_args(text_file, tmp_path / "run", steps=2, seq_len=16))
    model = from_pretrained(tmp_path / "run")
    ids = np.array([ByteTokenizer().encode("the cat")])
    with axon.no_grad():
        mine = model(ids).numpy()
        trained = trainer.model.eval()(ids).numpy()
    np.testing.assert_array_equal(mine, trained)
    out = model.generate(ids, max_new_tokens=5)
    assert out.shape == (1, ids.shape[1] + 5)


# -- resume --------------------------------------------------------------------------------------
def test_resume_continues_bit_for_bit(text_file, tmp_path):
    # GPT-2's tiny preset has dropout, so the saved RNG state matters too
    kw = dict(arch="gpt2", steps=4, warmup=1, grad_accum=2, seq_len=16)
    full = train(_args(text_file, tmp_path / "full", **kw))
    train(_args(text_file, tmp_path / "part", stop_at=2, **kw))
    state = json.loads((tmp_path / "part" / "trainer_state.json").read_text())
    assert state["step"] == 2
    resumed = train(_args(text_file, tmp_path / "part", resume=str(tmp_path / "part"), **kw))
    assert resumed.losses == full.losses
    a, b = axon.load(tmp_path / "full" / "model.safetensors"), axon.load(tmp_path / "part" / "model.safetensors")
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


# -- bad input ----------------------------------------------------------------------------------
def test_missing_data_short_text_unknown_preset(text_file, tmp_path):
    with pytest.raises(InputError, match="not found"):
        train(_args(tmp_path / "nope.txt", tmp_path / "o1"))
    short = tmp_path / "short.txt"
    short.write_text("tiny", encoding="utf-8")
    with pytest.raises(InputError, match="fewer than one sequence"):
        train(_args(short, tmp_path / "o2"))
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        train(_args(text_file, tmp_path / "o3", preset="huge"))
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3"))
    assert "tiny" in list_presets("hydra") and "llama3_8b" in list_presets("llama")


def test_resume_from_other_arch_and_existing_out_are_refused(text_file, tmp_path):
    train(_args(text_file, tmp_path / "run", arch="ssm", steps=1, seq_len=16))
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="--arch ssm, not --arch gpt2"):
        train(_args(text_file, tmp_path / "run", arch="gpt2", resume=str(tmp_path / "run")))
    with pytest.raises(TrainingError, match="already holds a training checkpoint"):
        train(_args(text_file, tmp_path / "run", arch="ssm", steps=2))
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(text_file, tmp_path, monkeypatch):
    trainer = Trainer(_args(text_file, tmp_path / "run", arch="ssm", steps=5, seq_len=16))
    trainer.setup()
    real = trainer.train_step

    def poisoned(step):
        loss = real(step)
        return float("nan") if step == 2 else loss          # the 3rd step diverges

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(TrainingError, match="at step 3.*last good checkpoint \\(step 2\\)"):
        trainer.run()
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2


def test_cli_train_prints_loss_and_fails_cleanly(text_file, tmp_path, capsys):
    rc = main(["train", "--arch", "ssm", "--preset", "tiny", "--data", str(text_file), "--steps", "2",
               "--batch-size", "2", "--seq-len", "16", "--log-every", "1", "--no-progress", "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert rc == 0 and out.out.count("loss=") == 2 and "tokens/s=" in out.out
    rc = main(["train", "--arch", "ssm", "--preset", "tiny", "--data", str(tmp_path / "missing.txt"),
               "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "missing.txt" in err and "Traceback" not in err


def test_init_from_a_pretrained_model_fine_tunes_it(text_file, tmp_path, fixtures_dir):
    from axon_llm.auto import from_pretrained

    src = fixtures_dir / "hf" / "gpt2"                      # a tiny GPT-2 with a 256-id vocabulary
    trainer = Trainer(_args(text_file, tmp_path / "ft", arch="gpt2", preset=None, init=str(src), steps=2,
                            seq_len=16, lr=1e-3))
    trainer.setup()
    ref = from_pretrained(src).state_dict()
    mine = trainer.model.state_dict()
    for k in ref:
        np.testing.assert_array_equal(np.asarray(mine[k]), np.asarray(ref[k]))
    trainer.run()
    with pytest.raises(ConfigError, match="not a --arch llama"):
        train(_args(text_file, tmp_path / "x", arch="llama", preset=None, init=str(src)))


def test_eval_loss_and_loss_curve_png(text_file, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is optional (pip install axon-llm[plot])")
    rc = main(["train", "--arch", "ssm", "--preset", "tiny", "--data", str(text_file), "--steps", "2", "--batch-size",
               "2", "--seq-len", "16", "--eval-every", "2", "--no-progress", "--out", str(tmp_path / "o")])
    assert rc == 0 and "eval_loss=" in capsys.readouterr().out
    assert (tmp_path / "o" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
