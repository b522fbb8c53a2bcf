"""``segcl pretrain``: contrastive pre-training of an encoder (and decoder) with projection heads.

The methods live in :mod:`segcl.methods` (one module each, registered by name); this module is
the generic loop. A :class:`~segcl.methods.base.PretrainMethod` decides the loss terms, the data
it reads, the transform, the heads and the loss of a batch; the loop never looks at its name.

Data design: ONE dataset of all training images -- the labelled subset (``--labeled-fraction``)
with its masks, every other image (plus ``--unlabeled``) with an all-ignore mask, or with a
pseudo-mask when ``--pseudo-labels`` names a teacher. The image-level terms (global, local) see
every image; the label terms (pixel) only see labelled pixels, because ignored pixels are never
anchors, positives or negatives. A method with ``unlabelled = False`` trains on the labelled
(+ pseudo-labelled) images only. Without any labels the label terms are dropped, with a message
and a note in the run's config and metrics (a method with ``labels = "required"`` fails).

The loop is fine-tuning's (:func:`segcl.engine.loop.train_loop`: warm-up + cosine schedule,
mixed precision on CUDA, gradient clipping, JSON-lines metrics, atomic checkpoints with resume);
pre-training gives it the method's loss as the forward pass (the losses always compute in
float32). There is no validation metric: ``best/`` holds the last step's weights.
Checkpoint weights: ``encoder.*`` (+ ``decoder.*``) exactly as in a
:class:`~segcl.models.SegmentationModel` without classifier, plus the heads under
``heads.<name>.*``, so ``segcl finetune --init RUN`` picks up the encoder (and decoder).

Under ``torchrun`` (``WORLD_SIZE > 1``) every process trains on its shard of each epoch
(:class:`~segcl.engine.data_setup.EpochSampler` with ``rank``/``world``), the model is wrapped
in DistributedDataParallel, the contrastive losses take their negatives from all processes, and
only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segcl import loggers, methods
from segcl.checkpoint import (
    CheckpointConfig,
    load_state_into,
    read_training_state,
    read_weights,
    save_checkpoint,
)
from segcl.config import PretrainConfig, save_yaml, to_dict
from segcl.data import DatasetInfo, Sample, SegmentationDataset, validate_samples
from segcl.engine import distributed
from segcl.engine import state as train_state
from segcl.engine.callbacks import Callback, RunInfo
from segcl.engine.data_setup import load_splits, normalization, train_loader
from segcl.engine.loop import Job, train_loop
from segcl.engine.optim import build_optimizer
from segcl.engine.rundir import RunDir
from segcl.engine.runtime import amp_dtype, seed_everything
from segcl.errors import ConfigError
from segcl.methods.base import PretrainMethod
from segcl.methods.terms import LABEL_TERMS
from segcl.models import ModelConfig, SegmentationModel

# --------------------------------------------------------------------------------------------
# configuration checks and data


def get_method(cfg: PretrainConfig) -> PretrainMethod:
    """The registered pre-training method ``cfg.method`` (ConfigError naming the choices)."""
    return methods.get(cfg.method, kind="pretrain")  # type: ignore[return-value]


def requested_terms(cfg: PretrainConfig) -> list[str]:
    """The loss terms a method asks for, in canonical order."""
    return list(get_method(cfg).terms(cfg))


@dataclass
class PretrainData:
    """The images of a pre-training run.

    ``samples`` are labelled first (``n_labeled`` of them), then the unlabelled ones;
    ``masks`` holds in-memory (pseudo-)masks by sample index; ``terms`` / ``dropped`` are the
    loss terms that will run and the requested ones that cannot (no labels).
    """

    info: DatasetInfo
    samples: list[Sample]
    masks: dict[int, np.ndarray]
    n_labeled: int
    n_pseudo: int
    terms: list[str]
    dropped: list[str]


def split_samples(cfg: PretrainConfig) -> tuple[DatasetInfo, list[Sample], list[Sample]]:
    """Training images split into the labelled subset and the rest (masks removed).

    The same subset ``segcl finetune`` uses for the same ``--seed`` and ``--labeled-fraction``
    (:func:`segcl.engine.data_setup.load_splits`); images without a mask are allowed here.
    """
    splits = load_splits(cfg.data, cfg.seed, need_val=False, validate=False,
                         require_masks=False)
    return splits.info, splits.labeled, splits.unlabeled


def prepare_data(
    cfg: PretrainConfig, device: torch.device, cb: Callback, validate: bool = True
) -> PretrainData:
    """Load and check the images, pseudo-label if asked, and decide the loss terms."""
    method = get_method(cfg)
    info, labeled, unlabeled = split_samples(cfg)
    if validate:
        validate_samples(labeled + unlabeled, info)
    terms = requested_terms(cfg)
    masks: dict[int, np.ndarray] = {}
    n_pseudo = 0
    if cfg.pseudo_labels:
        from segcl.engine.pseudo import pseudo_label

        pseudo, unlabeled = pseudo_label(cfg.pseudo_labels, unlabeled, info, cfg, device, cb)
        masks = {len(labeled) + i: m for i, m in enumerate(pseudo)}
        n_pseudo = len(pseudo)
    has_labels = bool(labeled) or n_pseudo > 0
    dropped = [t for t in terms if t in LABEL_TERMS] if not has_labels else []
    if dropped:
        if method.labels == "required":
            raise ConfigError(
                f"{cfg.data.root}: --method {cfg.method} needs masks, and no training image has one"
            )
        terms = [t for t in terms if t not in dropped]
        what = " + ".join(dropped)
        cb.on_message(f"no labelled images: the {what} term is unavailable; training "
                      f"{' + '.join(terms) or 'nothing'} only")
        if not terms:
            raise ConfigError(f"no loss term left to train (the {what} term needs masks)")
    if not any(t in LABEL_TERMS for t in terms):  # masks unused: do not read them
        samples = [dataclasses.replace(s, mask=None) for s in labeled + unlabeled]
    elif method.unlabelled:
        samples = labeled + unlabeled
    else:  # labelled (+ pseudo-labelled) images only
        samples = labeled + (unlabeled if n_pseudo else [])
    if not samples:
        raise ConfigError(f"{cfg.data.root}: no training images")
    return PretrainData(info, samples, masks, len(labeled), n_pseudo, terms, dropped)


# --------------------------------------------------------------------------------------------
# the network: encoder (+ decoder) + heads; forward returns the loss and its terms


class PretrainNet(nn.Module):
    """Encoder, optional decoder and projection heads; ``forward(batch)`` runs the method's
    :meth:`~segcl.methods.base.PretrainMethod.loss` and returns ``(loss, {term: value})``.

    ``state_dict`` keys are ``encoder.*`` and ``decoder.*`` (as in a
    :class:`~segcl.models.SegmentationModel`) and ``heads.<term>.*``; the loss modules hold no
    state. The loss runs inside ``forward`` so that DistributedDataParallel sees it.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module | None,
        heads: dict[str, nn.Module],
        criteria: dict[str, nn.Module],
        method: PretrainMethod,
        encoder_weights: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        #: where the encoder started (``--encoder-weights`` provenance for config.json)
        self.encoder_weights = encoder_weights
        self.encoder = encoder
        self.decoder = decoder
        self.heads = nn.ModuleDict(heads)
        self.criteria = nn.ModuleDict(criteria)
        self.method = method

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total loss, {term: value})`` for one batch of the method's transform."""
        return self.method.loss(self, batch)


def build_net(
    cfg: PretrainConfig, model_cfg: ModelConfig, terms: list[str], ignore_index: int,
    gather: bool,
) -> PretrainNet:
    """Build the encoder/decoder of ``model_cfg`` and the method's heads and losses of ``terms``."""
    method = get_method(cfg)
    base = SegmentationModel(model_cfg)
    provenance = None
    if cfg.encoder_weights:
        from segcl.models.weights import load_encoder_weights

        provenance = load_encoder_weights(base.encoder, cfg.encoder_weights).to_dict()
    heads, criteria = method.heads(cfg, base, terms, ignore_index, gather)
    decoder = base.decoder if method.trains_decoder(terms) else None
    return PretrainNet(base.encoder, decoder, heads, criteria, method, provenance)


# --------------------------------------------------------------------------------------------
# the loop


def pretrain(
    cfg: PretrainConfig, callback: Callback | None = None, resume: bool = False
) -> dict[str, Any]:
    """Pre-train with ``cfg.method``; returns the run directory, loss terms and final loss.

    Under torchrun (``WORLD_SIZE > 1``) this joins the process group itself; only rank 0 writes
    files and reports to ``callback``.
    """
    return distributed.run(
        cfg.device, lambda ctx: _pretrain(cfg, ctx, callback or Callback(), resume)
    )


def _pretrain(
    cfg: PretrainConfig, ctx: distributed.DistContext, callback: Callback, resume: bool
) -> dict[str, Any]:
    cb = loggers.attach(callback, cfg.loggers) if ctx.is_main else Callback()
    run = RunDir(cfg.out, resume=resume, write=ctx.is_main)
    device = ctx.device
    seed_everything(cfg.seed)

    # ---- data --------------------------------------------------------------------------------
    method = get_method(cfg)
    data = prepare_data(cfg, device, cb)
    info, terms = data.info, data.terms
    mean, std = normalization(cfg.encoder, cfg.encoder_weights)
    size = tuple(cfg.data.image_size)
    transform = method.transform(cfg, size, mean, std, info.ignore_index)
    train_ds = SegmentationDataset(data.samples, info, transform, seed=cfg.seed,
                                   masks=data.masks or None, cache=cfg.data.cache)
    loader, sampler = train_loader(train_ds, cfg.batch_size, cfg.seed, cfg.data.workers, device,
                                   ctx.rank, ctx.world)
    batch_size = loader.batch_size
    total_steps = cfg.steps or cfg.epochs * len(loader)
    labels = ""
    if any(t in LABEL_TERMS for t in terms):
        labels = f" ({data.n_labeled} labelled" + (
            f", {data.n_pseudo} pseudo-labelled)" if data.n_pseudo else ")")
    cb.on_message(
        f"pretrain {cfg.method} ({' + '.join(terms)}) on {len(train_ds)} images{labels}, "
        f"batch {batch_size} x {ctx.world} process(es)"
    )

    # ---- model, heads, optimiser --------------------------------------------------------------
    model_cfg = ModelConfig(encoder=cfg.encoder, decoder=cfg.decoder, num_classes=0,
                            decoder_kwargs=dict(cfg.decoder_kwargs))
    net = build_net(cfg, model_cfg, terms, info.ignore_index, gather=ctx.enabled)
    channels_last = cfg.channels_last and device.type == "cuda"
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer([net], cfg.optim)
    amp = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    st = train_state.TrainState()
    if resume:
        load_state_into(net, read_weights(run.last), str(run.last))
        st = train_state.unpack(*read_training_state(run.last), optimizer, scaler)
        run.truncate_metrics(st.step)
        cb.on_message(f"resumed {run.path} at step {st.step} (epoch {st.epoch})")
    model = distributed.wrap(net, ctx)
    trained = ["encoder"] + (["decoder"] if net.decoder is not None else [])
    cfg = replace(cfg, steps=total_steps, losses=list(terms))
    if ctx.is_main:  # the loggers first: one that cannot start leaves no config.yaml behind
        cb.on_run(RunInfo(run.path, "pretrain", resume, st.step, to_dict(cfg), info.classes,
                          info.palette, info.ignore_index))
        save_yaml(cfg, run.path / "config.yaml")
    last_logs: dict[str, float] = {}

    def save(folder, with_state: bool) -> None:
        # training losses are not evaluation metrics: they go to "pretrain", not "metrics"
        pretrain = {
            "losses": list(terms), "dropped_losses": data.dropped, "trained": trained,
            "steps": st.step,
            "final": {k: v for k, v in last_logs.items() if k in ("loss", *terms)},
        }
        config = CheckpointConfig.create(model_cfg.to_dict(), info, mean, std, size,
                                         method=cfg.method, command=cfg.command,
                                         heads=list(terms), encoder_weights=net.encoder_weights,
                                         pretrain=pretrain, train=to_dict(cfg))
        save_checkpoint(folder, net.state_dict(), config,
                        train_state.pack(st, optimizer, scaler) if with_state else None)

    # ---- training loop (segcl.engine.loop) ----------------------------------------------------
    cb.on_start(total_steps, st.step, f"pretrain {cfg.method}")
    if data.dropped and ctx.is_main:
        run.log({"step": st.step, "epoch": st.epoch,
                 "note": f"{' + '.join(data.dropped)} term dropped (no labels)",
                 "dropped_losses": data.dropped})
    model.train()
    last_save, start_step = time.monotonic(), st.step

    def end_epoch() -> bool:  # a resumable checkpoint every cfg.save_every_s seconds
        nonlocal last_save
        if ctx.is_main and time.monotonic() - last_save > cfg.save_every_s \
                and st.step < total_steps:
            save(run.last, with_state=True)
            last_save = time.monotonic()
        return False

    train_loop(
        Job(f"pretrain {cfg.method}", loader, sampler, batch_size, total_steps,
            lambda batch, step: model(batch), net.parameters, optimizer, scaler, cfg.optim, amp,
            device, channels_last, cfg.log_every, cfg.checkpoint_every,
            lambda: save(run.last, with_state=True), end_epoch, last_logs),
        st, run, ctx, cb)

    if ctx.is_main:
        if st.step > start_step:  # (resuming a finished run changes nothing)
            save(run.last, with_state=True)
            save(run.best, with_state=False)
        from segcl.viz import plot_curves

        plot_curves(run.records(), run.path / "curves.png", keys=["loss", *terms])
    result = {"run_dir": str(run.path), "method": cfg.method, "losses": list(terms),
              "dropped_losses": data.dropped, "steps": st.step,
              "final_loss": last_logs.get("loss"), "rank": ctx.rank}
    cb.on_end(result)
    return result
