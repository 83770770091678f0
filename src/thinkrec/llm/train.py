"""Training the LLM re-ranker: alignment and SFT (transformers' Trainer with per-token loss weights) and DAPO
(TRL's GRPOTrainer with dynamic sampling and ranking-constrained rollouts).

SFT weighs reasoning tokens by λ_r and output tokens (the JSON scaffold and the ranking) by λ_o, λ_r < λ_o:
``L = Σ_t λ(t)·CE_t / #tokens``. Only completion positions get logits (``logits_to_keep``), which on a 262k-token
vocabulary is most of the compute saved.

Under a multi-process launch (``accelerate launch`` / ``torchrun``) both trainers run data-parallel with the global
batch the settings name: SFT splits each ``batch_size`` batch over the processes (accelerate's ``split_batches``; the
same examples in the same order as one process, ``#tokens`` counted over all of them), DAPO gives each process its
share of the ``prompts_per_step × num_generations`` completions. Both must divide by the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from thinkrec.llm import parallel
from thinkrec.llm.answer import AnswerTokens, constrained_generate, prompt_candidates
from thinkrec.llm.rewards import rerank_reward
from thinkrec.utils.config import spec


@dataclass
class SFTSettings:
    steps: int = spec(100, ge=1)
    batch_size: int = spec(4, ge=1)
    grad_accum: int = spec(1, ge=1)
    lr: float = spec(2e-4, gt=0.0)
    warmup_ratio: float = spec(0.05, ge=0.0, lt=1.0)
    max_len: int = spec(512, ge=1)
    reasoning_weight: float = spec(0.5, ge=0.0)  # λ_r
    output_weight: float = spec(1.0, ge=0.0)  # λ_o
    seed: int = 0


@dataclass
class DAPOSettings:
    steps: int = spec(10, ge=1)
    prompts_per_step: int = spec(2, ge=1)
    num_generations: int = spec(4, ge=2)  # G ≥ 2: advantages are relative within a prompt's group
    lr: float = spec(5e-5, gt=0.0)
    temperature: float = spec(1.0, gt=0.0)
    epsilon: float = spec(0.2, ge=0.0)
    epsilon_high: float = spec(0.28, ge=0.0)
    format_weight: float = spec(0.1, ge=0.0)
    max_reasoning_tokens: int = spec(48, ge=1)
    seed: int = 0

    def _checks(self) -> list[tuple[str, str]]:
        if self.epsilon_high < self.epsilon:
            return [("epsilon_high", f"must be ≥ epsilon {self.epsilon} (DAPO's clip-higher; got {self.epsilon_high})")]
        return []


# ------------------------------------------------------------------------------------------------ SFT data
def tokenize_example(tokenizer: Any, prompt: str, completion_ids: Sequence[int], weights: Sequence[float],
                     max_len: int) -> dict[str, list]:
    """Prompt (with the tokenizer's BOS) + completion; the prompt is cut from the left if the pair is too long."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    room = max_len - len(completion_ids)
    if room < 1:
        raise ValueError(f"completion of {len(completion_ids)} tokens does not fit max_len {max_len}")
    p = p[-room:]
    return {"input_ids": list(p) + list(completion_ids), "labels": [-100] * len(p) + list(completion_ids),
            "loss_weights": [0.0] * len(p) + [float(w) for w in weights]}


def alignment_features(tokenizer: Any, examples: Sequence[dict[str, str]], max_len: int) -> list[dict[str, list]]:
    eos = int(tokenizer.eos_token_id)
    out = []
    for ex in examples:
        c = tokenizer(ex["completion"], add_special_tokens=False)["input_ids"] + [eos]
        out.append(tokenize_example(tokenizer, ex["prompt"], c, [1.0] * len(c), max_len))
    return out


def sft_features(tokens: AnswerTokens, traces: Sequence[dict], prompts: dict[str, str], sids: dict[str, list],
                 settings: SFTSettings) -> list[dict[str, list]]:
    """One example per accepted trace: the student's prompt (no hint) → the trace's canonical answer."""
    out = []
    for tr in traces:
        key = tr["request_id"].split(":", 1)[1]
        ranking = [sids[key][i] for i in tr["order"]]
        ids, is_reasoning = tokens.answer_ids(tr.get("reasoning", ""), ranking)
        w = [settings.reasoning_weight if r else settings.output_weight for r in is_reasoning]
        out.append(tokenize_example(tokens.tokenizer, prompts[key], ids, w, settings.max_len))
    return out


class LeftPadCollator:
    """Left padding, so every sequence ends at the last position and completions sit in the last columns."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list]]) -> dict[str, torch.Tensor]:
        T = max(len(b["input_ids"]) for b in batch)
        out = {"input_ids": torch.full((len(batch), T), self.pad_id, dtype=torch.long),
               "attention_mask": torch.zeros(len(batch), T, dtype=torch.long),
               "labels": torch.full((len(batch), T), -100, dtype=torch.long),
               "loss_weights": torch.zeros(len(batch), T)}
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            out["input_ids"][i, T - n:] = torch.tensor(b["input_ids"])
            out["attention_mask"][i, T - n:] = 1
            out["labels"][i, T - n:] = torch.tensor(b["labels"])
            out["loss_weights"][i, T - n:] = torch.tensor(b["loss_weights"])
        out["position_ids"] = (out["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return out


def weighted_lm_loss(model: Any, inputs: dict[str, torch.Tensor], n_tokens: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """``Σ_t λ(t)·CE_t / n_tokens`` over the batch's labelled tokens; ``n_tokens`` defaults to their number (the
    Trainer passes the whole optimizer step's: every accumulation micro-batch, every process)."""
    labels, weights = inputs["labels"], inputs["loss_weights"]
    has_label = (labels != -100).any(0)
    keep = labels.shape[1] - int(has_label.nonzero()[0, 0]) if has_label.any() else 1
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                position_ids=inputs["position_ids"], logits_to_keep=keep + 1)
    logits = out.logits[:, :-1].float()
    tgt, w = labels[:, -keep:], weights[:, -keep:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="none")
    n = (tgt != -100).sum() if n_tokens is None else n_tokens
    return (ce * w.reshape(-1)).sum() / n.clamp(min=1)


def checkpointing(checkpoint_dir: str | Path | None, steps: int) -> tuple[dict[str, Any], str | None]:
    """Trainer arguments that checkpoint into ``checkpoint_dir`` (about every quarter of the run, the last one kept)
    and the checkpoint to resume from, if a killed run left one. transformers writes the adapter as safetensors and
    reads optimizer, scheduler and RNG states back with ``torch.load(weights_only=True)`` (tensors only, no code)."""
    if checkpoint_dir is None:
        return {"save_strategy": "no"}, None
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(checkpoint_dir)
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    return {"output_dir": str(folder), "save_strategy": "steps", "save_steps": max(1, steps // 4),
            "save_total_limit": 1}, last


def train_lm(model: Any, tokenizer: Any, features: list[dict[str, list]], settings: SFTSettings, out_dir: str | Path,
             device: str = "cpu", bf16: bool = False, log: Any = print,
             checkpoint_dir: str | Path | None = None, curve: Callable[[int], dict[str, float]] | None = None,
             curve_every: int = 0) -> list[dict]:
    """Weighted next-token training with transformers' Trainer (AdamW, warm-up, cosine decay). Returns the log.
    With ``checkpoint_dir`` a killed run resumes from the Trainer's last checkpoint there (same data order)."""
    from datasets import Dataset as HFDataset
    from transformers import Trainer, TrainingArguments

    class WeightedTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
            loss = weighted_lm_loss(model, inputs, num_items_in_batch)
            if num_items_in_batch is not None:  # the step's token count over every process: DDP's mean undone
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    if not features:
        raise ValueError("no training examples (did every trace get rejected?)")
    size = parallel.world()[1]
    if settings.batch_size % size:
        raise ValueError(f"batch_size {settings.batch_size} does not split over {size} processes")
    saving, resume = checkpointing(checkpoint_dir, settings.steps)
    args = TrainingArguments(**{
        "output_dir": str(out_dir), "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum, "learning_rate": settings.lr, "max_steps": settings.steps,
        "lr_scheduler_type": "cosine", "warmup_steps": max(1, round(settings.warmup_ratio * settings.steps)),
        "logging_steps": max(1, settings.steps // 10), "report_to": [], "seed": settings.seed,
        "remove_unused_columns": False, "disable_tqdm": True, "use_cpu": device == "cpu", "dataloader_num_workers": 0,
        "bf16": bf16, "accelerator_config": {"split_batches": True}, **saving,
    })
    pin_device(args, device)
    trainer = WeightedTrainer(model=model, args=args, train_dataset=HFDataset.from_list(list(features)),
                              data_collator=LeftPadCollator(int(tokenizer.pad_token_id)))
    _route_logs(trainer, log)
    _watch_steps(trainer, "llm sft")
    _add_curve(trainer, curve, curve_every)
    if resume:
        log(f"    resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    return [dict(r) for r in trainer.state.log_history]


def _watch_steps(trainer: Any, stage: str) -> None:
    """Each optimizer step: a non-finite loss stops the stage (naming it); the resume tests' kill point."""
    from transformers.trainer_callback import TrainerCallback

    from thinkrec.utils.faults import NumericalError, training_step

    class Watch(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise NumericalError(stage, state.global_step, "loss", f"loss {loss}")

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            training_step()

    trainer.add_callback(Watch())


def pin_device(args: Any, device: str) -> None:
    """Make the HF Trainer train on ``device`` (the stage's ``llm.device``) and nothing else: left to itself it picks
    ``cuda:0`` (or ``mps``) whatever the model was loaded on, and wraps the model in DataParallel over every
    visible GPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
        torch.cuda.set_device(dev)  # accelerate places batches on "cuda", the current device
    args.__dict__["_setup_devices"] = dev  # TrainingArguments.device reads this cached property
    args._n_gpu = int(dev.type != "cpu")  # one device: no DataParallel
    if args.device != dev or args.n_gpu != int(dev.type != "cpu"):
        raise RuntimeError(f"could not pin the Trainer to {device} (it would use {args.device}, {args.n_gpu} GPUs)")


def _add_curve(trainer: Any, curve: Callable[[int], dict[str, float]] | None, every: int) -> None:
    """Every ``every`` optimizer steps (and at the last) ``curve(step)`` measures the model (validation N@5 of its
    answers); the point joins the Trainer's log history, so it is in the returned log and in resume checkpoints."""
    if curve is None or every <= 0:
        return
    from transformers.trainer_callback import TrainerCallback

    class Curve(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
            if state.global_step % every and state.global_step != state.max_steps:
                return
            was_training = model.training if model is not None else True
            point = curve(state.global_step)
            if model is not None and was_training:
                model.train()
            state.log_history.append({"step": state.global_step, **{f"curve/{k}": v for k, v in point.items()}})

    trainer.add_callback(Curve())


def _add_drift(trainer: Any, model: Any) -> None:
    """DAPO has no KL term (``beta`` 0), so nothing holds the policy near its SFT start; log how far it went instead:
    ``drift`` = ‖θ − θ₀‖ / ‖θ₀‖ over the trainable parameters (LoRA, SID rows) at every logged step."""
    from transformers.trainer_callback import TrainerCallback

    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    norm0 = torch.sqrt(sum(p.double().square().sum() for p in start.values())).item() or 1.0

    class Drift(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
            if not logs or "reward" not in logs:
                return
            params = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
            d = sum((params[n].detach().double() - p.double()).square().sum() for n, p in start.items() if n in params)
            logs["drift"] = float(torch.sqrt(torch.as_tensor(d)).item() / norm0)
            if state.log_history:  # the Trainer appended this step's record (a copy of ``logs``) just before
                state.log_history[-1]["drift"] = logs["drift"]

    trainer.add_callback(Drift())


def _route_logs(trainer: Any, log: Any) -> None:
    """Training logs go to the stage's logger (run log / console) instead of transformers' raw dict printer."""
    from transformers.trainer_callback import PrinterCallback, TrainerCallback

    keys = ("loss", "reward", "reward_std", "dynamic_sampling/kept_group_frac", "grad_norm", "learning_rate", "drift")

    class Forward(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
            if logs and any(k in logs for k in keys):
                parts = ", ".join(f"{k.split('/')[-1]} {float(logs[k]):.4g}" for k in keys if k in logs)
                log(f"    step {state.global_step}/{state.max_steps}: {parts}")

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Forward())


# ------------------------------------------------------------------------------------------------ DAPO
def reward_function(format_weight: float):
    """TRL reward: the candidates are read back from the prompt, ``target`` is a dataset column."""

    def rank_and_format(prompts: list[str], completions: list[str], target: list[int], **_: Any) -> list[float]:
        return [rerank_reward(c, prompt_candidates(p), int(t), format_weight)
                for p, c, t in zip(prompts, completions, target, strict=True)]

    return rank_and_format


def drop_uninformative_groups(advantages: torch.Tensor, completion_mask: torch.Tensor, group_size: int,
                              rows: slice | None = None) -> tuple[torch.Tensor, float]:
    """DAPO's dynamic sampling as a mask: rows of groups (``group_size`` consecutive completions of one prompt) whose
    advantages are all zero — every reward equal — leave the loss. Returns the new mask and the share of kept groups.
    With several processes a group may span them: ``advantages`` are then every process's, and ``rows`` says which of
    them ``completion_mask``'s rows are."""
    if advantages.numel() % group_size:
        raise ValueError(f"{advantages.numel()} completions do not split into groups of {group_size}")
    informative = (advantages.view(-1, group_size).abs() > 1e-6).any(1)
    keep = informative.repeat_interleave(group_size)[rows if rows is not None else slice(None)]
    return completion_mask * keep[:, None].to(completion_mask.dtype), float(informative.float().mean())


def dapo_trainer_class():
    from trl import GRPOTrainer

    class DynamicSamplingGRPOTrainer(GRPOTrainer):
        """GRPOTrainer + DAPO's dynamic sampling: groups whose G rewards are all equal carry no advantage; they are
        dropped from the loss *and* from the token count that normalises it (instead of diluting it)."""

        def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
            out = super()._generate_and_score_completions(inputs)
            n, at = len(out["advantages"]), self.accelerator.process_index  # this process's rows of the generation
            out["completion_mask"], kept = drop_uninformative_groups(
                self.accelerator.gather(out["advantages"]), out["completion_mask"], self.num_generations,
                slice(at * n, (at + 1) * n))
            # the token count that normalises the loss, over every process (as TRL counts it)
            out["num_items_in_batch"] = self.accelerator.gather(out["completion_mask"].sum()).sum().clamp(min=1)
            self._metrics["train"]["dynamic_sampling/kept_group_frac"].append(kept)
            return out

    return DynamicSamplingGRPOTrainer


def train_dapo(model: Any, tokenizer: Any, prompts: Sequence[str], targets: Sequence[int], settings: DAPOSettings,
               out_dir: str | Path, max_completion_length: int, device: str = "cpu", bf16: bool = False,
               log: Any = print, checkpoint_dir: str | Path | None = None,
               curve: Callable[[int], dict[str, float]] | None = None, curve_every: int = 0) -> list[dict]:
    """DAPO (token-level loss, clip-higher, overlong masking, no KL) on re-ranking prompts with rank and format
    rewards; rollouts are constrained to permutations of each prompt's candidates.

    With ``checkpoint_dir`` a killed run resumes from the last checkpoint there. One optimizer step per generation
    (``steps_per_generation`` = gradient accumulation = 1), so every checkpoint falls on a generation boundary:
    no buffered completions are lost or regenerated differently on resume."""
    from datasets import Dataset as HFDataset
    from trl import GRPOConfig

    G = settings.num_generations
    size = parallel.world()[1]
    if (G * settings.prompts_per_step) % size:
        raise ValueError(f"{settings.prompts_per_step} prompts × {G} generations per step do not split over {size} "
                         "processes")
    saving, resume = checkpointing(checkpoint_dir, settings.steps)
    args = GRPOConfig(**{
        "output_dir": str(out_dir), "loss_type": "dapo", "epsilon": settings.epsilon,
        "epsilon_high": settings.epsilon_high, "mask_truncated_completions": True, "beta": 0.0, "num_generations": G,
        "per_device_train_batch_size": G * settings.prompts_per_step // size, "gradient_accumulation_steps": 1,
        "steps_per_generation": 1, "max_completion_length": max_completion_length, "max_steps": settings.steps,
        "learning_rate": settings.lr, "temperature": settings.temperature, "top_k": 0, "top_p": 1.0,
        "logging_steps": 1, "report_to": [], "seed": settings.seed, "use_cpu": device == "cpu", "disable_tqdm": True,
        "shuffle_dataset": True, "scale_rewards": "group", "bf16": bf16, **saving,
    })
    pin_device(args, device)
    data = HFDataset.from_dict({"prompt": list(prompts), "target": [int(t) for t in targets]})
    trainer = dapo_trainer_class()(model=model, reward_funcs=[reward_function(settings.format_weight)], args=args,
                                   train_dataset=data, processing_class=tokenizer)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    unwrapped.generate = constrained_generate(unwrapped, AnswerTokens(tokenizer), settings.max_reasoning_tokens)
    _add_drift(trainer, model)  # before the log router, so the routed line shows it
    _route_logs(trainer, log)
    _watch_steps(trainer, "llm dapo")
    _add_curve(trainer, curve, curve_every)
    if resume:
        log(f"    resuming from {resume}")
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        del unwrapped.generate  # back to the class method
    return [dict(r) for r in trainer.state.log_history]
