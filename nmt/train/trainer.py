"""The training loop of one run: :class:`Trainer` owns the model, optimizer and data and
runs one flat, ordered loop (:meth:`Trainer.run`: stop? → set LR → micro-steps under
autocast → unscale, clip, step → log → validate → checkpoint).

The schedule is in :mod:`nmt.train.schedule`, the stopping and time-budget methods in
:mod:`nmt.train.budget`, the checkpoint methods in :mod:`nmt.train.checkpointing`, the resume
checkpoint and its counters in :mod:`nmt.train.resume`, validation in
:mod:`nmt.train.validation`, the records and the observer that receives them in
:mod:`nmt.train.log`; the run folder is prepared by :mod:`nmt.train.run`.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from nmt.config import ModelConfig, TrainConfig
from nmt.data.batching import RankSteps
from nmt.data.multilingual import ValidSet
from nmt.data.parallel import Batch, Corpus, ParallelData
from nmt.data.tokenizer import Tokenizer
from nmt.device import pick_dtype, resolve_device, set_tf32
from nmt.errors import TrainingError
from nmt.model import checkpoint as ckpt
from nmt.model.onednn import use_onednn_training
from nmt.model.transformer import Transformer
from nmt.train.budget import TimeBudget
from nmt.train.checkpointing import RunCheckpoints
from nmt.train.distributed import DistEnv, sum_across
from nmt.train.feed import UpdateFeed
from nmt.train.log import RunLog, RunStart, StepStats, TrainObserver, ValidResult
from nmt.train.loss import LossModule
from nmt.train.resume import TrainState
from nmt.train.schedule import checkpoint_due, learning_rate, schedule_notes
from nmt.train.validation import bleu_chrf, search_output, valid_loss

MAX_BAD_STEPS = 20  # consecutive non-finite losses before training gives up
MIN_LOSS_SCALE = 1e-4  # fp16: a loss scale below this means the loss is exploding (fairseq)


class Trainer(TimeBudget, RunCheckpoints):
    """Owns the model, optimizer and data of one run and runs the loop.

    Args:
        out_dir: the run folder (already holding ``config.json`` and the SentencePiece model(s)).
        model_cfg / train_cfg: the resolved configuration.
        tokenizer: the run's SentencePiece model.
        train_data: the training pairs, in memory or memory-mapped (:mod:`nmt.data.store`).
        valid_data: encoded valid pairs; valid_text: valid source and reference lines.
        observer: progress receiver (on the main process; the others get a silent one).
        dist_env: this process's place in a torchrun job.
        valid_sets: a multilingual run's validation sets, one per direction
            (:mod:`nmt.data.multilingual`), instead of ``valid_data``/``valid_text``: the loss is
            over all of them, BLEU and chrF are each direction's and their mean, and the
            best checkpoint follows the mean BLEU or chrF (or the loss over all).
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
        valid_sets: list[ValidSet] | None = None,
    ):
        self.dist = dist_env or DistEnv()
        self.observer = observer if observer and self.dist.is_main else TrainObserver()
        # From here on, accum is this job's: update_tokens turned into batches per process.
        self.update_tokens = train_cfg.update_tokens
        train_cfg = replace(train_cfg, accum=train_cfg.update_accum(self.dist.world_size))
        self.out_dir, self.cfg, self.tokenizer = out_dir, train_cfg, tokenizer
        self.train_data = train_data
        direction = f"{train_cfg.src_lang}-{train_cfg.tgt_lang}"
        self.valid_sets = valid_sets or [ValidSet(direction, tokenizer, valid_data, *valid_text)]
        self.device = resolve_device(train_cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp_dtype = pick_dtype(train_cfg, self.device)
        set_tf32(self.device, train_cfg.tf32)
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
        self.loop_start = (0.0, 0.0)  # (clock, state.elapsed_s) when run() began its loop
        self.stop_signal: int | None = None
        self.run_log = RunLog(out_dir, train_cfg.tensorboard, enabled=self.dist.is_main)
        self.feed = UpdateFeed(train_data, train_cfg, self.dist, self.device)
        self.corpus_fingerprint: str | None = None  # see data_order()
        self.steps_per_epoch = self.feed.steps_per_epoch
        if self.update_tokens:
            per_update = self.dist.world_size * train_cfg.accum * train_cfg.batch_tokens
            self.observer.on_message(
                f"update_tokens={self.update_tokens:,}: accum {train_cfg.accum} on each of "
                f"{self.dist.world_size} process(es), {per_update:,} padded tokens per update"
            )

    def epoch_steps(self, epoch: int) -> RankSteps:
        """This rank's updates of ``epoch`` (:meth:`nmt.train.feed.UpdateFeed.steps`)."""
        return self.feed.steps(epoch)

    def collate_step(self, step_batches: list[list[int]]) -> list[Batch]:
        """The padded batches of one update (:meth:`nmt.train.feed.UpdateFeed.collate`)."""
        return self.feed.collate(step_batches)

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> str:
        """Train until a budget runs out; returns the reason training stopped.

        Raises:
            TrainingError: the loss stayed non-finite for ``MAX_BAD_STEPS`` updates in a row
                (the last good state is saved first).
        """
        s, c = self.state, self.cfg
        self.model.train()
        for note in schedule_notes(c, self.steps_per_epoch):
            self.observer.on_message(note)
        self.observer.on_start(
            RunStart(
                s.step, s.elapsed_s, c.max_steps, c.max_epochs, c.max_minutes, self.steps_per_epoch
            )
        )
        self.run_log.write(self.precision_record())
        bad_in_row = window_tokens = 0
        window_start, window_wait = time.monotonic(), 0.0
        reason: str | None = None
        # The budget is wall-clock time from here: waits for batches, the stop check's
        # all-reduce, skipped updates, validation and checkpoints all count.
        self.loop_start = (self.clock(), s.elapsed_s)
        # (plan_minutes is 0 in a resume.pt of an nmt before re-planning: its plan stands
        # until the next validation re-plans)
        changed = s.plan_minutes and s.plan_minutes != c.max_minutes
        if c.lr_schedule == "linear" and s.planned_steps and changed:
            self.replan_changed_budget()
        for batches in self.feed.updates(self.state):
            self.count_time()
            reason, tokens = self.check_stop(sum(b.n_tgt_tokens for b in batches))
            if reason is not None:
                s.batch_in_epoch -= 1  # not trained: a resumed run starts with it
                break
            lr = learning_rate(c, s.step + 1, self.budget_steps(), self.decay_anchor())
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            result = self.train_step(batches, tokens)
            if result is None:
                bad_in_row = self.skipped_update(bad_in_row)
                continue
            bad_in_row, s.step = 0, s.step + 1
            self.count_time()
            # log
            window_tokens += tokens
            window_s = max(time.monotonic() - window_start, 1e-9)
            loss, nll, grad_norm, _ = result
            stats = StepStats(
                s.step, s.epoch, loss, nll, lr, grad_norm, window_tokens / window_s,
                s.elapsed_s, s.skipped_steps, (self.feed.wait_s - window_wait) / window_s,
            )  # fmt: skip
            self.observer.on_step(stats)
            if s.step % c.log_every == 0:
                self.run_log.write({"type": "train", **vars(stats)})
                window_tokens, window_start = 0, time.monotonic()
                window_wait = self.feed.wait_s
            # validate, (re-)plan a time budget, then checkpoint: resume.pt holds the plan
            validated = s.step % c.eval_every == 0
            if validated:
                self.validate()
            timed = c.lr_schedule == "linear" and c.max_minutes
            if timed and validated and s.step >= c.warmup_steps:
                self.count_time()
                self.plan_time_budget()
            if checkpoint_due(c, s.step, self.budget_steps()):
                self.save_step_checkpoint()
            if s.step % c.save_every == 0:
                self.count_time()
                self.save_resume()
        self.finish()
        assert reason is not None  # updates() never ends: only a stop reason leaves the loop
        return reason

    def train_step(
        self, step_batches: list[Batch], global_tokens: int = 0
    ) -> tuple[float, float, float, int] | None:
        """One update from ``accum`` batches: forward and backward each (gradients
        accumulated), clip, step.

        The gradient is the per-token mean over the global batch: every process's summed
        loss is divided by ``global_tokens``, the target tokens of this update summed over
        all processes (0 = this process's own; the two are equal without DDP), and multiplied
        by the number of processes, which DDP's averaging divides out again (as fairseq
        all-reduces the sample size). A mean of per-process means would weigh a token of a
        short batch more than one of a long batch.

        With fp16 the loss is scaled before backward and the gradients unscaled before
        clipping (:class:`torch.amp.GradScaler`); an overflow skips the update and halves the
        scale.

        Returns:
            (loss, nll, grad_norm, target tokens) of the update over all processes: the
            losses are per token, the summed losses of every process (all-reduced) over
            ``global_tokens``, not this process's share; ``None`` when the gradient was not
            finite and the update was skipped.
        """
        batches = [b.to(self.device) for b in step_batches]
        n = sum(b.n_tgt_tokens for b in batches)
        scale = self.dist.world_size / (global_tokens or n)
        total_loss = total_nll = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches):
            # DDP averages gradients across ranks on the last micro-batch's backward only.
            last = i == len(batches) - 1
            with self.no_sync() if not last else nullcontext():
                with self.autocast():
                    loss, nll = self.forward(batch.src, batch.tgt_in, batch.tgt_out)
                self.scaler.scale(loss * scale).backward()
            total_loss, total_nll = total_loss + float(loss.detach()), total_nll + float(nll)
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.clip_norm or math.inf  # 0: no clipping, but the norm is logged
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        # A NaN/inf loss on any rank makes the averaged gradient non-finite on every rank,
        # so all ranks skip the same update.
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # fp16: halve the loss scale
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.dist.enabled:  # what is logged is the global batch's mean, not this share's
            total_loss, total_nll = sum_across([total_loss, total_nll], self.dist, self.device)
            n = global_tokens or int(sum_across([float(n)], self.dist, self.device)[0])
        return total_loss / n, total_nll / n, grad_norm, n

    def autocast(self):  # type: ignore[no-untyped-def]
        """bf16/fp16 autocast when enabled (see :func:`~nmt.device.pick_dtype`), else a
        no-op context."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def precision_record(self) -> dict[str, str | int | bool]:
        """``metrics.jsonl``'s record of the dtypes a run computes in: training's autocast,
        validation's, and whether CUDA may use TF32 for float32 products."""
        train_dtype = str(self.amp_dtype or torch.float32).removeprefix("torch.")
        cuda = self.device.type == "cuda"
        return {
            "type": "precision",
            "step": self.state.step,
            "train_dtype": train_dtype,
            "valid_dtype": train_dtype if self.cfg.valid_autocast else "float32",
            "tf32": cuda and torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": cuda and torch.backends.cudnn.allow_tf32,
        }

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
        if all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self.save_resume()
            raise TrainingError(f"{problem}; last good state saved in {self.out_dir}; {hint}")
        # An update with a finite gradient can still have made the weights inf/NaN (a huge
        # learning rate): saving them would replace the last good resume checkpoint.
        raise TrainingError(
            f"{problem}; the weights are no longer finite, so {self.out_dir} keeps its last "
            f"resume checkpoint (from before); {hint}"
        )

    # --- validation ---------------------------------------------------------------------
    def validate(self) -> ValidResult:
        """Loss, perplexity, BLEU and chrF on the valid set (under the training dtype's
        autocast unless ``valid_autocast`` is off); keeps ``model.safetensors`` as the best by
        ``patience_metric`` and updates the early-stopping counters. Every process takes a
        share (:mod:`nmt.train.validation`) and all reach the same scores and counters; all
        must call this."""
        start = time.monotonic()
        c = self.cfg
        loss = nll = 0.0
        tokens = 0
        directions: dict[str, dict[str, float]] = {}
        for v in self.valid_sets:
            with self.autocast() if c.valid_autocast else nullcontext():  # as training runs
                sums = valid_loss(
                    self.model, v.data, c.batch_tokens, c.label_smoothing, self.device, self.dist
                )
                hyps = search_output(
                    self.model, v.tokenizer, v.src, c.valid_beam_size, c.batch_tokens, self.dist
                )
            loss, nll, tokens = loss + sums[0], nll + sums[1], tokens + sums[2]
            scores = bleu_chrf(hyps, v.refs)
            directions[v.name] = {"bleu": scores["bleu"].score, "chrf": scores["chrf"].score}
        self.model.train()
        loss, nll = loss / max(tokens, 1), nll / max(tokens, 1)
        bleu = sum(d["bleu"] for d in directions.values()) / len(directions)
        chrf = sum(d["chrf"] for d in directions.values()) / len(directions)
        self.state.best_bleu = max(self.state.best_bleu, bleu)
        followed = {"bleu": bleu, "chrf": chrf, "loss": -loss}[c.patience_metric]
        best = followed > self.state.best_metric  # higher is better: the loss is negated
        if best:
            self.state.best_metric, self.state.bad_validations = followed, 0
            if self.dist.is_main:
                ckpt.save_weights(self.out_dir / ckpt.WEIGHTS_FILE, self.model, self.state.step)
        else:
            self.state.bad_validations += 1
        result = ValidResult(
            self.state.step,
            loss,
            math.exp(min(nll, 50.0)),
            bleu,
            chrf,
            scores["bleu"].signature,
            best,
            time.monotonic() - start,
            directions if len(directions) > 1 else {},
        )
        self.run_log.write({"type": "valid", **vars(result)})
        self.observer.on_validate(result)
        return result

    def finish(self) -> None:
        """Final validation (unless the last step just had one) and checkpoints."""
        if self.state.step == 0:
            return
        last_validated = self.state.step % self.cfg.eval_every == 0
        # A signal may have reached only some processes: they agree before validating.
        signalled = sum_across([float(self.stop_signal is not None)], self.dist, self.device)
        if not last_validated and not signalled[0]:
            self.validate()
        # The end of a budget is a step checkpoint; a signal's stop is not (resume.pt holds
        # it), so that a resumed run keeps the uninterrupted run's checkpoints to average.
        if not signalled[0] and not self.step_checkpoint().exists():
            self.save_step_checkpoint()
        self.save_resume()
        self.run_log.close()
