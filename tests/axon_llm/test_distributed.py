"""Data-parallel training over MPI keeps what data parallelism promises; errors on any rank stop all ranks.

What ``mpiexec -n 2`` promises (see :mod:`axon_llm.distributed`) and how each promise is checked:

1. **Same weights on every rank.** Rank 0's initial weights are broadcast and every rank applies
   the same optimizer step to the same all-reduced gradient, so the ranks' weights agree *bit for bit*
   after every step, and the all-reduced gradient is exactly ``fl(g_rank0 + g_rank1)``.
2. **The all-reduced gradient is the gradient of the global batch.** A one-process run is put in
   lockstep with the two-rank run (before step ``k`` it loads the two-rank run's weights), so both
   differentiate the same function at the same point. They differ only in float32 rounding: each
   gradient element is a sum over the ``N = B * T`` target tokens of per-token terms ``c_n``
   (each itself the end of a chain of float32 reductions over the width ``d``, the head's
   vocabulary ``V`` and the ``T`` attended positions), summed in one order by one process and as
   two half sums plus one addition by two. Recursive summation of ``n`` terms is off by at most
   ``gamma_n * sum |c_n|`` with ``gamma_n = n u / (1 - n u)``, ``u = 2**-24``. ``sum |c_n|`` is not
   observable, but ``|g_rank0| + |g_rank1|`` is its two-term lower bound and, taking the largest
   entry of a tensor, a norm-wise scale ``S`` that is not fooled by an entry that cancels to ~0
   (the flake of the old weights-after-AdamW check was one such entry). Both runs are off from
   exact arithmetic by at most ``gamma_K * S`` per element with ``K = N + d + V + T`` terms on the
   longest reduction chain, so::

       |g_two - g_one| <= 2 * gamma_K * S        (per tensor, element-wise)

   With ``N = 256, d = 512, V = 256, T = 32`` this is ``~1.3e-4 * S``; the observed error is
   under 1 % of that bound, and any data-parallel bug (a rank's rows counted twice or dropped, the
   loss divided by the local instead of the global target count, a missing all-reduce) is an error
   of order ``S`` itself, thousands of times the bound (a mutation in which both ranks take the
   first half of the batch fails at step 0 with ``|dg| = 0.089 > 6.3e-5``).
3. **The loss is the global batch's loss, step by step.** The loss is a sum of ``N`` positive
   per-token cross-entropies (so ``sum |c_n| = N * loss``), each a log-sum-exp over ``V``;
   the same argument gives ``|loss_two - loss_one| <= 2 * gamma_K * loss``.
4. **Weights** are compared only where the optimizer bounds them. From the same weights, one
   AdamW step moves an element by ``lr * wd * w`` (identical in both runs) plus
   ``lr * |m_hat| / (sqrt(v_hat) + eps)``, and by Cauchy-Schwarz over the moment sums
   (Kingma & Ba, section 2.1, with bias correction)::

       |m_hat_t| / sqrt(v_hat_t) <= (1 - b1) / (1 - b1**t) * sqrt((1 - b2**t) / (1 - b2))
                                    * sqrt(sum_{j<t} (b1**2 / b2)**j)  =: A_t

   so two runs that start a step from the same weights end it at most ``2 * lr * A_t`` apart, and
   two whole trajectories at most ``sum_t 2 * lr_t * A_t`` apart (decoupled decay shrinks a
   difference). Adam can turn a rounding-level gradient difference on an entry near 0 into a step
   of that size, which is why a tighter weights check measures noise, not data parallelism.

The MPI tests run ``mpiexec -n 2`` (mpi4py + the mpich wheel: ``pip install axon-llm[mpi]``)
and are skipped, saying so, where those are not installed.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import axon
from axon_llm.distributed import SingleProcess, get_world, launched_by_mpi

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40
STEPS, BATCH, SEQ, LR = 3, 8, 32, 5e-4
BETAS = (0.9, 0.999)                                   # AdamW's defaults, which the trainer uses
U = 2.0 ** -24                                         # float32 unit roundoff

HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py or mpiexec not installed (pip install axon-llm[mpi])")


def gamma(n: int) -> float:
    """Higham's ``gamma_n``: the relative error bound of a float32 sum of ``n`` terms."""
    return n * U / (1 - n * U)


def adam_step_bound(t: int, betas=BETAS) -> float:
    """``A_t``: the largest ``|m_hat| / sqrt(v_hat)`` Adam can reach at its ``t``-th step, for any gradients."""
    b1, b2 = betas
    return ((1 - b1) / (1 - b1 ** t) * math.sqrt((1 - b2 ** t) / (1 - b2))
            * math.sqrt(sum((b1 * b1 / b2) ** j for j in range(t))))


def reduction_terms() -> int:
    """``K = N + d + V + T``: terms on the longest float32 reduction chain of one gradient element
    (``d`` is llama tiny's widest inner product, its MLP width; ``V`` the byte tokenizer's ids)."""
    from axon_llm.models import LLaMAConfig
    from axon_llm.training import load_training_tokenizer

    cfg = LLaMAConfig.tiny()
    width = max(cfg.hidden_size, cfg.intermediate_size)
    return BATCH * SEQ + width + load_training_tokenizer("byte").vocab_size + SEQ


def test_adam_step_bound_holds_and_is_reached():
    """``A_t`` bounds AdamW's step for adversarial gradients, and a constant-sign gradient reaches 1."""
    assert adam_step_bound(1) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = axon.Tensor(np.zeros(64, np.float32), requires_grad=True)
        opt = axon.optim.AdamW([p], lr=1.0, weight_decay=0.0, eps=0.0)
        scale = 10.0 ** rng.uniform(-8, 2, size=(STEPS, 1))
        for t in range(1, STEPS + 1):
            before = p.data.copy()
            p.grad = axon.Tensor((rng.standard_normal(64) * scale[t - 1]).astype(np.float32))
            opt.step()
            assert np.abs(p.data - before).max() <= adam_step_bound(t) * (1 + 1e-5)


def test_single_process_world_is_the_identity(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert launched_by_mpi() == 0
    world = get_world()
    assert isinstance(world, SingleProcess) and world.is_main and world.size == 1
    g = [np.ones(3, np.float32)]
    world.allreduce_sum_(g)
    world.broadcast_arrays(g)
    np.testing.assert_array_equal(g[0], 1.0)
    assert world.allreduce_scalar(2.5) == 2.5


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MV2_"))}


def _train(cmd_prefix, out: Path, data: Path, timeout=600):
    args = ["-m", "axon_llm", "train", "--arch", "llama", "--preset", "tiny", "--data", str(data),
            "--steps", str(STEPS), "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--lr", str(LR),
            "--log-every", "1", "--no-progress", "--out", str(out)]
    return subprocess.run(cmd_prefix + args, capture_output=True, text=True, timeout=timeout, env=_env())


def _steps(cmd_prefix, out: Path, data: Path, lockstep_with: Path | None = None):
    """Run :func:`_record_steps` in a fresh process (under ``mpiexec`` when ``cmd_prefix`` says so)."""
    cmd = cmd_prefix + [__file__, str(data), str(out)] + ([str(lockstep_with)] if lockstep_with else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())


def _record_steps(data: str, out: str, lockstep_with: str | None = None) -> None:
    """Run the trainer's own ``train_step`` for ``STEPS`` steps and save, per rank, to ``out/rank{r}.npz``:
    the weights before every step, the local and the all-reduced gradients, the loss and the lr.
    With ``lockstep_with`` (a two-rank run's folder), load that run's weights before every step."""
    from axon_llm.training import TrainArgs, Trainer

    trainer = Trainer(TrainArgs(arch="llama", preset="tiny", data=data, steps=STEPS, batch_size=BATCH,
                                seq_len=SEQ, lr=LR, progress=False, out=str(Path(out) / "unused")), get_world())
    trainer.setup()
    world, params = trainer.world, trainer.params
    seen: dict[str, list[np.ndarray]] = {}
    reduce = world.allreduce_sum_

    def spy(arrays):
        seen["local"] = [a.copy() for a in arrays]
        reduce(arrays)
        seen["reduced"] = [a.copy() for a in arrays]

    world.allreduce_sum_ = spy
    other = np.load(Path(lockstep_with) / "rank0.npz") if lockstep_with else None
    rec = {f"init.{i}": p.data.copy() for i, p in enumerate(params)}
    for k in range(STEPS):
        if other is not None:
            for i, p in enumerate(params):
                p.data[...] = other[f"w{k}.{i}"]
        rec.update({f"w{k}.{i}": p.data.copy() for i, p in enumerate(params)})
        rec[f"loss{k}"] = trainer.train_step(k)
        rec[f"lr{k}"] = trainer.last_lr
        rec.update({f"local{k}.{i}": g for i, g in enumerate(seen["local"])})
        rec.update({f"grad{k}.{i}": g for i, g in enumerate(seen["reduced"])})
    rec.update({f"w{STEPS}.{i}": p.data.copy() for i, p in enumerate(params)})
    Path(out).mkdir(parents=True, exist_ok=True)
    np.savez(Path(out) / f"rank{world.rank}.npz", **rec)


@needs_mpi
@pytest.mark.slow
def test_two_ranks_compute_the_global_batch_gradient(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    two = _steps(["mpiexec", "-n", "2", sys.executable], tmp_path / "two", data)
    assert two.returncode == 0, two.stderr[-2000:]
    one = _steps([sys.executable], tmp_path / "one", data, lockstep_with=tmp_path / "two")
    assert one.returncode == 0, one.stderr[-2000:]
    r0, r1 = np.load(tmp_path / "two" / "rank0.npz"), np.load(tmp_path / "two" / "rank1.npz")
    ref = np.load(tmp_path / "one" / "rank0.npz")
    n_params = sum(1 for k in r0.files if k.startswith("init."))
    K = reduction_terms()
    for i in range(n_params):                           # same seed, and rank 0's weights broadcast
        np.testing.assert_array_equal(ref[f"init.{i}"], r0[f"init.{i}"])
    for k in range(STEPS):
        for i in range(n_params):
            # promise 1: the ranks hold the same weights and the same sum of their local gradients
            np.testing.assert_array_equal(r1[f"w{k}.{i}"], r0[f"w{k}.{i}"], err_msg=f"step {k} param {i}")
            np.testing.assert_array_equal(r1[f"grad{k}.{i}"], r0[f"grad{k}.{i}"])
            np.testing.assert_array_equal(r0[f"grad{k}.{i}"], r0[f"local{k}.{i}"] + r1[f"local{k}.{i}"])
            # promise 2: that sum is the global batch's gradient, within float32 rounding
            scale = float(np.max(np.abs(r0[f"local{k}.{i}"]) + np.abs(r1[f"local{k}.{i}"])))
            err = float(np.max(np.abs(r0[f"grad{k}.{i}"] - ref[f"grad{k}.{i}"])))
            assert err <= 2 * gamma(K) * scale, f"step {k} param {i}: |dg| {err:.3g} > {2 * gamma(K) * scale:.3g}"
            # promise 4: from the same weights, the two runs' AdamW steps differ by at most 2 lr A_t
            bound = 2 * float(r0[f"lr{k}"]) * adam_step_bound(k + 1) * (1 + 1e-5)
            np.testing.assert_array_less(np.abs(r0[f"w{k + 1}.{i}"] - ref[f"w{k + 1}.{i}"]), bound)
        # promise 3: the loss is the global batch's loss
        loss_one, loss_two = float(ref[f"loss{k}"]), float(r0[f"loss{k}"])
        assert abs(loss_two - loss_one) <= 2 * gamma(K) * loss_one, (k, loss_one, loss_two)
        assert float(r1[f"loss{k}"]) == loss_two
    assert float(r0[f"loss{STEPS - 1}"]) < float(r0["loss0"])


@needs_mpi
@pytest.mark.slow
def test_two_ranks_train_like_one_process_through_the_cli(tmp_path):
    """``mpiexec -n 2 axon-llm train`` logs once, and its checkpoint lies within AdamW's own reach
    (``sum_t 2 lr_t A_t`` per element) of the one-process run's; the logged losses agree to the
    rounding bound of the docstring plus the 6 printed decimals."""
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    one = _train([sys.executable], tmp_path / "one", data)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _train(["mpiexec", "-n", "2", sys.executable], tmp_path / "two", data)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es)" in two.stderr
    assert two.stdout.count("loss=") == STEPS                          # only rank 0 logs

    def logged(run, key):
        return [float(l.split(key + "=")[1].split()[0]) for l in run.stdout.splitlines() if "loss=" in l]

    lrs = logged(one, "lr")
    assert logged(two, "lr") == lrs
    reach = sum(2 * lr * adam_step_bound(t + 1) for t, lr in enumerate(lrs)) * (1 + 1e-3)   # lr printed to 4 digits
    a, b = axon.load(tmp_path / "one" / "model.safetensors"), axon.load(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_less(np.abs(np.asarray(b[k]) - np.asarray(a[k])), reach, err_msg=k)
    loss1, loss2 = logged(one, "loss"), logged(two, "loss")
    # step 0 starts from the same weights, so only rounding (and the 6 printed decimals) separate
    # the losses; later steps start up to `reach` apart, which test_two_ranks_compute_the_global_
    # batch_gradient avoids by running in lockstep
    assert abs(loss2[0] - loss1[0]) <= 2 * gamma(reduction_terms()) * loss1[0] + 1e-6
    assert loss1[-1] < loss1[0] and loss2[-1] < loss2[0]


@needs_mpi
def test_an_error_on_any_rank_aborts_all(tmp_path):
    res = _train(["mpiexec", "-n", "2", sys.executable], tmp_path / "out", tmp_path / "missing.txt", timeout=120)
    assert res.returncode != 0
    assert "error (rank" in res.stderr and "missing.txt" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


if __name__ == "__main__":                             # the worker that _steps starts
    _record_steps(*sys.argv[1:])
