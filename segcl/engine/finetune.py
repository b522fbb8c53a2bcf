"""``segcl finetune``: supervised training of a segmentation model on a labelled subset (the
loss of ``cfg.loss``: :mod:`segcl.engine.supervised`), plus the fine-tuning methods the config
switches on.

The fine-tuning methods live in :mod:`segcl.methods` (one module each: ``pseudo-labels``,
``semi``, ``cross-image``; :class:`~segcl.methods.base.FinetuneMethod`); this module asks the
registry which are active (:func:`segcl.methods.active`) and composes them: their training
images, their second data streams, their modules, their loss terms and their checkpoint state.
It never looks at their names or config sections.

The training loop itself (schedule, mixed precision, clipping, logging, mid-epoch checkpoints)
is :func:`segcl.engine.loop.train_loop`, shared with pre-training; fine-tuning gives it the
forward pass (labelled cross-entropy + the methods' terms) and the end-of-epoch validation with
its best/last checkpoints.

Under ``torchrun --nproc_per_node N -m segcl finetune ...`` each process trains on its share of
every epoch (:class:`~segcl.engine.data_setup.EpochSampler` with ``rank``/``world``;
``--batch-size`` is per process), DistributedDataParallel averages the gradients (of the model
and of the methods' modules), the methods' streams are shared out the same way, validation is
sharded over the processes, and rank 0 alone writes files and reports. Buffers are not broadcast
each step (as in mmsegmentation): batch-norm statistics stay per process and rank 0's are saved;
a method's buffers (the cross-image memory bank) keep themselves in sync.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from segcl import loggers
from segcl import methods as registry
from segcl.checkpoint import (
    CheckpointConfig,
    load_state_into,
    read_config,
    read_training_state,
    read_weights,
    save_checkpoint,
)
from segcl.config import FinetuneConfig, save_yaml, to_dict
from segcl.data import SegmentationDataset
from segcl.data.transforms import TrainTransform
from segcl.engine import distributed
from segcl.engine import state as train_state
from segcl.engine.callbacks import Callback, RunInfo
from segcl.engine.data_setup import load_splits, normalization, train_loader
from segcl.engine.ema import WeightAverage
from segcl.engine.evaluate import eval_loader, evaluate_loader
from segcl.engine.loop import Job, train_loop
from segcl.engine.optim import build_optimizer
from segcl.engine.preview import ValPreviews
from segcl.engine.rundir import RunDir
from segcl.engine.runtime import amp_dtype, seed_everything, to_device
from segcl.engine.supervised import build_supervised_loss
from segcl.errors import CheckpointError, ConfigError
from segcl.methods.base import FinetuneData, FinetuneMethod, FinetuneStep
from segcl.models import ModelConfig, SegmentationModel

#: prefix of the trained (not averaged) weights in ``last/``'s training state under ``--ema``
TRAINED = "trained."

SUMMARY_KEYS = ("miou", "pixel_accuracy", "mean_accuracy", "mean_f1", "mean_precision",
                "mean_recall")


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics (plus per-class IoU) worth logging and storing in a checkpoint."""
    out = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    out["iou"] = metrics.get("iou")
    return out


def initialize_from(
    model: SegmentationModel, ref: str, parts: str, callback: Callback
) -> CheckpointConfig:
    """Load pre-trained weights into ``model``.

    ``parts``: ``encoder`` (encoder only), ``all`` (encoder + decoder + classifier when it fits),
    or ``auto`` (the encoder, plus the decoder when the checkpoint has one of the same type whose
    weights fit: a ViT saved without the feature pyramid feeds its decoder other maps).
    Projection heads are always dropped.
    """
    from segcl.hub.refs import resolve_model_ref

    if parts not in ("auto", "encoder", "all"):
        raise ConfigError(f"unknown --init-parts '{parts}'; choose auto, encoder or all")
    folder = resolve_model_ref(ref)
    config = read_config(folder)
    weights = {k: v for k, v in read_weights(folder).items() if not k.startswith("heads.")}
    source_model = config.model
    if source_model.get("encoder") != model.config.encoder:
        raise CheckpointError(
            f"{folder}: checkpoint encoder is '{source_model.get('encoder')}', "
            f"this run uses '{model.config.encoder}'"
        )
    keep = ["encoder."]
    own = model.state_dict()

    def fits(prefix: str) -> bool:
        return all(own.get(k) is not None and own[k].shape == v.shape
                   for k, v in weights.items() if k.startswith(prefix))

    same_decoder = (source_model.get("decoder") == model.config.decoder
                    and source_model.get("decoder_kwargs", {}) == model.config.decoder_kwargs)
    if (parts in ("auto", "all") and same_decoder and any(k.startswith("decoder.") for k in weights)
            and fits("decoder.")):
        keep.append("decoder.")
    if parts == "all":
        keep += [p for p in ("classifier.",) if fits(p)]
    selected = {k: v for k, v in weights.items() if k.startswith(tuple(keep))}
    if not selected:
        raise CheckpointError(f"{folder}: no encoder weights found")
    load_state_into(model, selected, str(folder), strict=False)
    callback.on_message(
        f"initialised {', '.join(p.rstrip('.') for p in keep)} from {ref} "
        f"(method {config.method or '?'})"
    )
    return config


class _TrainStep(nn.Module):
    """The model and the active methods' modules as ONE module, so DistributedDataParallel sees
    (and synchronises) every trained parameter; ``forward`` returns the loss and its terms.

    The images methods add from their streams (:meth:`FinetuneMethod.inputs`) share the forward
    pass of the labelled images; the loss is the labelled images' supervised loss
    (``criterion``: cross-entropy by default) plus each method's term, in registration order
    (:meth:`FinetuneMethod.loss`), so a method can read the labels an earlier one gave its
    images (:meth:`FinetuneStep.labels`).
    """

    def __init__(self, model: SegmentationModel, methods: tuple[FinetuneMethod, ...],
                 parts: dict[str, nn.Module], cfg: FinetuneConfig, ignore_index: int,
                 criterion: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.model = model
        # the moving average (--ema) is not trained: kept out of the submodules (and of DDP)
        self.__dict__["teacher"] = teacher
        self.criterion = criterion  # (logits, mask) -> (loss, {term: value})
        self.parts = nn.ModuleDict(parts)  # the methods' modules, by method name
        self.methods, self.cfg, self.ignore_index = methods, cfg, ignore_index

    def forward(self, image: Tensor, mask: Tensor, step: int,
                batches: dict[str, dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        n = image.shape[0]
        inputs, segments, rows = [image], {}, n
        for method in self.methods:
            extra = (method.inputs(self.cfg, batches[method.name])
                     if method.name in batches else None)
            if extra is not None:
                segments[method.name] = slice(rows, rows + extra.shape[0])
                inputs.append(extra)
                rows += extra.shape[0]
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        feats, dense = self.model.forward_dense(x)
        logits = self.model.classify(dense, image.shape[-2:])
        loss, logs = self.criterion(logits[:n].float(), mask)
        state = FinetuneStep(self.cfg, self.model, step, n, mask, self.ignore_index, feats, dense,
                             logits, batches, segments, teacher=self.teacher)
        parts = dict(self.parts.items())
        for method in self.methods:
            out = method.loss(parts.get(method.name), state)
            if out is not None:
                term, terms = out
                loss = loss + term
                logs.update(terms)
        return loss, logs


def finetune(
    cfg: FinetuneConfig, callback: Callback | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train a segmentation model; returns a summary with the run directory and best val mIoU.

    Under torchrun (``WORLD_SIZE > 1``) this joins the process group itself; every rank
    validates its share of the val images, and only rank 0 writes files and reports to
    ``callback``.
    """
    return distributed.run(
        cfg.device, lambda ctx: _finetune(cfg, ctx, callback or Callback(), resume)
    )


def _finetune(
    cfg: FinetuneConfig, ctx: distributed.DistContext, callback: Callback, resume: bool
) -> dict[str, Any]:
    cb = loggers.attach(callback, cfg.loggers) if ctx.is_main else Callback()
    run = RunDir(cfg.out, resume=resume, write=ctx.is_main)
    device = ctx.device
    seed_everything(cfg.seed)

    # ---- data --------------------------------------------------------------------------------
    splits = load_splits(cfg.data, cfg.seed)
    info = splits.info
    mean, std = normalization(cfg.encoder, cfg.encoder_weights)
    size = tuple(cfg.data.image_size)
    methods = registry.active(cfg)  # the fine-tuning methods this run composes, in order
    data = FinetuneData(info, splits.labeled, splits.unlabeled, size, mean, std, device,
                        ctx.rank, ctx.world)
    for method in methods:
        method.check(cfg, data)
    # methods may add (pseudo-)labelled images, with in-memory masks, to the supervised set
    train_samples, masks_override = list(splits.labeled), {}
    for method in methods:
        added, added_masks = method.train_samples(cfg, data, cb)
        masks_override.update({len(train_samples) + i: m for i, m in enumerate(added_masks)})
        train_samples += added
    transform = TrainTransform(size, scale=tuple(cfg.scale), brightness=cfg.brightness,
                               contrast=cfg.contrast_jitter, mean=mean, std=std,
                               ignore_index=info.ignore_index)
    train_ds = SegmentationDataset(train_samples, info, transform, seed=cfg.seed,
                                   masks=masks_override or None, cache=cfg.data.cache)
    loader, sampler = train_loader(train_ds, cfg.batch_size, cfg.seed, cfg.data.workers, device,
                                   ctx.rank, ctx.world)
    batch_size = loader.batch_size
    # validation is sharded too: each process scores every world-th image, the confusion
    # matrices are summed over processes (evaluate_loader), so every rank gets the same metrics
    val_loader = eval_loader(splits.val[ctx.rank :: ctx.world], info, size, mean, std,
                             cfg.eval_mode, device, workers=min(cfg.data.workers, 2),
                             cache=cfg.data.cache)
    total_steps = cfg.steps or cfg.epochs * len(loader)
    criterion = build_supervised_loss(cfg.loss, info, splits.labeled, cb).to(device)

    # ---- model, the methods' modules, optimiser ----------------------------------------------
    model_cfg = ModelConfig(encoder=cfg.encoder, decoder=cfg.decoder,
                            num_classes=info.num_classes, decoder_kwargs=dict(cfg.decoder_kwargs))
    model = SegmentationModel(model_cfg)
    encoder_weights: dict[str, Any] | None = None  # provenance, for config.json
    if resume:  # the weights come from the run; its checkpoint says where they started
        encoder_weights = read_config(run.last).encoder_weights
    elif cfg.encoder_weights:
        from segcl.models.weights import load_encoder_weights

        encoder_weights = load_encoder_weights(model.encoder, cfg.encoder_weights).to_dict()
    if cfg.init and not resume:
        initialize_from(model, cfg.init, cfg.init_parts, cb)
    parts: dict[str, nn.Module] = {}
    for method in methods:
        part = method.module(cfg, model, info)
        if part is not None:
            parts[method.name] = part
    channels_last = cfg.channels_last and device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    ema = WeightAverage(model, cfg.ema) if cfg.ema is not None else None
    evaluated = ema.module if ema is not None else model  # validated, kept and exported
    modules = [model] + [part.to(device) for part in parts.values()]
    optimizer = build_optimizer(modules, cfg.optim)
    amp = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    st = train_state.TrainState()
    if resume:
        weights = {k: v for k, v in read_weights(run.last).items() if not k.startswith("heads.")}
        load_state_into(evaluated, weights, str(run.last))
        for method in methods:
            method.load_state(parts.get(method.name), run.last)
        tensors, meta = read_training_state(run.last)
        if ema is not None:  # last/ exports the average; the trained weights are resume state
            trained = {k[len(TRAINED):]: v for k, v in tensors.items() if k.startswith(TRAINED)}
            if not trained:
                raise CheckpointError(f"{run.last}: saved without --ema, cannot resume with it")
            load_state_into(model, trained, str(run.last))
        st = train_state.unpack(tensors, meta, optimizer, scaler)
        run.truncate_metrics(st.step)
        cb.on_message(f"resumed {run.path} at step {st.step} (epoch {st.epoch})")
    # second data streams (indexed by step, so a resumed run draws the same batches)
    streams = {}
    for method in methods:
        stream = method.stream(cfg, data, batch_size, st.step, cb)
        if stream is not None:
            streams[method.name] = stream
    # a module may get no gradient in some steps (a warm-up): DDP must be told to expect that
    step_module = distributed.wrap(
        _TrainStep(model, methods, parts, cfg, info.ignore_index, criterion,
                   ema.module if ema is not None and cfg.semi.teacher == "ema" else None), ctx,
        find_unused_parameters=any(m.unused_parameters(cfg) for m in methods if m.name in parts),
        sync_buffers=False,  # the methods' buffers (memory-bank queues) are large and in sync
    )
    if ctx.enabled:
        cb.on_message(f"training on {ctx.world} processes, batch {batch_size} per process")
    cfg = replace(cfg, steps=total_steps)
    if ctx.is_main:  # the loggers first: one that cannot start leaves no config.yaml behind
        previews = (ValPreviews(evaluated, splits.val, info, size, mean, std, device, amp,
                                cfg.log_images) if cfg.log_images else None)
        cb.on_run(RunInfo(run.path, "finetune", resume, st.step, to_dict(cfg), info.classes,
                          info.palette, info.ignore_index, previews))
        save_yaml(cfg, run.path / "config.yaml")

    def save(folder, metrics: dict[str, Any] | None, with_state: bool) -> None:
        config = CheckpointConfig.create(model_cfg.to_dict(), info, mean, std, size,
                                         method="finetune", command=cfg.command,
                                         metrics=metrics or {}, encoder_weights=encoder_weights,
                                         train=to_dict(cfg))
        weights = evaluated.state_dict()
        state = None
        if with_state:  # the methods' heads and queues are not part of the export
            extra: dict[str, Tensor] = {}
            for method in methods:
                extra.update(method.state_for_checkpoint(parts.get(method.name)))
            if extra:
                weights = {**weights, **extra}
            state = train_state.pack(st, optimizer, scaler)
            if ema is not None:
                state[0].update({TRAINED + k: v.detach().cpu().contiguous()
                                 for k, v in model.state_dict().items()})
        save_checkpoint(folder, weights, config, state)

    def validate() -> dict[str, Any]:
        metrics = evaluate_loader(evaluated, val_loader, info, device, size, cfg.eval_mode, amp,
                                  channels_last)
        record = {"step": st.step, "epoch": st.epoch, "split": "val", **summary(metrics)}
        run.log(record)
        cb.on_eval(st.step, record)
        return metrics

    # ---- training loop (segcl.engine.loop): what fine-tuning adds is the forward and the
    # end-of-epoch validation -------------------------------------------------------------------
    best_metrics: dict[str, Any] | None = None
    last_save = time.monotonic()

    def forward(batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        batches = {m.name: to_device(next(streams[m.name]), device, channels_last)
                   for m in methods if m.name in streams and m.draws(cfg, step)}
        return step_module(batch["image"], batch["mask"], step, batches)

    def end_epoch() -> bool:
        """Validate (every ``val_every`` epochs), keep the best, save ``last/``; True when
        early stopping ends the run."""
        nonlocal best_metrics, last_save
        evaluate_now = st.epoch % cfg.val_every == 0 or st.step >= total_steps
        if evaluate_now:
            metrics = validate()
            if st.record_eval(metrics["miou"]):
                best_metrics = metrics
                if ctx.is_main:
                    save(run.best, {"val": summary(metrics)}, with_state=False)
            elif st.step < total_steps and st.patience_spent(cfg.patience):  # before last/
                _early_stop(run, cb, st, cfg.patience)
            model.train()
        if ctx.is_main and (evaluate_now or time.monotonic() - last_save > 120
                            or st.step >= total_steps):
            save(run.last, None, with_state=True)
            last_save = time.monotonic()
        return st.patience_spent(cfg.patience)

    cb.on_start(total_steps, st.step, "finetune")
    model.train()
    if not st.patience_spent(cfg.patience):  # (a resumed run that had stopped early stays so)
        train_loop(Job("finetune", loader, sampler, batch_size, total_steps, forward,
                       model.parameters, optimizer, scaler, cfg.optim, amp, device,
                       channels_last, cfg.log_every, cfg.checkpoint_every,
                       lambda: save(run.last, None, with_state=True), end_epoch,
                       after_step=(None if ema is None else lambda step: ema.update(model, step))),
                   st, run, ctx, cb)

    result = {"run_dir": str(run.path), "best_miou": st.best_metric, "best_step": st.best_step,
              "steps": st.step, "rank": ctx.rank,
              "stopped_early": st.step < total_steps and st.patience_spent(cfg.patience)}
    if ctx.is_main:
        _plots(run, info, best_metrics)
    cb.on_end(result)
    return result


def _early_stop(run: RunDir, cb: Callback, st: train_state.TrainState, patience: int) -> None:
    """Log (metrics.jsonl) and report (callback) that early stopping ends the run now."""
    record = {"step": st.step, "epoch": st.epoch, "event": "early_stop", "patience": patience,
              "best_miou": st.best_metric, "best_step": st.best_step}
    run.log(record)
    cb.on_message(f"early stopping at step {st.step}: val mIoU has not improved for {patience} "
                  f"validations (best {st.best_metric * 100:.2f} at step {st.best_step}, kept "
                  f"in {run.best})")


def _plots(run: RunDir, info: Any, best_metrics: dict[str, Any] | None) -> None:
    from segcl.viz import plot_confusion, plot_curves

    plot_curves(run.records(), run.path / "curves.png")
    if best_metrics is not None:
        plot_confusion(best_metrics["confusion_matrix"], info.classes,
                       run.path / "confusion_val.png")
