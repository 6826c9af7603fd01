"""TRL's SFTTrainer without the GPU synchronisations it makes on every micro-batch.

Stock Trainer + SFTTrainer read three things back from the GPU with `.item()` on every micro-batch: the input-token
count (`include_num_input_tokens_seen`, before the forward) and the entropy / token-accuracy / token-count metrics
(after the forward). Each read makes the CPU wait until the GPU has run everything queued, and the GPU then idles
while Python prepares the next work: on an H100 that was ~2 % of a QLoRA step for the token count and ~1 % for the
metrics (benchmarks/RESULTS.md, run 9). Here the same numbers are kept on the GPU (or, for the token count, on the
CPU where it is a shape) and read back once per logging step, when they are logged anyway; the values logged are the
same as TRL's (tests/finetune/test_trainer.py checks them against a stock SFTTrainer).

Only the plain training loss takes this path (negative log-likelihood or DFT from TRL's fused LM head, no custom
loss function, label smoothing, MoE aux loss or sequence parallelism); anything else, and evaluation, is TRL's own
compute_loss.
"""
from __future__ import annotations

import torch
from trl import SFTTrainer


class SyncFreeSFTTrainer(SFTTrainer):
    """SFTTrainer that logs the same metrics but reads them from the GPU once per log instead of per micro-batch."""

    # the methods that differ from TRL's / the Trainer's (rebinding these to SFTTrainer's gives the stock behaviour)
    DEFERRING_METHODS = ("compute_loss", "_track_num_input_tokens", "log", "_save_checkpoint")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending_metrics: list[torch.Tensor] = []     # per micro-batch: [valid, entropy sum, top-1 hits, tokens]
        self._pending_input_tokens: list = []               # per micro-batch: int (a shape) or a 0-d GPU tensor

    # ---------------------------------------------------------------------------------------------- training loss
    def _plain_loss(self) -> bool:
        sp = getattr(self.accelerator, "parallelism_config", None)
        return (self.compute_loss_func is None and self.label_smoother is None and not self.aux_loss_enabled
                and self.args.loss_type in ("nll", "dft") and not (sp is not None and getattr(sp, "sp_enabled", False)))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not model.training or not self._plain_loss():
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        per_token_loss = -outputs.log_probs  # zero on ignored positions
        if self.args.loss_type == "dft":
            per_token_loss = per_token_loss * outputs.log_probs.exp().detach()
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        with torch.no_grad():
            mask = outputs.label_mask
            if "attention_mask" in inputs:
                tokens = inputs["attention_mask"].sum().float()
            else:
                tokens = mask.new_full((), float(inputs["position_ids"].size(1)), dtype=torch.float32)
            self._pending_metrics.append(torch.stack([mask.sum().float(), outputs.entropy.detach().sum().float(),
                                                      outputs.is_top1.sum().float(), tokens]))
        return loss

    def _track_num_input_tokens(self, inputs):
        if self.args.include_num_input_tokens_seen == "no":
            return
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs:
            return super()._track_num_input_tokens(inputs)
        if self.args.include_num_input_tokens_seen != "non_padding":
            self._pending_input_tokens.append(inputs[name].numel())
        elif "attention_mask" in inputs:
            self._pending_input_tokens.append(inputs["attention_mask"].sum())
        elif getattr(self.processing_class, "pad_token_id", None) is not None:
            self._pending_input_tokens.append((inputs[name] != self.processing_class.pad_token_id).sum())
        else:
            self._pending_input_tokens.append(inputs[name].numel())

    # ---------------------------------------------------------------------------------------------- read back
    def _flush_pending(self) -> None:
        """Move what the micro-batches since the last flush left on the GPU into TRL's and the Trainer's counters
        (one read back; a collective on every rank under DDP, which calls this at the same points)."""
        world = self.accelerator.num_processes
        if self._pending_input_tokens:
            local = torch.as_tensor(sum(self._pending_input_tokens), device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(local.reshape(1)).sum().item())
            self._pending_input_tokens.clear()
        if self._pending_metrics:
            stats = self.accelerator.gather(torch.stack(self._pending_metrics))       # (world * n, 4)
            stats = stats.view(world, -1, 4).sum(0).tolist()                          # per micro-batch, all ranks
            train = self._metrics["train"]
            for valid, entropy, hits, tokens in stats:
                train["entropy"].append(entropy / valid if valid > 0 else 0.0)
                train["mean_token_accuracy"].append(hits / valid if valid > 0 else 0.0)
                self._total_train_tokens += int(round(tokens)) // self._tp_size
            train["num_tokens"] = [self._total_train_tokens]
            self._pending_metrics.clear()

    def log(self, logs, start_time=None):
        self._flush_pending()
        return super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        self._flush_pending()  # the saved trainer state carries num_input_tokens_seen
        return super()._save_checkpoint(model, trial)
