"""The CUDA paths, on a GPU: bf16 and fp16 training steps, resume, DDP over NCCL, translation
in fp32/bf16/fp16 and CTranslate2 on CUDA.

Every test here is marked ``cuda`` and skipped, with the reason, where
``torch.cuda.is_available()`` is false; ``benchmarks/gpu_check.sh`` runs them
(``pytest -m cuda``) when a GPU is lent. No GPU has run them yet, so no tolerance below was
measured on one: each comes from the CPU measurements of the same comparison
(tests/test_translate.py, tests/test_train.py), widened where a GPU's kernels may round
differently, and stays well below what the injected bugs measured there gave.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from agreement import (
    BEAM_NORMALIZED_TOL,
    assert_beam_agree,
    assert_greedy_agree,
    doubled_weight_copy,
    mean_log_prob_error,
    translate_recorded,
)
from skips import skip, skipif
from test_train import Recorder

from nmt.config import DecodeConfig, ModelConfig, TrainConfig
from nmt.data.parallel import encode_parallel, read_parallel
from nmt.data.tokenizer import Tokenizer
from nmt.decode.ct2 import CT2Translator
from nmt.decode.translate import DTYPES, Translator
from nmt.interop.export import export_ctranslate2
from nmt.model.checkpoint import RESUME_FILE, load_model, load_resume
from nmt.train.distributed import DistEnv, gather_objects
from nmt.train.run import Trainer, train

pytestmark = [
    pytest.mark.cuda,
    skipif(not torch.cuda.is_available(), "cuda", f"torch {torch.__version__}"),
]

# Translation on the GPU against the CPU float32 model: (mean absolute difference of the
# per-token log-probabilities, teacher-forced on 200 validation pairs; the largest gap
# between the two tokens where greedy outputs may diverge). bf16 as on CPU
# (tests/test_translate.py: 0.008 seen; one doubled attention weight gave 0.34, greedy
# divergences at gaps of 0.15 and more). fp16 keeps 3 more mantissa bits than bf16 and this
# model's activations are far inside its range, so bf16's bounds hold with room. float32 on a
# GPU differs from the CPU by summation order (~1e-5); bounded at 1e-3 in case a kernel
# multiplies in TF32 (10-bit mantissa).
GPU_TOLERANCES = {"fp32": (1e-3, 1e-2), "bf16": (0.05, 0.15), "fp16": (0.05, 0.15)}
# CTranslate2's float32 model on CUDA against torch's on CPU: float32 tolerances widened for
# TF32 products, which CTranslate2 may use on GPUs; still below the 0.15 of injected bugs.
CT2_CUDA_TIE, CT2_CUDA_SCORE_TOL = 0.05, 0.01
# Training on the GPU. Each comparison is one check function below, which
# tests/test_cuda_bounds.py feeds, on the CPU, a comparison with a bug injected, to show
# that the check fails it (tests/README.md).
# The first bf16/fp16 update against float32's, from the same weights and batch: the loss
# and the gradient norm (before clipping), relative. On the CPU (Zen 3, autocast) bf16 gave
# 2.1e-5 and 4.4e-4, fp16 6.5e-6 and 6.3e-5; the target padding counted in the loss (a
# wrong mask) 0.059 and 0.048, which the former bounds (2e-2, 5e-2) let through for the
# gradient norm. A GPU's bf16 products also accumulate in float32.
FIRST_LOSS_REL, FIRST_GRAD_NORM_REL = 5e-3, 1e-2
# The losses of resumed updates against those of the uninterrupted run, relative, by dtype.
RESUME_REL = {"fp32": 1e-4, "fp16": 1e-3}
# A one-rank DDP update against the plain trainer's: the same arithmetic but for the
# all-reduce (a copy with one rank), so loss and gradient norm within float32 rounding
# (relative) and gradients (after clipping) within rounding of one another.
DDP_LOSS_REL = 1e-5
DDP_GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}

Update = tuple[float, float, float, int]  # Trainer.train_step's (loss, nll, grad_norm, tokens)


def assert_first_update_follows(got: Update | None, expected: Update, what: str) -> None:
    """A low-precision first update ``got`` (of ``Trainer.train_step``) follows float32's
    ``expected``: not skipped, the same target tokens, loss within FIRST_LOSS_REL and
    gradient norm within FIRST_GRAD_NORM_REL (so fp16's gradients were unscaled before
    clipping, not 65536 times larger). Prints the gaps."""
    assert got is not None, f"{what}: the first update was skipped (non-finite gradient)"
    assert got[3] == expected[3]  # the same target tokens
    loss = abs(got[0] - expected[0]) / abs(expected[0])
    norm = abs(got[2] - expected[2]) / abs(expected[2])
    print(f"{what} first update vs float32: loss {loss:.2g}, gradient norm {norm:.2g} (relative)")
    problems = []
    if loss > FIRST_LOSS_REL:
        problems.append(f"loss {got[0]} vs {expected[0]}, beyond {FIRST_LOSS_REL}")
    if norm > FIRST_GRAD_NORM_REL:
        problems.append(f"gradient norm {got[2]} vs {expected[2]}, beyond {FIRST_GRAD_NORM_REL}")
    assert not problems, f"{what}: " + "; ".join(problems)


def assert_resumed_losses_follow(resumed: list[float], straight: list[float], rel: float) -> None:
    """The losses logged by resumed updates equal the uninterrupted run's within ``rel``;
    prints the largest relative gap."""
    assert len(resumed) == len(straight) > 0
    gap = max(abs(a - b) / abs(b) for a, b in zip(resumed, straight))
    print(f"resumed vs uninterrupted losses: relative gap {gap:.2g} (tol {rel:g})")
    assert gap <= rel, f"resumed losses {resumed} vs {straight}, beyond {rel:g}"


def assert_one_rank_update_matches(
    got: Update | None, expected: Update, ddp: torch.nn.Module, plain: torch.nn.Module
) -> None:
    """A one-rank DDP update ``got`` equals the plain trainer's ``expected`` (the same target
    tokens, loss and gradient norm within DDP_LOSS_REL) and the gradients left on the two
    models (``ddp``, ``plain``) are within DDP_GRAD_TOL. Prints the gaps."""
    assert got is not None
    assert got[3] == expected[3]
    loss = abs(got[0] - expected[0]) / abs(expected[0])
    norm = abs(got[2] - expected[2]) / abs(expected[2])
    pairs = list(zip(ddp.parameters(), plain.parameters(), strict=True))
    grads = max(float((a.grad - b.grad).abs().max()) for a, b in pairs)
    print(
        f"one-rank DDP vs plain: loss {loss:.2g}, gradient norm {norm:.2g}, gradients {grads:.2g}"
    )
    assert loss <= DDP_LOSS_REL, f"loss {got[0]} vs {expected[0]}, beyond {DDP_LOSS_REL}"
    assert norm <= DDP_LOSS_REL, f"gradient norm {got[2]} vs {expected[2]}, beyond {DDP_LOSS_REL}"
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, **DDP_GRAD_TOL)


def make_trainer(
    out: Path,
    spm_model: Path,
    tiny_corpus: tuple[Path, Path],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dist_env: DistEnv | None = None,
) -> Trainer:
    """A :class:`Trainer` on the tiny corpus's 400 training pairs (no validation text)."""
    tokenizer = Tokenizer(spm_model)
    data = encode_parallel(tokenizer, *read_parallel(tiny_corpus[0], "de", "en"), 200)
    return Trainer(out, model_cfg, train_cfg, tokenizer, data, data, ([], []), dist_env=dist_env)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_steps_learn_a_repeated_batch(
    dtype: str, tmp_path: Path, spm_model: Path, tiny_corpus, tiny_model_config, tiny_train_config
) -> None:
    """30 updates on one batch in bf16 or fp16 autocast on the GPU, from float32's initial
    weights: the first update's loss and gradient norm are float32's (so fp16's gradients
    were unscaled before clipping, not 65536 times larger), every loss is finite and the
    loss falls; fp16 keeps a working loss scaler, bf16 has none; the weights stay float32."""
    model_cfg = tiny_model_config(dropout=0.0)

    def trainer(d: str) -> Trainer:
        return make_trainer(
            tmp_path, spm_model, tiny_corpus, model_cfg, tiny_train_config(device="cuda", dtype=d)
        )

    reference, mixed = trainer("fp32"), trainer(dtype)
    assert mixed.device.type == "cuda" and mixed.amp_dtype == DTYPES[dtype]
    assert mixed.scaler.is_enabled() == (dtype == "fp16") and not reference.scaler.is_enabled()
    batches = mixed.collate_step(mixed.epoch_steps(1)[0])
    assert all(b.src.is_pinned() and b.tgt_out.is_pinned() for b in batches)  # async copies
    with mixed.autocast():
        probe = mixed.model.encoder_layers[0].ffn.fc1(torch.ones(1, 64, device="cuda"))
    assert probe.dtype == DTYPES[dtype]

    expected, first = reference.train_step(batches), mixed.train_step(batches)
    assert expected is not None
    assert_first_update_follows(first, expected, dtype)
    results = [first] + [mixed.train_step(batches) for _ in range(29)]
    losses = [r[0] for r in results if r is not None]
    assert len(losses) >= 27, f"{30 - len(losses)} of 30 updates skipped"
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    if dtype == "fp16":
        assert 1.0 <= mixed.scaler.get_scale() < math.inf
    assert all(p.dtype == torch.float32 and p.is_cuda for p in mixed.model.parameters())


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_resume_on_cuda_continues_the_uninterrupted_run(
    dtype: str,
    tmp_path: Path,
    spm_model: Path,
    tiny_corpus,
    tiny_model_config,
    tiny_train_config,
) -> None:
    """12 updates straight against 7, stop, resume to 12, on the GPU with dropout on: the
    resumed updates log the uninterrupted run's losses, so the CUDA generator's state (the
    dropout masks), the optimizer and, in fp16, the loss scale came back.

    Not bit for bit as on CPU (tests/test_train.py): some CUDA kernels (attention backward)
    add with atomics in a varying order, a noise of ~1e-7; a dropout mask not restored moves
    the loss of a 1000-token batch by about 1e-2.
    """
    model_cfg = tiny_model_config(dropout=0.1, attention_dropout=0.1)

    def run(out: Path, steps: int) -> tuple[Trainer, Recorder]:
        recorder = Recorder()
        cfg = tiny_train_config(
            device="cuda", dtype=dtype, max_steps=steps, eval_every=1000, save_every=1000
        )
        trainer, _ = train(*tiny_corpus, out, model_cfg, cfg, spm_path=spm_model, observer=recorder)
        return trainer, recorder

    straight, straight_log = run(tmp_path / "straight", 12)
    run(tmp_path / "split", 7)
    resumed, resumed_log = run(tmp_path / "split", 12)
    assert any("resuming" in m for m in resumed_log.messages)
    assert [s.step for s in resumed_log.steps] == list(range(8, 13))
    assert load_resume(tmp_path / "split" / RESUME_FILE)["rng"][0]["cuda"]  # kept
    expected = [s.loss for s in straight_log.steps[7:]]
    assert_resumed_losses_follow([s.loss for s in resumed_log.steps], expected, RESUME_REL[dtype])
    assert resumed.scaler.is_enabled() == (dtype == "fp16")
    if dtype == "fp16":
        assert resumed.scaler.get_scale() == straight.scaler.get_scale()


@contextmanager
def one_rank_group(
    monkeypatch: pytest.MonkeyPatch, backend: str, device: torch.device
) -> Iterator[DistEnv]:
    """A one-process ``backend`` process group (``MASTER_ADDR``/``MASTER_PORT`` and ``RANK``
    set as torchrun sets them) with ``DistEnv.enabled`` forced on, for the trainer's DDP
    path on one process; yields its :class:`DistEnv` and destroys the group after."""
    # The group's store on a port the system picks and this process holds: no free port found,
    # released and bound again later, by when another process may have taken it.
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True)
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port)}
    for name, value in {**environment, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    device_id = device if device.type == "cuda" else None
    dist.init_process_group(backend, store=store, rank=0, world_size=1, device_id=device_id)
    try:
        assert dist.get_backend() == backend and dist.get_world_size() == 1
        monkeypatch.setattr(DistEnv, "enabled", property(lambda self: True))
        yield DistEnv(rank=0, world_size=1, local_rank=0)
    finally:
        dist.destroy_process_group()


def test_one_rank_nccl_group_runs_a_ddp_update(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    spm_model: Path,
    tiny_corpus,
    tiny_model_config,
    tiny_train_config,
) -> None:
    """A one-process NCCL group (MASTER_ADDR/MASTER_PORT and RANK set as torchrun sets them),
    runs the trainer's DDP path: the model wrapped in DistributedDataParallel on ``cuda:0``,
    one update whose loss and gradients are the plain trainer's (averaging over one rank
    changes nothing), the stop check's all-reduce and save_resume's object gather over NCCL.

    nmt treats world size 1 as not distributed, so ``DistEnv.enabled`` is forced on here: the
    code that runs is the code of a multi-GPU run, without needing a second GPU.
    """
    if not dist.is_nccl_available():
        skip("cuda-build", f"torch {torch.__version__} has no NCCL")
    model_cfg, cfg = tiny_model_config(dropout=0.0), tiny_train_config(device="cuda")
    plain = make_trainer(tmp_path, spm_model, tiny_corpus, model_cfg, cfg)
    batches = plain.collate_step(plain.epoch_steps(1)[0])
    expected = plain.train_step(batches)
    assert expected is not None
    torch.cuda.set_device(0)
    with one_rank_group(monkeypatch, "nccl", torch.device("cuda", 0)) as env:
        ddp = make_trainer(tmp_path, spm_model, tiny_corpus, model_cfg, cfg, dist_env=env)
        assert isinstance(ddp.forward, torch.nn.parallel.DistributedDataParallel)
        assert ddp.device == torch.device("cuda", 0)
        result = ddp.train_step(batches)
        assert_one_rank_update_matches(result, expected, ddp.model, plain.model)
        assert result is not None
        assert ddp.check_stop(result[3]) == (None, result[3])  # an all-reduce on the GPU
        assert gather_objects({"rank": 0}, env) == [{"rank": 0}]


@pytest.fixture(scope="module")
def cuda_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_corpus,
    spm_model: Path,
    tiny_model_config,
    tiny_train_config,
) -> Path:
    """conftest's ``tiny_run`` trained on the GPU instead (float32, 200 updates, validated on
    the GPU at 100 and 200)."""
    out = tmp_path_factory.mktemp("cuda-run")
    cfg = tiny_train_config(device="cuda")
    train(*tiny_corpus, out, tiny_model_config(), cfg, spm_path=spm_model)
    return out


@pytest.fixture(scope="module")
def lines(multi30k) -> list[str]:
    return multi30k("test_2016_flickr", "de", 20)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_translation_on_cuda_agrees_with_float32(
    dtype: str, cuda_run: Path, multi30k, lines: list[str]
) -> None:
    """The model on the GPU in ``dtype``: teacher-forced log-probabilities within
    :data:`GPU_TOLERANCES` of the CPU float32 model's, and greedy translations that equal the
    CPU's or diverge from them only at a near-tie."""
    mean_error, tie = GPU_TOLERANCES[dtype]
    reference, _ = load_model(cuda_run)
    gpu = Translator.load(cuda_run, DecodeConfig(beam_size=1), device="cuda", dtype=dtype)
    assert gpu.device.type == "cuda" and gpu.model.embed.weight.dtype == DTYPES[dtype]
    src, tgt = (gpu.tokenizer.encode(multi30k("val", lang, 200)) for lang in ("de", "en"))
    error = mean_log_prob_error(reference, gpu.model, src, tgt)
    print(f"cuda {dtype}: mean per-token log-probability difference {error:.2g}")
    assert error <= mean_error

    cpu = Translator.load(cuda_run, DecodeConfig(beam_size=1), device="cpu")
    _, found_cpu = translate_recorded(cpu, lines)
    _, found_gpu = translate_recorded(gpu, lines)
    same = assert_greedy_agree(reference, found_cpu, found_gpu, tie, score_tol=mean_error)
    print(f"cuda {dtype}: {same}/{len(lines)} greedy outputs identical to the CPU's")


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_gpu_bounds_fail_a_doubled_weight(
    dtype: str, cuda_run: Path, multi30k, lines: list[str], tmp_path: Path
) -> None:
    """GPU_TOLERANCES' companion: one attention weight doubled (a doubled scale) in the model
    on the GPU takes the mean error past its bound and greedy divergences past its tie."""
    mean_error, tie = GPU_TOLERANCES[dtype]
    reference, _ = load_model(cuda_run)
    weights = doubled_weight_copy(cuda_run, tmp_path / "doubled.safetensors")
    decode = DecodeConfig(beam_size=1)
    gpu = Translator.load(cuda_run, decode, device="cuda", dtype=dtype, weights=weights)
    src, tgt = (gpu.tokenizer.encode(multi30k("val", lang, 200)) for lang in ("de", "en"))
    error = mean_log_prob_error(reference, gpu.model, src, tgt)
    print(f"cuda {dtype}, one weight doubled: mean difference {error:.2g}")
    assert error > mean_error
    _, found_cpu = translate_recorded(Translator.load(cuda_run, decode, device="cpu"), lines)
    _, found_gpu = translate_recorded(gpu, lines)
    with pytest.raises(AssertionError, match="diverge at a gap"):
        assert_greedy_agree(reference, found_cpu, found_gpu, tie, score_tol=mean_error)


def test_beam_search_on_cuda_agrees_with_the_cpu(cuda_run: Path, lines: list[str]) -> None:
    """Beam 5 in float32 on the GPU (the batched beam with its cache reorders) finds the
    CPU's best hypotheses, or equally good ones where candidates were near-tied."""
    found = {}
    for device in ("cpu", "cuda"):
        translator = Translator.load(cuda_run, DecodeConfig(beam_size=5), device=device)
        _, found[device] = translate_recorded(translator, lines)
    tol = GPU_TOLERANCES["fp32"][0]
    assert_beam_agree(found["cpu"], found["cuda"], BEAM_NORMALIZED_TOL, score_tol=tol)


def test_ctranslate2_on_cuda_agrees_with_torch(
    cuda_run: Path, tmp_path: Path, lines: list[str]
) -> None:
    """The float32 CTranslate2 export translating on CUDA: greedy outputs equal torch's on
    CPU or diverge only at a near-tie. Skipped, with the reason, where the installed
    CTranslate2 wheel cannot use the GPU."""
    import ctranslate2 as ct2  # the ctranslate2 extra

    try:
        gpus = ct2.get_cuda_device_count()
    except Exception as exc:  # a wheel built for another CUDA may raise rather than say 0
        skip("cuda-build", f"ctranslate2 {ct2.__version__} cannot query CUDA: {exc}")
    if gpus == 0:
        skip(
            "cuda-build",
            f"ctranslate2 {ct2.__version__} sees no CUDA device (a CPU-only wheel, or one "
            "built for another CUDA version than this machine's driver)",
        )
    engine = CT2Translator.load(
        export_ctranslate2(cuda_run, tmp_path / "ct2"), DecodeConfig(beam_size=1), device="cuda"
    )
    cpu = Translator.load(cuda_run, DecodeConfig(beam_size=1), device="cpu")
    _, found_torch = translate_recorded(cpu, lines)
    _, found_ct2 = translate_recorded(engine, lines)
    reference, _ = load_model(cuda_run)
    # At the length limit CTranslate2 adds no EOS score and ours does: not compared there.
    limits = dict(zip(found_torch, engine.limits([len(src) for src in found_torch])))
    assert_greedy_agree(reference, found_torch, found_ct2, CT2_CUDA_TIE, CT2_CUDA_SCORE_TOL, limits)

    # The companion of CT2_CUDA_TIE and CT2_CUDA_SCORE_TOL: an export of the model with one
    # attention weight doubled (a doubled scale) disagrees beyond them.
    doubled = doubled_weight_copy(cuda_run, tmp_path / "doubled.safetensors")
    bugged = CT2Translator.load(
        export_ctranslate2(cuda_run, tmp_path / "ct2-doubled", weights=doubled),
        DecodeConfig(beam_size=1),
        device="cuda",
    )
    _, found_bugged = translate_recorded(bugged, lines)
    with pytest.raises(AssertionError, match="disagree beyond rounding"):
        assert_greedy_agree(
            reference, found_torch, found_bugged, CT2_CUDA_TIE, CT2_CUDA_SCORE_TOL, limits
        )


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_follows_the_setting_for_float32_work_on_cuda(
    tf32: bool, tmp_path: Path, spm_model: Path, tiny_corpus, tiny_model_config, tiny_train_config
) -> None:
    """A float32 run on CUDA turns TF32 on for matrix products and cuDNN (train.tf32, the
    default) or off (--no-tf32), and records it in its precision record."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
        cfg = tiny_train_config(device="cuda", dtype="fp32", tf32=tf32)
        trainer = make_trainer(tmp_path, spm_model, tiny_corpus, tiny_model_config(), cfg)
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
        record = trainer.precision_record()
        assert (record["tf32"], record["cudnn_tf32"], record["valid_dtype"]) == (
            tf32, tf32, "float32",
        )  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_validation_runs_under_the_training_dtypes_autocast_on_cuda(
    tmp_path: Path, spm_model: Path, tiny_corpus, tiny_model_config, tiny_train_config
) -> None:
    """A bf16 run on the GPU validates (loss and search) under CUDA bf16 autocast."""
    tokenizer = Tokenizer(spm_model)
    src, tgt = read_parallel(tiny_corpus[1], "de", "en")
    data = encode_parallel(tokenizer, src[:8], tgt[:8], 200)
    cfg = tiny_train_config(device="cuda", dtype="bf16")
    trainer = Trainer(tmp_path, tiny_model_config(), cfg, tokenizer, data, data, (src[:8], tgt[:8]))
    seen: list[tuple[bool, torch.dtype]] = []
    trainer.model.encoder_layers[0].register_forward_pre_hook(
        lambda module, args: seen.append(
            (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        )
    )
    result = trainer.validate()
    assert len(seen) >= 2 and set(seen) == {(True, torch.bfloat16)}
    assert math.isfinite(result.loss)
