"""Training stages: a fresh seeded model, the transforms, and the source-only, target-only and joint stages
(each a :class:`~jtln_hf.training.trainer.JTLNTrainer` run in ``output_dir/runs/<name>``, resumable).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import datasets
from safetensors.torch import load_file
from transformers import TrainerState, set_seed
from transformers.utils import logging

from .. import data as jdata
from ..configuration_jtln import JointImageClassifierConfig
from ..data.bad_images import StandIns
from ..data.pools import DataSpec
from ..data.stream import PairedStream
from ..modeling_jtln import JointImageClassifier
from ..training.arguments import JTLNTrainingArguments
from ..training.lora import LoraSettings, add_lora
from ..training.trainer import JTLNTrainer
from ..utils.io import latest_complete_checkpoint, resume_choice

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------- model
def build_model(config: JointImageClassifierConfig, seed: int,
                lora: LoraSettings | None = None) -> JointImageClassifier:  # fmt: skip
    """A fresh model with seeded initial weights (identical across methods for one seed), with ``lora``'s
    adapters on its backbone when given (:func:`~jtln_hf.training.lora.add_lora`, drawn after the heads).

    A local weights file named in ``backbone_kwargs["pretrained_cfg_overlay"]`` is loaded by timm,
    then removed from the model's config: a checkpoint must not carry a path of this machine.
    """
    set_seed(seed)
    model = JointImageClassifier(copy.deepcopy(config))
    model.config.backbone_kwargs.pop("pretrained_cfg_overlay", None)
    if lora is not None:
        add_lora(model, lora)
    return model


# ---------------------------------------------------------------------------------------- stages
def _with_transform(ds: datasets.Dataset, config: JointImageClassifierConfig, training: bool, data: DataSpec,
                    seed: int = 0) -> datasets.Dataset:  # fmt: skip
    """``ds`` under timm's train or eval transform; training augmentation is salted with the run's ``seed``.

    Without the salt, a row drawn in the same batch position by two seeds would get the same crop
    and flip: the seeds of a comparison would share their augmentation noise.
    """
    return ds.with_transform(_batch_transform(config, training, data, seed))


def _batch_transform(config: JointImageClassifierConfig, training: bool, data: DataSpec, seed: int = 0,
                     replace=None):  # fmt: skip
    kwargs = {"scale": tuple(data.train_scale), "hflip": data.hflip} if training else {}
    transform = jdata.build_transform(config.data_config, training, **kwargs)
    return jdata.make_batch_transform(transform, config.data_config["input_size"][0], seed=seed, replace=replace,
                                      crop_scale=data.decode_at_crop_scale)  # fmt: skip


def _joint_train_set(source, target, config, data: DataSpec, stage: JTLNTrainingArguments) -> datasets.Dataset:
    """The joint dataset under the training transform; unless ``max_bad_images`` is 0, an unreadable row is
    replaced by a stand-in of its domain (:class:`~jtln_hf.data.bad_images.StandIns`, seeded by the data seed)."""
    joint = jdata.build_joint_dataset(source, target)
    data_seed = stage.data_seed if stage.data_seed is not None else stage.seed
    replace = StandIns(joint, data_seed) if stage.max_bad_images else None
    return joint.with_transform(_batch_transform(config, True, data, stage.seed, replace))


def _train_set(source, target, config: JointImageClassifierConfig, data: DataSpec, stage: JTLNTrainingArguments):
    """The stage's training rows: a joint dataset, or a :class:`PairedStream` over a streamed ``source``.

    A stream is read by each process on its own, in per-device batches of the stage's
    ``source_fraction`` (source-only stages: ``target`` None), augmented as the joint dataset is.
    """
    if not isinstance(source, datasets.IterableDataset):
        return _joint_train_set(source, target, config, data, stage)
    transform = _batch_transform(config, True, data, stage.seed)
    batch = stage.per_device_train_batch_size
    n_source = jdata.source_rows_per_batch(batch, stage.source_fraction)
    return PairedStream(
        source, target if n_source < batch else None, n_source=n_source, n_target=batch - n_source,
        transform=transform, seed=stage.data_seed if stage.data_seed is not None else stage.seed,
        buffer_size=data.source_shuffle_buffer, rank=stage.process_index, world_size=stage.world_size,
        skip_bad_images=bool(stage.max_bad_images),
    )  # fmt: skip


def _stage_args(args: JTLNTrainingArguments, name: str, **overrides: Any) -> JTLNTrainingArguments:
    """Arguments of one training stage: its own ``output_dir/runs/<name>`` and never a push.

    Only the final ``model/`` folder is pushed, once, by the recipe; a stage trainer with
    ``push_to_hub=True`` would create the repository at init and push every checkpoint.
    """
    overrides.setdefault("push_to_hub", False)
    return dataclasses.replace(args, output_dir=str(Path(args.output_dir) / "runs" / name), **overrides)


def _train(model, args, train_ds, eval_ds=None, trainer_cls: type[JTLNTrainer] = JTLNTrainer,
           **trainer_kwargs: Any) -> JTLNTrainer:  # fmt: skip
    """Train one stage; write ``train_results.json``, ``all_results.json`` and ``trainer_state.json``.

    The same files transformers' example scripts write (``save_metrics`` / ``save_state``, main
    process only), so the stage's log history and throughput can be read without TensorBoard.
    """
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, **trainer_kwargs)
    checkpoint = _resume_value(args.resume_from_checkpoint, args.output_dir)
    finished = _finished_state(checkpoint)
    if finished is not None:
        # Trainer resumed at its last step trains one step more: a finished stage reloads what it trained
        model.load_state_dict(load_file(Path(checkpoint) / "model.safetensors"))
        trainer.state = finished
        trainer.write_bad_images()  # the rows it skipped, from the checkpoint's state
        return trainer
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return trainer


def _finished_state(checkpoint: str | None) -> TrainerState | None:
    """The state of ``checkpoint`` when it is a stage's last step (nothing left to train), else None."""
    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return state if state.max_steps > 0 and state.global_step >= state.max_steps else None


def _resume_value(value: str | bool | None, stage_dir: str) -> str | None:
    """``--resume_from_checkpoint true`` (or ``last``): the stage's latest checkpoint, if it has one.

    A stage without a checkpoint starts fresh, so a whole ``compare`` run can be resumed: finished
    stages restart from their final checkpoint (nothing left to train), the interrupted one from
    its last, the others from scratch (the recipe refuses a resume when no stage has a checkpoint:
    :func:`jtln_hf.utils.io.check_output_dir`).
    """
    choice = resume_choice(value)
    return latest_complete_checkpoint(stage_dir) if choice == "latest" else choice


def target_batch_size(args: JTLNTrainingArguments) -> int:
    """Target rows per step in joint batches: what every method sees per step."""
    batch = args.per_device_train_batch_size
    return max(1, batch - jdata.source_rows_per_batch(batch, args.source_fraction))


def source_batch_size(args: JTLNTrainingArguments) -> int:
    return max(1, jdata.source_rows_per_batch(args.per_device_train_batch_size, args.source_fraction))


def _eval_dataset(ds: datasets.Dataset, config: JointImageClassifierConfig, data: DataSpec):
    """A target set (test or validation) with the evaluation transform (domain 1 = target rows)."""
    return _with_transform(jdata.build_joint_dataset(None, ds), config, False, data)


def _stage_eval_dataset(stage: JTLNTrainingArguments, exp, config, data) -> datasets.Dataset | None:
    """The target test set for evaluation during a stage (``--eval_strategy steps|epoch``), else None."""
    return None if stage.eval_strategy == "no" else _eval_dataset(exp.target_test, config, data)


def train_source_only(model, exp, args, data, name: str, steps: int) -> JTLNTrainer:
    """Source head only (λ_ot = 0, batches of source rows)."""
    stage = _stage_args(
        args, name, max_steps=steps, per_device_train_batch_size=source_batch_size(args),
        source_fraction=1.0, ot_loss_weight=0.0,
    )  # fmt: skip
    return _train(model, stage, _train_set(exp.source, None, model.config, data, stage))


def train_target_only(model, exp, args, data, name: str) -> JTLNTrainer:
    """Target head only (batches of target rows); evaluated on the target test set if ``eval_strategy`` asks."""
    stage = _stage_args(
        args, name, per_device_train_batch_size=target_batch_size(args), source_fraction=0.0, ot_loss_weight=0.0
    )
    train_ds = _joint_train_set(None, exp.target, model.config, data, stage)
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data))


def train_joint(model, exp, args, data, name: str, ot_loss_weight: float, trainer_cls: type[JTLNTrainer] = JTLNTrainer,
                **trainer_kwargs: Any) -> JTLNTrainer:  # fmt: skip
    """Both heads on mixed batches, with the OT term when ``ot_loss_weight > 0`` (``trainer_cls``: e.g. Co-Tuning)."""
    stage = _stage_args(args, name, ot_loss_weight=ot_loss_weight)
    train_ds = _train_set(exp.source, exp.target, model.config, data, stage)
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data), trainer_cls,
                  **trainer_kwargs)  # fmt: skip


def quiet_args(args: JTLNTrainingArguments, output_dir: str | None = None) -> JTLNTrainingArguments:
    """Arguments of a trainer that only predicts or evaluates: no OT term, no push, no loggers."""
    return dataclasses.replace(args, output_dir=output_dir or args.output_dir, push_to_hub=False, ot_loss_weight=0.0,
                               report_to="none", eval_strategy="no", fp16_full_eval=False,
                               bf16_full_eval=False)  # fmt: skip  # *_full_eval would cast the model in place
