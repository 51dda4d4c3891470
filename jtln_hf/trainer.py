"""JTLNTrainer: transformers' Trainer with the JTLN objective and paired source/target batches.

Trainer keeps the loop, optimiser, schedule, mixed precision, gradient accumulation, DDP,
checkpoints and logging. This subclass changes:

* ``get_train_dataloader`` draws batches with :class:`jtln_hf.data.PairedBatchSampler`, so every
  per-device batch holds the configured share of source rows;
* ``compute_loss`` evaluates :class:`jtln_hf.loss.JTLNLoss` on the model's two heads;
* ``log`` adds the three parts of the loss (``ce_target``, ``ce_source``, ``ot``) as separate keys,
  and with several processes a check that failed on one of them raises on all (at ``log`` and
  at the end of ``predict``);
* ``predict_outputs`` (through ``predict`` / ``prediction_step``) returns any model outputs over
  a dataset, gathered over processes: the one forward pass outside training.

For the Hub it also defaults ``processing_class`` to the model's
:class:`~jtln_hf.JointImageClassifierImageProcessor` (so every saved checkpoint has its
``preprocessor_config.json``), and ``create_model_card`` writes the JTLN card with its figures, so
``trainer.push_to_hub()`` publishes a checkpoint that loads in a pipeline and explains itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import seed_worker
from transformers.utils import logging

from .data import TARGET, PairedBatchSampler, collate
from .data.labels import check_labels, domains_of  # noqa: F401  (check_labels: also re-exported)
from .image_processing_jtln import JointImageClassifierImageProcessor
from .loss import split_rows
from .metrics import compute_classification_metrics
# the arguments are re-exported here: `from jtln_hf.trainer import JTLNTrainer, JTLNTrainingArguments` (README)
from .training_args import JTLNObjectiveArguments, JTLNTrainingArguments, jtln_loss_from_args  # noqa: F401

logger = logging.get_logger(__name__)

LOSS_PARTS = ("ce_target", "ce_source", "ot")


class JTLNTrainer(Trainer):
    """Trainer for a :class:`~jtln_hf.JointImageClassifier` on mixed source/target datasets.

    ``train_dataset`` needs ``image``, ``label`` and ``domain`` columns (see
    :func:`jtln_hf.data.build_joint_dataset`) and a transform producing ``pixel_values``; a
    dataset without ``domain`` is all target rows, as are evaluation datasets (``domain`` 1).
    Labels are checked against the model's label sets before the first step.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("data_collator", collate)
        kwargs.setdefault("compute_metrics", compute_classification_metrics)
        model = kwargs.get("model", args[0] if args else None)
        data_config = getattr(getattr(model, "config", None), "data_config", None)
        if kwargs.get("processing_class") is None and len(args) < 6 and data_config:
            # saved with every checkpoint: AutoImageProcessor / pipeline work on it
            kwargs["processing_class"] = JointImageClassifierImageProcessor(data_config=data_config)
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, JTLNTrainingArguments):
            raise TypeError("JTLNTrainer needs JTLNTrainingArguments (it adds the JTLN loss weights).")
        self.jtln_loss = jtln_loss_from_args(self.args)
        # on several processes a failed check must stop every one of them: see _raise_on_every_process
        self.jtln_loss.defer_errors = self.accelerator.num_processes > 1
        self._part_sums: dict[str, torch.Tensor] = {}
        self._train_composition: tuple[int, int] | None = None  # (batch size, source rows) per device batch
        self._part_count = 0
        self._output_fields: tuple[str, ...] | None = None  # set by predict_outputs
        self._card_plan: tuple[np.ndarray | None, int | None] | None = None  # set by push_to_hub
        config = self.accelerator.unwrap_model(self.model).config
        for ds in [self.train_dataset] + _as_list(self.eval_dataset):
            if ds is not None:
                check_labels(ds, config.num_source_labels, config.num_labels)
        # shape, NaN/inf/negative entries, all zeros, and a kernel solver that would underflow: before step 1
        self.jtln_loss.check(
            self.accelerator.unwrap_model(self.model).cost_matrix, config.num_source_labels, config.num_labels
        )

    # ------------------------------------------------------------------------------- data
    def get_train_dataloader(self) -> DataLoader:
        """Per-device batches from :class:`PairedBatchSampler`; Accelerate shards whole batches."""
        if self.train_dataset is None:
            raise ValueError("JTLNTrainer: training requires a train_dataset.")
        sampler = PairedBatchSampler(
            domains_of(self.train_dataset),
            batch_size=self._train_batch_size,
            source_fraction=self.args.source_fraction,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            drop_last=self.args.dataloader_drop_last,
            num_replicas=self.accelerator.num_processes,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
            worker_init_fn=lambda worker_id: seed_worker(
                worker_id, self.args.dataloader_num_workers, self.args.process_index
            ),
        )
        self._train_composition = (sampler.batch_size, sampler.n_source)
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The JTLN objective (see :mod:`jtln_hf.loss`); rows without ``domain`` count as target."""
        outputs = model(pixel_values=inputs["pixel_values"])
        labels = inputs["labels"]
        domain = inputs.get("domain")
        source_rows = target_rows = None  # unknown counts: the loss finds the rows (a host sync)
        if domain is None:
            domain = torch.full_like(labels, TARGET)
            source_rows = torch.zeros(0, dtype=torch.long, device=labels.device)
            target_rows = torch.arange(labels.shape[0], device=labels.device)
        elif model.training and self._train_composition and labels.shape[0] == self._train_composition[0]:
            # PairedBatchSampler's batches hold exactly n_source source rows: known on the host, so
            # the rows are selected without waiting for the device (checked lazily by the loss).
            source_rows, target_rows = split_rows(domain, self._train_composition[1])
        cost = self.accelerator.unwrap_model(model).cost_matrix
        parts = self.jtln_loss(
            outputs.logits, outputs.source_logits, labels, domain, cost, source_rows=source_rows, target_rows=target_rows
        )
        if model.training:
            for name in LOSS_PARTS:
                value = parts[name].detach()
                self._part_sums[name] = self._part_sums.get(name, 0.0) + value
            self._part_count += 1
        loss = parts["loss"]
        return (loss, outputs) if return_outputs else loss

    def predict(self, *args, **kwargs):
        """As :meth:`transformers.Trainer.predict`; on several processes, a failed check raises on all."""
        output = super().predict(*args, **kwargs)
        self._raise_on_every_process()  # predict does not log: its checks meet here
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss part since the last log (averaged over processes).

        Raises the ``ValueError`` of a failed check (NaN logits, wrong-domain rows); on several
        processes, on every process (see :meth:`_raise_on_every_process`).
        """
        self.jtln_loss.flush_checks()  # the last step's NaN check, before its loss is reported
        self._raise_on_every_process()
        if "loss" in logs and self._part_count:
            stacked = torch.stack([self._part_sums[name] for name in LOSS_PARTS]) / self._part_count
            stacked = self.accelerator.reduce(stacked, reduction="mean")
            logs.update({name: round(float(v), 6) for name, v in zip(LOSS_PARTS, stacked)})
            self._part_sums, self._part_count = {}, 0
        super().log(logs, start_time)

    def _raise_on_every_process(self) -> None:
        """On several processes, raise a check that failed on any of them on all of them.

        Problem: a process whose shard diverged (NaN logits) raised alone, in its loss, and the
        others waited in the next gradient all-reduce until the process group's timeout. Fix: the
        loss keeps the failure (:meth:`jtln_hf.loss.JTLNLoss.flush_checks`) and its process trains
        on to the next point where all processes meet anyway: ``log`` (Trainer calls it on every
        process: logging steps, after evaluation, end of training) and the end of ``predict``.
        There one integer is all-reduced, the MIN of ``checks read x world size + rank`` (the
        first failure wins: a NaN reaches every process with the next gradients), and only on
        failure that process broadcasts its message, which every process raises. One collective
        per log and none per step, so the healthy path still never waits for the device; the
        price is a failure raised up to ``logging_steps`` steps late. One process: nothing to do
        (the loss raises at once).
        """
        loss = self.jtln_loss
        if not loss.defer_errors:
            return
        loss.flush_checks()
        failed, loss.deferred_error = loss.deferred_error, None
        if not torch.distributed.is_initialized():  # no process group left to tell (destroyed): raise here
            if failed:
                raise failed[1]
            return
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        none = torch.iinfo(torch.int64).max
        key = torch.tensor(failed[0] * world + rank if failed else none, device=self.accelerator.device)
        torch.distributed.all_reduce(key, op=torch.distributed.ReduceOp.MIN)
        key = int(key)
        if key == none:
            return
        source = key % world
        message = [str(failed[1]) if rank == source else None]
        torch.distributed.broadcast_object_list(message, src=source, device=self.accelerator.device)
        raise ValueError(
            f"rank {source} of {world} failed its check: {message[0]}. Every rank stops here, at its first log "
            "after the failure (rather than the other ranks waiting in the next all-reduce until the timeout)."
        )

    # ------------------------------------------------------------------------------- card
    @property
    def card_method(self) -> str:
        """The method the card names (a :data:`jtln_hf.methods.METHOD_REGISTRY` name): JTLN, or joint without OT."""
        return "jtln" if self.args.ot_loss_weight > 0 else "joint"

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the JTLN card (``README.md``) and its figures into ``args.output_dir``.

        Replaces transformers' generic card, so ``push_to_hub`` publishes it. The card shows the
        label sets, the cost matrix (heatmap), the mean transport plan over ``eval_dataset``
        when there is one (heatmap, :meth:`card_transport_plan`), the hyper-parameters and the latest evaluation metrics.
        ``dataset`` (Hub dataset ids), ``license``, ``tags`` and ``finetuned_from`` (the base
        model) go to the metadata; ``language``, ``tasks``, ``dataset_tags`` and ``dataset_args``
        are not used (the task is image classification, the data images); other keyword
        arguments of :func:`jtln_hf.modelcard.render_model_card` (``cost_description``,
        ``results_table`` ...) may be passed through ``push_to_hub(**kwargs)``.
        """
        if not self.is_world_process_zero():
            return
        from . import modelcard  # imported here: it pulls in matplotlib, which training does not need

        model = self.accelerator.unwrap_model(self.model)
        if self._card_plan is not None:  # from push_to_hub, computed on every process
            plan, plan_images = self._card_plan
        elif self.args.world_size == 1:
            plan, plan_images = self.card_transport_plan()
        else:  # called on the main process alone: a forward pass here could not gather the others'
            logger.warning("create_model_card: no transport plan (call push_to_hub, which computes it on every process).")
            plan, plan_images = None, None
        metrics = {}
        for entry in self.state.log_history:  # the latest value of each evaluation metric
            metrics.update({k.removeprefix("eval_"): v for k, v in entry.items()
                            if k in ("eval_accuracy", "eval_mean_per_class_accuracy")})  # fmt: skip
        datasets = [dataset] if isinstance(dataset, str) else list(dataset) if dataset else None
        repo_id = self.hub_model_id or self.args.hub_model_id  # None or a bare name: the card says "placeholder"
        kwargs.setdefault("cost_description", "")
        kwargs.setdefault("method", self.card_method)
        modelcard.write_model_card(
            self.args.output_dir, model, plan=plan, plan_images=plan_images,
            repo_id=repo_id, model_name=model_name or (repo_id.split("/")[-1] if repo_id else None),
            hyperparameters=modelcard.training_hyperparameters(
                self.args, steps=self.state.global_step or None, ot_used=self.args.ot_loss_weight > 0
            ),
            metrics=metrics, datasets=datasets, license=license or "apache-2.0",
            tags=[tags] if isinstance(tags, str) else tags, base_model=finetuned_from, **kwargs,
        )  # fmt: skip

    @contextlib.contextmanager
    def target_loss_only(self) -> Iterator[None]:
        """Within: the loss is the target cross-entropy alone (OT term off), e.g. for a final test loss
        that means the same for every method. Subclasses with terms of their own turn them off too."""
        saved = self.jtln_loss.ot_loss_weight
        self.jtln_loss.ot_loss_weight = 0.0
        try:
            yield
        finally:
            self.jtln_loss.ot_loss_weight = saved

    # ------------------------------------------------------------------------- prediction
    def predict_outputs(self, dataset, fields: tuple[str, ...] = ("logits",)) -> tuple[dict[str, np.ndarray], Any]:
        """The model's output ``fields`` on every row of ``dataset``, in row order, and its labels.

        The one forward pass over a dataset outside training (the card's transport plan, the
        features of ``features-*`` costs, Co-Tuning's relationship): :meth:`Trainer.predict`, so
        it is batched by ``per_device_eval_batch_size``, runs in eval mode under the evaluation's
        precision, is sharded over processes and gathered back (tested with DDP; every process
        takes part, as FSDP needs). Every process must call it; each gets the whole arrays. Labels are not passed to the model (no loss is
        computed); they come back as ``label_ids`` (None when ``dataset`` has none).

        Parameters
        ----------
        dataset : datasets.Dataset
            Rows whose transform yields ``pixel_values`` (and ``labels``).
        fields : tuple of str
            Fields of :class:`~jtln_hf.modeling_jtln.JointClassifierOutput`, e.g. ``("source_logits", "logits")``
            or ``("pooler_output",)``.

        Returns
        -------
        outputs : dict of str to numpy.ndarray
            ``{field: (N, ...) float32 array}``.
        label_ids : numpy.ndarray or None
        """
        saved = self._output_fields, self.compute_metrics
        self._output_fields, self.compute_metrics = tuple(fields), None
        try:
            result = self.predict(dataset, metric_key_prefix="predict")
        finally:
            self._output_fields, self.compute_metrics = saved
        predictions = result.predictions if isinstance(result.predictions, tuple) else (result.predictions,)
        return {name: np.asarray(p, dtype=np.float32) for name, p in zip(fields, predictions)}, result.label_ids

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's step, or under :meth:`predict_outputs` the forward pass alone, returning the asked fields."""
        if self._output_fields is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(pixel_values=inputs["pixel_values"])
        return None, tuple(getattr(outputs, name).detach().float() for name in self._output_fields), inputs.get("labels")

    def card_transport_plan(self) -> tuple[np.ndarray | None, int | None]:
        """The mean transport plan over ``eval_dataset`` for the card, and its image count (None, None without one).

        A forward pass through :meth:`predict_outputs`: every process must call it.
        """
        from .modelcard import has_cost
        from .sinkhorn import mean_transport_plan

        model = self.accelerator.unwrap_model(self.model)
        eval_dataset = self.eval_dataset if not isinstance(self.eval_dataset, dict) else None
        if eval_dataset is None or not has_cost(model):
            return None, None
        outputs, _ = self.predict_outputs(eval_dataset, ("source_logits", "logits"))
        plan = mean_transport_plan(
            outputs["source_logits"], outputs["logits"], model.cost_matrix.detach().cpu(),
            epsilon=self.args.ot_epsilon, iterations=self.args.ot_iterations, method=self.args.ot_method,
            tol=self.args.ot_tol,
        )  # fmt: skip
        return plan, len(outputs["logits"])

    def push_to_hub(self, *args: Any, **kwargs: Any):
        """:meth:`Trainer.push_to_hub`, with the card's transport plan computed on every process first.

        Trainer hands the card to the main process alone; a forward pass there would wait forever
        for the other processes under FSDP. So the plan is computed here, where all processes are.
        """
        self._card_plan = self.card_transport_plan()
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            self._card_plan = None


def _as_list(eval_dataset: Any) -> list:
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, dict):
        return list(eval_dataset.values())
    return [eval_dataset]
