"""The training loop glue between text-guided networks and MONAI's ignite engines.

* :class:`TextPrepareBatch` passes ``text_ids``/``text_mask`` from the batch to
  the network as keyword arguments (MONAI's ``PrepareBatchExtraInput``), and can
  put images in channels-last memory format.
* :class:`TextGuidedTrainer` is MONAI's ``SupervisedTrainer`` for networks
  whose training forward returns a dict (``pred`` plus auxiliary tensors) and
  losses that return a dict of terms (``loss`` plus named parts). It runs bf16
  autocast without a gradient scaler and clips gradients if asked.
* :func:`loss_terms` and :class:`ProgressBar` feed the stats handlers.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch
from monai.engines import PrepareBatchExtraInput, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler
from monai.utils.enums import CommonKeys as Keys

from transforms.base.describe import configurable

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@configurable
class TextPrepareBatch(PrepareBatchExtraInput):
    """Image and label from the batch, text tensors as keyword arguments of the network.

    Args:
        text_keys: mapping network keyword -> batch key.
        channels_last: convert 4-D images to ``torch.channels_last``.
        plain_tensors: hand the network plain tensors instead of MONAI ``MetaTensor`` s
            (faster, and needed by ``torch.compile``); keep False where a post-transform
            inverts the preprocessing from the image's metadata.
    """

    def __init__(self, text_keys: dict[str, str] | None = None, channels_last: bool = False,
                 plain_tensors: bool = False):
        super().__init__(extra_keys=text_keys or {"text_ids": "text_ids", "text_mask": "text_mask"})
        self.channels_last = channels_last
        self.plain_tensors = plain_tensors

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        missing = [k for k in self.extra_keys.values() if k not in batchdata]
        if missing:
            raise KeyError(f"the batch has no {missing}: add TokenizeTextd to the transforms")
        image, label, args, kwargs_ = super().__call__(batchdata, device, non_blocking, **kwargs)
        ids_key, mask_key = self.extra_keys.get("text_ids"), self.extra_keys.get("text_mask")
        host_ids, host_mask = batchdata.get(ids_key), batchdata.get(mask_key)
        if (isinstance(host_ids, torch.Tensor) and isinstance(host_mask, torch.Tensor) and host_ids.device.type == "cpu"
                and "text_ids" in kwargs_ and "text_mask" in kwargs_):
            # the frozen text encoder's cache looks the texts up by these host rows (no copy back from the GPU)
            from common.networks.text_encoders import remember_host_text

            remember_host_text(kwargs_["text_ids"], kwargs_["text_mask"], host_ids, host_mask)
        if self.plain_tensors:
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
            label = label.as_tensor() if hasattr(label, "as_tensor") else label
        if self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, label, args, kwargs_


@configurable
class MultiTargetPrepareBatch:
    """Image and a dict of targets from the batch, for networks with several outputs (Co-Seg).

    Args:
        targets: target name -> batch key, e.g. ``{"tissue": "tissue", "nuclei": "nuclei", "hv": "hover_nuclei"}``;
            a key missing from the batch raises, naming it.
        image_key: the batch key of the image.
        optional: target names that may be absent (left out of the dict).
    """

    def __init__(self, targets: dict[str, str], image_key: str = "image", optional: tuple[str, ...] = ()):
        self.targets, self.image_key, self.optional = dict(targets), image_key, tuple(optional)

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        def move(x):
            x = x.as_tensor() if hasattr(x, "as_tensor") else x
            return x.to(device=device, non_blocking=non_blocking)

        missing = [key for name, key in self.targets.items() if key not in batchdata and name not in self.optional]
        if missing:
            raise KeyError(f"the batch has no {missing}: check the transforms that make the targets")
        targets = {name: move(batchdata[key]) for name, key in self.targets.items() if key in batchdata}
        return move(batchdata[self.image_key]), targets


def autocast_context(device: torch.device | str, precision: str = "fp32"):
    """``torch.autocast`` for bf16/fp16, a no-op context for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class TextGuidedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for dict outputs and dict losses.

    The network's training forward may return a tensor, a dict holding the
    logits under ``pred``, or a dict of named outputs without ``pred`` (kept whole
    for the post-transforms); the loss function gets that output unchanged and may
    return a tensor or a dict with the total under ``loss``. Every other term of
    that dict is stored as ``loss_<name>`` in ``engine.state.output``, so
    handlers can log it (see :func:`loss_terms`), and ``pred`` is reduced to the
    logits so that post-transforms and train metrics see a tensor.

    Args (beyond ``SupervisedTrainer``'s):
        precision: ``fp32``, ``bf16`` (autocast, no scaler) or ``fp16`` (autocast
            with a gradient scaler; CUDA only).
        grad_clip: clip the gradient norm to this value when set.
        accumulation_steps: step the optimiser every N iterations (and at the end of each epoch), with
            the gradients of those N batches summed and each loss divided by N: the gradient of a batch N
            times larger. The logged loss is the batch's own (undivided).
        finite_check_interval: iterations between host checks of a non-finite loss. Reading the loss on
            the host waits for the GPU to finish the step; with N > 1 the check is kept on the device and
            read every N iterations (and at the epoch's end), and the error names the iterations since the
            last check (the steps in between have used the bad loss: resume from a checkpoint).
    """

    def __init__(self, *args, precision: str = "fp32", grad_clip: float | None = None, accumulation_steps: int = 1,
                 finite_check_interval: int = 1, **kwargs):
        if kwargs.get("amp"):
            raise ValueError("use precision='bf16' or 'fp16' instead of amp=True with TextGuidedTrainer")
        if kwargs.get("compile"):
            raise ValueError("compile the network itself (common.engine.network.prepare_network(..., compile=True))")
        if int(accumulation_steps) < 1:
            raise ValueError(f"accumulation_steps must be at least 1, got {accumulation_steps}")
        if int(finite_check_interval) < 1:
            raise ValueError(f"finite_check_interval must be at least 1, got {finite_check_interval}")
        super().__init__(*args, **kwargs)
        self.accumulation_steps = int(accumulation_steps)
        self.finite_check_interval = int(finite_check_interval)
        self._pending = 0  # batches whose gradients wait for the optimiser step (accumulation)
        self._nonfinite: torch.Tensor | None = None  # device-side flag since the last check
        self._checked_at = 0
        autocast_context("cpu", precision)  # validates the value
        self.precision = precision
        self.grad_clip = grad_clip
        self.grad_scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def _iteration(self, engine: "TextGuidedTrainer", batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args, kwargs = (), {}
        else:
            inputs, targets, args, kwargs = batch
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        engine.network.train()
        # 1-based iteration within the epoch; a cycle of accumulation_steps iterations ends with a step
        within = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        first = (within - 1) % self.accumulation_steps == 0
        last = within % self.accumulation_steps == 0 or within == engine.state.epoch_length
        # the epoch's last cycle may be shorter than accumulation_steps: its losses are divided by its own length
        cycle_start = within - (within - 1) % self.accumulation_steps
        cycle = min(self.accumulation_steps, engine.state.epoch_length - cycle_start + 1)
        if first:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(engine.state.device, self.precision):
            outputs = engine.inferer(inputs, engine.network, *args, **kwargs)
            # a dict with the logits under "pred" (plus auxiliary tensors), or named outputs (Co-Seg) kept whole
            engine.state.output[Keys.PRED] = outputs.get("pred", outputs) if isinstance(outputs, dict) else outputs
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_function(outputs, targets)
        if not isinstance(terms, dict):
            terms = {"loss": terms}
        loss = terms["loss"].mean()
        engine.state.output[Keys.LOSS] = loss
        for name, value in terms.items():
            if name != "loss":
                engine.state.output[f"loss_{name}"] = value.detach().mean()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        self._check_finite(engine, loss, within == engine.state.epoch_length)
        scaled = loss / cycle if cycle > 1 else loss
        if self.grad_scaler is not None:
            self.grad_scaler.scale(scaled).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        else:
            scaled.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self._pending = 0 if first else self._pending
        self._pending += 1
        if last:
            self._step(engine)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _step(self, engine) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(engine.optimizer)
            self._clip(engine)
            self.grad_scaler.step(engine.optimizer)
            self.grad_scaler.update()
        else:
            self._clip(engine)
            engine.optimizer.step()
        self._pending = 0

    def finish_early(self, engine) -> None:
        """Before an epoch is cut short (``TimeBudget``): step the gradients of a partly accumulated cycle (scaled
        as if the cycle had that many batches) and read the deferred non-finite flag, so the last iterations
        are neither lost nor unchecked."""
        if self._pending:
            if self._pending < self.accumulation_steps:
                for group in engine.optimizer.param_groups:
                    for param in group["params"]:
                        if param.grad is not None:
                            param.grad.mul_(self.accumulation_steps / self._pending)
            self._step(engine)
        self._read_finite_flag(engine)

    def _check_finite(self, engine, loss: torch.Tensor, epoch_end: bool) -> None:
        iteration = engine.state.iteration
        if self.finite_check_interval == 1:
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {engine.state.epoch}, iteration {iteration}; "
                                         "lower the learning rate or check the data")
            return
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        if iteration - self._checked_at >= self.finite_check_interval or epoch_end:
            self._read_finite_flag(engine)

    def _read_finite_flag(self, engine) -> None:
        if self._nonfinite is None:
            return
        iteration = engine.state.iteration
        since, self._checked_at = self._checked_at + 1, iteration
        flag, self._nonfinite = self._nonfinite, None
        if bool(flag):
            raise FloatingPointError(
                f"the loss was not finite at one or more of iterations {since}-{iteration} (epoch "
                f"{engine.state.epoch}; checked every {self.finite_check_interval}); lower the learning rate or "
                "check the data, and resume from a checkpoint written before them")

    def _clip(self, engine) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)


def loss_terms(output: Any) -> dict[str, float]:
    """``output_transform`` for stats handlers: ``loss`` and every ``loss_<term>`` as floats."""
    first = output[0] if isinstance(output, (list, tuple)) else output
    return {k: float(v) for k, v in first.items() if k == Keys.LOSS or k.startswith("loss_")}


class PeriodicValidation(ValidationHandler):
    """MONAI's ``ValidationHandler`` (epoch level) that also validates the run's last epoch, whatever
    ``interval`` is: with ``val_interval: 5`` a run of 12 epochs, or one that ``TimeBudget`` ends in epoch 7,
    has its final weights validated (and considered for ``model.pt``) instead of those of epoch 10 or 5."""

    def __init__(self, validator=None, interval: int = 1, exec_at_start: bool = False):
        super().__init__(interval=int(interval), validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        every = self.interval
        engine.add_event_handler(
            Events.EPOCH_COMPLETED(event_filter=lambda e, epoch: epoch % every == 0 or epoch == e.state.max_epochs), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


@configurable
class TimeBudget:
    """Stop training when ``seconds`` of wall-clock time have passed since it started (compilation,
    data loading and validation included): the iteration running then completes, its epoch is closed
    (``EPOCH_COMPLETED`` fires, so validation and the model savers run) and the run ends there. For
    comparisons at a fixed budget ("the best model in 240 s"). ``None``: no budget. Under DDP every
    process runs it and all stop at the same iteration (one all-reduce per iteration while a budget is set)."""

    def __init__(self, seconds: float | None = None):  # "null" / "240" from the command line become None / 240.0
        if seconds is not None and float(seconds) <= 0:
            raise ValueError(f"time_budget_s must be positive (or null), got {seconds}")
        self.seconds = None if seconds is None else float(seconds)
        self.started = None
        self.stopped_at: tuple[int, int] | None = None

    def attach(self, engine) -> None:
        if self.seconds is None:
            return
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _start(self, engine) -> None:
        self.started = time.perf_counter()

    def _check(self, engine) -> None:
        if self.stopped_at is not None:
            return
        over = time.perf_counter() - self.started >= self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process stops at the same iteration, when the first of them runs out of time
            flag = torch.tensor([float(over)], device=engine.state.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item())
        if over:
            self.stopped_at = (engine.state.epoch, engine.state.iteration)
            engine.logger.info("time budget of %.0f s reached at epoch %d, iteration %d: this epoch is the last",
                               self.seconds, *self.stopped_at)
            if hasattr(engine, "finish_early"):
                engine.finish_early(engine)
            engine.state.max_epochs = engine.state.epoch
            engine.terminate_epoch()


class ProgressBar:
    """ignite's tqdm progress bar as a MONAI-style handler (``attach(engine)``)."""

    def __init__(self, output_transform: Callable | None = loss_terms, desc: str | None = None, persist: bool = False):
        from ignite.handlers import ProgressBar as _IgniteProgressBar

        self.bar = _IgniteProgressBar(persist=persist, desc=desc)
        self.output_transform = output_transform

    def attach(self, engine) -> None:
        self.bar.attach(engine, output_transform=self.output_transform)

