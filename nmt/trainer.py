"""The training loop of one run: :class:`Trainer` owns the model, optimizer and data and
runs one flat, ordered loop (set LR → step → log → validate → checkpoint).

Its state (model, optimizer, step, epoch, position in the epoch's batch order, every rank's
RNG state, early-stopping counters) goes into ``resume.pt``, so an interrupted run continues
exactly where an uninterrupted one would be. Progress is reported through a
:class:`~nmt.train_parts.TrainObserver`; the library prints nothing itself. The learning-rate
schedules are in :mod:`nmt.schedule`; the dtype choice, counters and progress records in
:mod:`nmt.train_parts`.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from nmt import checkpoint as ckpt
from nmt.batching import EpochPlanner, RankSteps, make_batches
from nmt.config import DecodeConfig, ModelConfig, TrainConfig
from nmt.data import Batch, Corpus, ParallelData, Prefetcher, collate
from nmt.distributed import DistEnv, gather_objects, sum_across
from nmt.errors import TrainingError
from nmt.loss import LossModule, label_smoothed_loss
from nmt.model import Transformer
from nmt.onednn import use_onednn_training
from nmt.schedule import inverse_sqrt_lr, linear_decay_lr, planned_steps
from nmt.score import corpus_scores
from nmt.tokenizer import Tokenizer
from nmt.train_parts import (
    StepStats,
    TrainObserver,
    TrainState,
    ValidResult,
    open_tensorboard,
    pick_dtype,
)
from nmt.translate import Translator, resolve_device

MAX_BAD_STEPS = 20  # consecutive non-finite losses before training gives up
MIN_LOSS_SCALE = 1e-4  # fp16: a loss scale below this means the loss is exploding (fairseq)
PREFETCH_STEPS = 4  # updates whose batches are built ahead in a background thread
# With a linear schedule's planned end, the kept step checkpoints are spread over this share
# of the updates before it (for `nmt average`: the weights of the low-lr tail, not the peak).
AVERAGE_SHARE = 0.2


class Trainer:
    """Owns the model, optimizer and data of one run and runs the loop.

    Args:
        out_dir: the run folder (already holding ``config.json`` and ``spm.model``).
        model_cfg / train_cfg: the resolved configuration.
        tokenizer: the run's SentencePiece model.
        train_data: the training pairs, in memory or memory-mapped (:mod:`nmt.store`).
        valid_data: encoded valid pairs; valid_text: valid source and reference lines.
        observer: progress receiver.
    """

    def __init__(
        self,
        out_dir: Path,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        tokenizer: Tokenizer,
        train_data: Corpus,
        valid_data: ParallelData,
        valid_text: tuple[list[str], list[str]],
        observer: TrainObserver | None = None,
        dist_env: DistEnv | None = None,
    ):
        self.out_dir, self.cfg, self.tokenizer = out_dir, train_cfg, tokenizer
        self.train_data, self.valid_data, self.valid_text = train_data, valid_data, valid_text
        self.dist = dist_env or DistEnv()
        self.observer = observer if observer and self.dist.is_main else TrainObserver()
        self.device = resolve_device(train_cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp_dtype = pick_dtype(train_cfg, self.device)
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank
        random.seed(train_cfg.seed)
        self.model = Transformer(model_cfg).to(self.device)
        if self.device.type == "cpu" and self.amp_dtype is None and train_cfg.onednn:
            use_onednn_training(self.model)  # float32 products in oneDNN, not MKL
        torch.manual_seed(train_cfg.seed + self.dist.rank)  # different dropout per rank
        loss_module = LossModule(self.model, train_cfg.label_smoothing)
        self.forward: torch.nn.Module = loss_module
        if train_cfg.compile:
            # dynamic: batch shapes vary with sentence lengths. Validation and search use the
            # uncompiled model. Under DDP, dynamo's graph split at DDP's gradient buckets
            # failed to compile (torch 2.13, dynamic shapes: "'float' object has no attribute
            # 'meta'"); one graph inside DDP works, its gradients all-reduced after backward.
            torch._dynamo.config.optimize_ddp = False
            self.forward = torch.compile(loss_module, dynamic=True)  # type: ignore[assignment]
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(self.forward, device_ids)
        self.no_sync = getattr(self.forward, "no_sync", nullcontext)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_cfg.lr,
            betas=train_cfg.adam_betas,
            weight_decay=train_cfg.weight_decay,
        )
        self.state = TrainState()
        self.stop_signal: int | None = None
        self.tensorboard = (
            open_tensorboard(out_dir) if train_cfg.tensorboard and self.dist.is_main else None
        )
        self.batches = EpochPlanner(  # the batch cuts are computed once, for every epoch
            train_data.src_lens,
            train_data.tgt_lens,
            train_cfg.batch_tokens,
            train_cfg.seed,
            self.dist.rank,
            self.dist.world_size,
            train_cfg.accum,
        )
        self.steps_per_epoch = self.batches.steps_per_epoch

    def epoch_steps(self, epoch: int) -> RankSteps:
        """This rank's updates of ``epoch``, in order: each a list of ``accum`` batches.

        The order depends only on the seed, the epoch and the rank: every rank takes every
        world_size-th batch, and all ranks get the same number of updates so that they stay
        in lockstep (the few batches left over at the end of an epoch are skipped). The next
        epoch's plan is built in the background meanwhile (:class:`nmt.batching.EpochPlanner`).
        """
        return self.batches.steps(epoch)

    # --- resume -------------------------------------------------------------------------
    def save_resume(self) -> None:
        """Write ``last.safetensors`` and ``resume.pt`` (atomically, weights first)."""
        # Every rank's RNG state is kept (all ranks must call this), so that dropout after a
        # resume continues exactly as it would have.
        rng = gather_objects(
            {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            self.dist,
        )
        if not self.dist.is_main:
            return
        ckpt.save_weights(self.out_dir / "last.safetensors", self.model, self.state.step)
        ckpt.save_resume(
            self.out_dir / ckpt.RESUME_FILE,
            {
                "format_version": ckpt.FORMAT_VERSION,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "state": dict(vars(self.state)),
                "rng": rng,
                "python_rng": list(random.getstate()[1]),
                "world_size": self.dist.world_size,
            },
        )

    def load_resume(self, path: Path) -> None:
        """Restore everything :meth:`save_resume` wrote."""
        data = ckpt.load_resume(path)
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        if data.get("scaler"):  # absent in checkpoints of runs without fp16
            self.scaler.load_state_dict(data["scaler"])
        self.state = TrainState(**data["state"])
        rngs = data["rng"]
        rng = rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate((3, tuple(data["python_rng"]), None))

    # --- one update ---------------------------------------------------------------------
    def collate_step(self, step_batches: list[list[int]]) -> list[Batch]:
        """The padded batches of one update (``accum`` lists of example indices), on the CPU
        (pinned when training on CUDA, so the copy to the GPU can overlap)."""
        batches = [collate(self.train_data, b) for b in step_batches]
        if self.device.type == "cuda":
            batches = [
                Batch(
                    b.src.pin_memory(),
                    b.tgt_in.pin_memory(),
                    b.tgt_out.pin_memory(),
                    b.n_tgt_tokens,
                )
                for b in batches
            ]
        return batches

    def train_step(self, step_batches: list[Batch]) -> tuple[float, float, float, int] | None:
        """One update from ``accum`` batches: forward and backward each (gradients
        accumulated, averaged over all their target tokens), clip, step.

        With fp16 the loss is scaled before backward and the gradients unscaled before
        clipping (:class:`torch.amp.GradScaler`); an overflow skips the update and halves the
        scale.

        Returns:
            (loss, nll, grad_norm, target tokens), losses per token; ``None`` when the
            gradient was not finite and the update was skipped.
        """
        batches = [b.to(self.device) for b in step_batches]
        n = sum(b.n_tgt_tokens for b in batches)
        total_loss = total_nll = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            # DDP averages gradients across ranks on the last micro-batch's backward only.
            last = i == len(batches) - 1
            with self.no_sync() if not last else nullcontext():
                with self.autocast():
                    loss, nll = self.forward(batch.src, batch.tgt_in, batch.tgt_out)
                self.scaler.scale(loss / n).backward()
            total_loss, total_nll = total_loss + float(loss.detach()), total_nll + float(nll)
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
        )
        # A NaN/inf loss on any rank makes the averaged gradient non-finite on every rank,
        # so all ranks skip the same update.
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # fp16: halve the loss scale
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total_loss / n, total_nll / n, grad_norm, n

    def autocast(self):  # type: ignore[no-untyped-def]
        """bf16/fp16 autocast when enabled (see :func:`~nmt.train_parts.pick_dtype`), else a
        no-op context."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- validation ---------------------------------------------------------------------
    @torch.no_grad()
    def valid_loss(self) -> tuple[float, float]:
        """Teacher-forced (label-smoothed loss, NLL) per target token on the valid set."""
        self.model.eval()
        total = nll_total = 0.0
        tokens = 0
        for batch_indices in make_batches(
            self.valid_data.src_lens,
            self.valid_data.tgt_lens,
            self.cfg.batch_tokens,
            0,
        ):
            batch = collate(self.valid_data, batch_indices).to(self.device)
            states = self.model(batch.src, batch.tgt_in)
            loss, nll = label_smoothed_loss(
                self.model, states, batch.tgt_out, self.cfg.label_smoothing
            )
            total, nll_total, tokens = (
                total + float(loss),
                nll_total + float(nll),
                tokens + batch.n_tgt_tokens,
            )
        return total / max(tokens, 1), nll_total / max(tokens, 1)

    def validate(self) -> ValidResult:
        """Loss, perplexity, BLEU and chrF on the valid set; keeps ``model.safetensors`` as
        the best by BLEU and updates the early-stopping counters."""
        start = time.monotonic()
        loss, nll = self.valid_loss()
        src_lines, ref_lines = self.valid_text
        translator = Translator(
            self.model,
            self.tokenizer,
            DecodeConfig(
                beam_size=self.cfg.valid_beam_size,
                batch_tokens=self.cfg.batch_tokens,
            ),
        )
        hyps = [t.text for t in translator.translate(src_lines)]
        self.model.train()
        scores = corpus_scores(hyps, [ref_lines], metrics=("bleu", "chrf"))
        bleu = scores["bleu"].score
        best = bleu > self.state.best_bleu
        if best:
            self.state.best_bleu, self.state.bad_validations = bleu, 0
            ckpt.save_weights(self.out_dir / ckpt.WEIGHTS_FILE, self.model, self.state.step)
        else:
            self.state.bad_validations += 1
        result = ValidResult(
            self.state.step,
            loss,
            math.exp(min(nll, 50.0)),
            bleu,
            scores["chrf"].score,
            scores["bleu"].signature,
            best,
            time.monotonic() - start,
        )
        self.log({"type": "valid", **vars(result)})
        self.observer.on_validate(result)
        return result

    # --- checkpoints and logs -----------------------------------------------------------
    def step_checkpoint(self) -> Path:
        """``checkpoints/step-N.safetensors`` of the current step."""
        return self.out_dir / "checkpoints" / f"step-{self.state.step:08d}.safetensors"

    def save_step_checkpoint(self) -> None:
        """Write ``checkpoints/step-N.safetensors`` and keep the newest ``keep_checkpoints``."""
        if not self.dist.is_main:
            return
        path = self.step_checkpoint()
        ckpt.save_weights(path, self.model, self.state.step)
        for old in sorted(path.parent.glob("step-*.safetensors"))[: -self.cfg.keep_checkpoints]:
            old.unlink()

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (main process only), and the numbers to
        TensorBoard when it is on."""
        if not self.dist.is_main:
            return
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "best"):
                    self.tensorboard.add_scalar(f"{record['type']}/{key}", value, record["step"])
            self.tensorboard.flush()
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def out_of_budget(self) -> str | None:
        """Why training should stop now, or ``None``."""
        c, s = self.cfg, self.state
        if c.max_steps and s.step >= c.max_steps:
            return f"reached max_steps={c.max_steps}"
        if c.max_epochs and s.epoch > c.max_epochs:
            return f"reached max_epochs={c.max_epochs}"
        if c.max_minutes and s.elapsed_s >= c.max_minutes * 60:
            return f"reached max_minutes={c.max_minutes:g}"
        if c.lr_schedule == "linear" and s.planned_steps and s.step >= s.planned_steps:
            return (
                f"reached the {s.planned_steps} updates planned for max_minutes="
                f"{c.max_minutes:g} (the learning rate has decayed to 0)"
            )
        if c.patience and s.bad_validations >= c.patience:
            return f"no BLEU improvement in {c.patience} validations (patience)"
        if self.stop_signal is not None:
            return f"interrupted by signal {signal.Signals(self.stop_signal).name}"
        return None

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> str:
        """Train until a budget runs out; returns the reason training stopped.

        Raises:
            TrainingError: the loss stayed non-finite for ``MAX_BAD_STEPS`` updates in a row
                (the last good state is saved first).
        """
        self.model.train()
        self.observer.on_start(self)
        bad_in_row, window_tokens, window_start = 0, 0, time.monotonic()
        while (reason := self.check_stop()[0]) is None:
            steps = self.epoch_steps(self.state.epoch)
            first = self.state.batch_in_epoch
            ahead = ((i, self.collate_step(steps[i])) for i in range(first, len(steps)))
            with Prefetcher(ahead, PREFETCH_STEPS) as prefetched:
                window_wait = prefetched.wait_s
                for index, batches in prefetched:
                    tick = time.monotonic()
                    lr = self.learning_rate(self.state.step + 1)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    result = self.train_step(batches)
                    self.state.batch_in_epoch = index + 1
                    if result is None:
                        bad_in_row = self.skipped_update(bad_in_row)
                        continue
                    bad_in_row = 0
                    self.state.step += 1
                    self.state.elapsed_s += time.monotonic() - tick
                    reason, tokens = self.check_stop(result[3])
                    window_tokens += tokens
                    window_s = max(time.monotonic() - window_start, 1e-9)
                    wait_share = (prefetched.wait_s - window_wait) / window_s
                    self.after_step(result, lr, window_tokens / window_s, wait_share)
                    if self.state.step % self.cfg.log_every == 0:
                        window_tokens, window_start = 0, time.monotonic()
                        window_wait = prefetched.wait_s
                    if reason is None and self.state.step % self.cfg.eval_every == 0:
                        reason = self.check_stop()[0]  # patience may have run out just now
                    if reason is not None:
                        break
                else:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
        self.finish()
        return reason

    def check_stop(self, tokens: int = 0) -> tuple[str | None, int]:
        """Whether to stop (agreed by all ranks: any rank's reason stops all) and this step's
        target tokens summed over ranks."""
        reason = self.out_of_budget()
        if not self.dist.enabled:
            return reason, tokens
        total, stops = sum_across(
            [float(tokens), float(reason is not None)], self.dist, self.device
        )
        if stops and reason is None:
            reason = "stopped together with another process"
        return reason, int(total)

    def skipped_update(self, bad_in_row: int) -> int:
        """Count a skipped (non-finite) update; give up after ``MAX_BAD_STEPS`` in a row, or
        with fp16 once the loss scale has fallen below ``MIN_LOSS_SCALE`` (overflows that
        only lower the scale are part of fp16 training)."""
        self.state.skipped_steps += 1
        bad_in_row += 1
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            if scale >= MIN_LOSS_SCALE:
                return bad_in_row
            problem = (
                f"fp16 loss scale collapsed to {scale:.2g} (below {MIN_LOSS_SCALE:g}) after "
                f"{bad_in_row} overflowing updates in a row at step {self.state.step}: the "
                "loss is exploding"
            )
            hint = "use --dtype bf16 (or fp32), lower --lr or raise --warmup-steps"
        elif bad_in_row >= MAX_BAD_STEPS:
            problem = (
                f"loss was NaN/inf for {bad_in_row} updates in a row after step {self.state.step}"
            )
            hint = "lower lr or raise warmup_steps"
        else:
            return bad_in_row
        self.save_resume()
        raise TrainingError(f"{problem}; last good state saved in {self.out_dir}; {hint}")

    # --- the schedule and its budget ----------------------------------------------------
    def learning_rate(self, step: int) -> float:
        """The learning rate of 1-based update ``step`` (:mod:`nmt.schedule`)."""
        c = self.cfg
        if c.lr_schedule == "linear":
            return linear_decay_lr(step, c.lr, c.warmup_steps, self.budget_steps())
        return inverse_sqrt_lr(step, c.lr, c.warmup_steps)

    def budget_steps(self) -> int:
        """The last update of a linear schedule: the smallest of ``max_steps``, ``max_epochs``
        × updates per epoch and the plan for ``max_minutes`` (0 = not known yet)."""
        c, s = self.cfg, self.state
        ends = [n for n in (c.max_steps, c.max_epochs * self.steps_per_epoch, s.planned_steps) if n]
        return min(ends, default=0)

    def plan_time_budget(self) -> None:
        """Turn ``max_minutes`` into a number of updates, once, from rank 0's time per update
        so far (validation and checkpoints included), shared with every rank; kept in
        ``resume.pt`` so that a resumed run follows the same schedule."""
        s = self.state
        plan = planned_steps(s.step, s.elapsed_s, self.cfg.max_minutes * 60)
        shared = sum_across([float(plan if self.dist.is_main else 0)], self.dist, self.device)
        s.planned_steps = int(shared[0])
        self.log({"type": "plan", "step": s.step, "planned_steps": s.planned_steps})
        self.observer.on_message(
            f"time budget: {s.planned_steps} updates fit into max_minutes="
            f"{self.cfg.max_minutes:g} at {s.elapsed_s / s.step:.2f} s per update so far; "
            "the learning rate decays linearly to 0 by then"
        )

    def checkpoint_due(self) -> bool:
        """Whether this update writes a step checkpoint: every ``save_every`` updates, or,
        once a linear schedule's end is known, at ``keep_checkpoints`` evenly spaced updates
        over its last :data:`AVERAGE_SHARE`."""
        c, step = self.cfg, self.state.step
        end = self.budget_steps() if c.lr_schedule == "linear" else 0
        if not end:
            return step % c.save_every == 0
        every = max(1, round(end * AVERAGE_SHARE / max(c.keep_checkpoints - 1, 1)))
        return 0 <= end - step <= every * (c.keep_checkpoints - 1) and (end - step) % every == 0

    def after_step(
        self, result: tuple[float, float, float, int], lr: float, tok_s: float, wait_share: float
    ) -> None:
        """Log, validate and checkpoint on their schedules (validation time counts too)."""
        s, c = self.state, self.cfg
        loss, nll, grad_norm, _ = result
        stats = StepStats(
            s.step,
            s.epoch,
            loss,
            nll,
            lr,
            grad_norm,
            tok_s,
            s.elapsed_s,
            s.skipped_steps,
            wait_share,
        )
        self.observer.on_step(stats)
        if s.step % c.log_every == 0:
            self.log({"type": "train", **vars(stats)})
        tick = time.monotonic()
        validated = s.step % c.eval_every == 0
        if validated and self.dist.is_main:
            self.validate()
        if self.checkpoint_due():
            self.save_step_checkpoint()
        if s.step % c.save_every == 0:
            self.save_resume()
        s.elapsed_s += time.monotonic() - tick
        timed = c.lr_schedule == "linear" and c.max_minutes and not s.planned_steps
        if timed and validated and s.step >= c.warmup_steps:
            self.plan_time_budget()

    def finish(self) -> None:
        """Final validation (unless the last step just had one) and checkpoints."""
        if self.state.step == 0:
            return
        last_validated = self.state.step % self.cfg.eval_every == 0
        if not last_validated and self.stop_signal is None and self.dist.is_main:
            self.validate()
        if not self.step_checkpoint().exists():  # not yet written at this step
            self.save_step_checkpoint()
        self.save_resume()
        if self.tensorboard is not None:
            self.tensorboard.close()
