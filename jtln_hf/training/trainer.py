"""JTLNTrainer: transformers' Trainer with the JTLN objective and paired source/target batches.

Trainer keeps the loop, optimiser, schedule, mixed precision, gradient accumulation, DDP,
checkpoints and logging. This subclass changes:

* ``get_train_dataloader`` draws batches with :class:`jtln_hf.data.PairedBatchSampler`, so every
  per-device batch holds the configured share of source rows;
* ``compute_loss`` evaluates :func:`jtln_hf.training.loss.jtln_loss` on the model's two heads, plus the
  terms of :meth:`~JTLNTrainer.extra_loss` (a subclass's hook); in training it returns the whole
  objective, in evaluation (model in eval mode) the target cross-entropy alone, so ``eval_loss``
  means the same for every method and the other parts are reported as ``eval_<part>``;
* ``log`` adds the mean of each part named in ``loss_parts`` since the last log, and with several
  processes a check that failed on one of them raises on all (at ``log`` and at the end of ``predict``);
* ``predict_outputs`` returns any model outputs over a dataset, gathered over processes.

It owns, visibly, what keeps the step free of host-device waits: the solver choice per cost
(:class:`~jtln_hf.training.state.SolverChoice`) and the check read a step later
(:class:`~jtln_hf.training.state.DeferredCheck`).

For the Hub it also defaults ``processing_class`` to the model's
:class:`~jtln_hf.JointImageClassifierImageProcessor` (so every saved checkpoint has its
``preprocessor_config.json``), and ``create_model_card`` writes the JTLN card with its figures, so
``trainer.push_to_hub()`` publishes a checkpoint that loads in a pipeline and explains itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import seed_worker
from transformers.utils import logging

from ..data import PairedBatchSampler, collate
from ..data.labels import check_labels, domains_of
from ..image_processing_jtln import JointImageClassifierImageProcessor
from ..metrics import compute_classification_metrics
from ..utils.styles import default_method
from .arguments import JTLNTrainingArguments, loss_settings
from .bad_images import BadImagesMixin
from .loss import LossSettings, jtln_loss, rows_of, split_rows, step_stats, wrong_domain_rows
from .state import DeferredCheck, PartMeans, SolverChoice
from .streaming import StreamTrainingMixin

logger = logging.get_logger(__name__)


class Rows(NamedTuple):
    """Positions of a batch's source and target rows; ``counted``: cut at the sampler's count, so
    still to be checked against ``domain`` (lazily, :class:`~jtln_hf.training.state.DeferredCheck`)."""

    source: torch.Tensor
    target: torch.Tensor
    counted: bool = False


class JTLNTrainer(BadImagesMixin, StreamTrainingMixin, Trainer):
    """Trainer for a :class:`~jtln_hf.JointImageClassifier` on mixed source/target datasets.

    ``train_dataset`` needs ``image``, ``label`` and ``domain`` columns (see
    :func:`jtln_hf.data.build_joint_dataset`) and a transform producing ``pixel_values``, or is a
    streamed source's :class:`~jtln_hf.data.stream.PairedStream` (:mod:`jtln_hf.training.streaming`); a
    dataset without ``domain`` is all target rows, as are evaluation datasets (``domain`` 1). Labels
    are checked before the first step; unreadable rows skipped are counted (:mod:`jtln_hf.training.bad_images`).
    Arguments are keyword-only, as :class:`transformers.Trainer`'s (``model``, ``args`` ...).

    The mixins hold only their own state and wrap Trainer's methods through ``super()``: ``train`` runs
    :class:`BadImagesMixin`'s, :class:`StreamTrainingMixin`'s, then Trainer's; ``log`` this class's, then
    :class:`BadImagesMixin`'s. A training batch's composition is set here, for both loaders.
    """

    #: The loss parts logged (mean since the last log) beside ``loss``; a subclass adding a term extends it.
    loss_parts: tuple[str, ...] = ("ce_target", "ce_source", "ot")

    def __init__(self, *, model=None, args: JTLNTrainingArguments | None = None, data_collator=collate,
                 processing_class=None, compute_metrics=compute_classification_metrics, **kwargs: Any) -> None:  # fmt: skip
        data_config = getattr(getattr(model, "config", None), "data_config", None)
        if processing_class is None and data_config:
            # saved with every checkpoint: AutoImageProcessor / pipeline work on it
            processing_class = JointImageClassifierImageProcessor(data_config=data_config)
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class,
                         compute_metrics=compute_metrics, **kwargs)  # fmt: skip
        if not isinstance(self.args, JTLNTrainingArguments):
            raise TypeError("JTLNTrainer needs JTLNTrainingArguments (it adds the JTLN loss weights).")
        self.loss_settings: LossSettings = loss_settings(self.args)
        self.solver_choice = SolverChoice(self.loss_settings)
        # on several processes a failed check must stop every one of them: see _raise_on_every_process
        self.checks = DeferredCheck(defer_errors=self.accelerator.num_processes > 1)
        self._part_means = {"train": PartMeans(), "eval": PartMeans()}
        self._train_composition: tuple[int, int] | None = None  # (batch size, source rows) per device batch
        config = self.accelerator.unwrap_model(self.model).config
        for ds in [None if self.streams_source else self.train_dataset] + _as_list(self.eval_dataset):
            if ds is not None:  # a stream's labels come ranged from open_streaming_source
                check_labels(ds, config.num_source_labels, config.num_labels)
        # shape, NaN/inf/negative entries, all zeros, and a kernel solver that would underflow: before step 1
        cost = self.accelerator.unwrap_model(self.model).cost_matrix
        self.loss_settings.check_cost(cost, config.num_source_labels, config.num_labels)
        if self.loss_settings.uses_ot:
            self.solver_choice(cost)

    # ------------------------------------------------------------------------------- data
    def get_train_dataloader(self) -> DataLoader:
        """Per-device batches from :class:`PairedBatchSampler`; Accelerate shards whole batches (a stream: its own loader)."""
        if self.train_dataset is None:
            raise ValueError("JTLNTrainer: training requires a train_dataset.")
        if self.streams_source:  # whole per-device batches of n_source + n_target rows, from the stream's own loader
            stream = self.train_dataset
            self._train_composition = (stream.n_source + stream.n_target, stream.n_source)
            return self.stream_dataloader()
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
            prefetch_factor=self.args.dataloader_prefetch_factor if self.args.dataloader_num_workers > 0 else None,
            worker_init_fn=lambda worker_id: seed_worker(
                worker_id, self.args.dataloader_num_workers, self.args.process_index
            ),
        )
        self._train_composition = (sampler.batch_size, sampler.n_source)
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------------------------- loss
    def select_rows(self, inputs: dict[str, torch.Tensor], training: bool) -> Rows:
        """The positions of the batch's source and target rows; rows without ``domain`` count as target.

        In training, :class:`PairedBatchSampler`'s batches hold exactly ``n_source`` source rows:
        known on the host, so the rows are cut without waiting for the device (:func:`jtln_hf.training.loss.split_rows`,
        checked a step later). Otherwise they are found from ``domain`` (on a GPU the host waits for it).
        """
        labels, domain = inputs["labels"], inputs.get("domain")
        if domain is None:
            return Rows(torch.zeros(0, dtype=torch.long, device=labels.device),
                        torch.arange(labels.shape[0], device=labels.device))
        if training and self._train_composition and labels.shape[0] == self._train_composition[0]:
            return Rows(*split_rows(domain, self._train_composition[1]), counted=True)
        return Rows(*rows_of(domain))

    def extra_loss(self, outputs: Any, labels: torch.Tensor, rows: Rows) -> dict[str, tuple[float, torch.Tensor]]:
        """Terms a subclass adds to the objective: ``{name: (weight, unweighted term)}``; none here.

        The trainer adds ``weight * term`` to the loss in training, and logs ``term`` under ``name``
        when ``name`` is in :attr:`loss_parts`.
        """
        return {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The JTLN objective (:func:`jtln_hf.training.loss.jtln_loss`) plus :meth:`extra_loss`; in evaluation, ``ce_target``.

        The parts go to the means logged (training) or reported as ``eval_<part>`` (evaluation).
        """
        outputs = model(pixel_values=inputs["pixel_values"])
        labels = inputs["labels"]
        rows = self.select_rows(inputs, model.training)
        cost = self.accelerator.unwrap_model(model).cost_matrix
        solver = self.solver_choice(cost) if self.loss_settings.uses_ot else None
        parts = jtln_loss(outputs.logits, outputs.source_logits, labels, cost, self.loss_settings,
                          source_rows=rows.source, target_rows=rows.target, solver=solver)  # fmt: skip
        wrong = wrong_domain_rows(inputs["domain"], rows.source, rows.target) if rows.counted else None
        stats = step_stats(wrong, parts.pop("prob_ranges", None))
        if stats is not None:
            self.checks.queue(stats)
        loss = parts["loss"]
        for name, (weight, term) in self.extra_loss(outputs, labels, rows).items():
            loss = loss + weight * term
            parts[name] = term
        self._part_means["train" if model.training else "eval"].add(parts, self.loss_parts)
        if not model.training:
            loss = parts["ce_target"]  # eval_loss: the target cross-entropy, the same quantity for every method
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):  # fmt: skip
        """Trainer's loop; the metrics add ``<prefix>_<part>``, the mean over batches of each other loss part."""
        self._part_means["eval"] = PartMeans()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        means = self._part_means["eval"].take(self.loss_parts, self.accelerator)
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in means.items() if k != "ce_target"})
        return output

    def predict(self, *args, **kwargs):
        """As :meth:`transformers.Trainer.predict`; on several processes, a failed check raises on all."""
        output = super().predict(*args, **kwargs)
        self._raise_on_every_process()  # predict does not log: its checks meet here
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each of :attr:`loss_parts` since the last log (averaged over processes).

        Raises the ``ValueError`` of a failed check (NaN logits, wrong-domain rows); on several
        processes, on every process (see :meth:`_raise_on_every_process`).
        """
        self.checks.flush()  # the last step's NaN check, before its loss is reported
        self._raise_on_every_process()
        if "loss" in logs:
            logs.update(self._part_means["train"].take(self.loss_parts, self.accelerator))
        super().log(logs, start_time)

    def _raise_on_every_process(self) -> None:
        """On several processes, raise a check that failed on any of them on all of them.

        Problem: a process whose shard diverged (NaN logits) raised alone, in its loss, and the
        others waited in the next gradient all-reduce until the process group's timeout. Fix: the
        trainer's :class:`~jtln_hf.training.state.DeferredCheck` keeps the failure and its process trains on to the next
        point where all processes meet anyway: ``log`` (Trainer calls it on every
        process: logging steps, after evaluation, end of training) and the end of ``predict``.
        There one integer is all-reduced, the MIN of ``checks read x world size + rank`` (the
        first failure wins: a NaN reaches every process with the next gradients), and only on
        failure that process broadcasts its message, which every process raises. One collective
        per log and none per step, so the healthy path still never waits for the device; the
        price is a failure raised up to ``logging_steps`` steps late. One process: nothing to do
        (the check raises at once).
        """
        if not self.checks.defer_errors:
            return
        self.checks.flush()
        failed = self.checks.take_error()
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

    # ------------------------------------------------------------------------- prediction
    def predict_outputs(self, dataset, fields: tuple[str, ...] = ("logits",)) -> tuple[dict[str, np.ndarray], Any]:
        """The model's output ``fields`` on every row of ``dataset``, in row order, and its labels.

        The one forward pass over a dataset outside training (the card's transport plan, the
        features of ``features-*`` costs, Co-Tuning's relationship): batches of
        ``per_device_eval_batch_size`` from :meth:`get_test_dataloader`, the model in eval mode
        under the evaluation's precision (prepared by Accelerate as Trainer's evaluation loop
        prepares it; ``*_full_eval`` does not cast it here), sharded over processes and gathered
        back with ``gather_for_metrics`` (tested with DDP). Every process must call it; each gets
        the whole arrays. Labels are not passed to the model (no loss is computed).

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
            The ``labels`` of the rows (None when ``dataset`` has none).
        """
        loader = self.get_test_dataloader(dataset)
        model = self._evaluation_model()
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in fields}
        labels: list[torch.Tensor] = []
        was_training = model.training
        model.eval()
        try:
            for inputs in loader:
                with torch.no_grad(), self.compute_loss_context_manager():
                    outputs = model(pixel_values=inputs["pixel_values"])
                values = self.accelerator.gather_for_metrics(tuple(getattr(outputs, n).detach().float() for n in fields))
                for name, value in zip(fields, values):
                    chunks[name].append(value.cpu())
                if inputs.get("labels") is not None:
                    labels.append(self.accelerator.gather_for_metrics(inputs["labels"]).cpu())
        finally:
            model.train(was_training)
        arrays = {name: torch.cat(chunks[name]).numpy().astype(np.float32, copy=False) for name in fields}
        return arrays, (torch.cat(labels).numpy() if labels else None)

    def _evaluation_model(self):
        """The model as Trainer's evaluation loop runs it: prepared by Accelerate once (device, autocast)."""
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:
            fsdp = self.is_fsdp_enabled and not self.args.torch_compile
            model = self.accelerator.prepare(model) if fsdp else self.accelerator.prepare_model(model, evaluation_mode=True)
            if fsdp:
                self.model = model
            if model is not self.model:
                self.model_wrapped = model
        return model

    # ------------------------------------------------------------------------------- card
    def card_transport_plan(self) -> tuple[np.ndarray | None, int | None]:
        """The mean transport plan over ``eval_dataset`` for the card, and its image count (None, None without one).

        A forward pass through :meth:`predict_outputs`: every process must call it.
        """
        from ..sharing.modelcard import has_cost

        model = self.accelerator.unwrap_model(self.model)
        eval_dataset = self.eval_dataset if not isinstance(self.eval_dataset, dict) else None
        if eval_dataset is None or not has_cost(model):
            return None, None
        outputs, _ = self.predict_outputs(eval_dataset, ("source_logits", "logits"))
        plan = self.loss_settings.mean_transport_plan(outputs["source_logits"], outputs["logits"],
                                                      model.cost_matrix.detach().cpu())
        return plan, len(outputs["logits"])

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
        transport_plan: tuple[np.ndarray | None, int | None] | None = None,
        method: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the JTLN card (``README.md``) and its figures into ``args.output_dir``.

        Replaces transformers' generic card, so ``push_to_hub`` publishes it. The card shows the
        label sets, the cost matrix (heatmap), the mean transport plan ``transport_plan`` (from
        :meth:`card_transport_plan`; computed here when not given on one process, left out on
        several), the hyper-parameters and the latest evaluation metrics. ``method`` names what
        trained the model (a :data:`jtln_hf.utils.styles.METHOD_STYLES` name, e.g. ``"cotuning"``);
        by default the one the settings say (:func:`jtln_hf.utils.styles.default_method`).
        ``dataset`` (Hub dataset ids), ``license``, ``tags`` and ``finetuned_from`` (the base
        model) go to the metadata; ``language``, ``tasks``, ``dataset_tags`` and ``dataset_args``
        are not used (the task is image classification, the data images); other keyword
        arguments of :func:`jtln_hf.sharing.modelcard.render_model_card` (``cost_description``,
        ``results_table`` ...) may be passed through ``push_to_hub(**kwargs)``.
        """
        if not self.is_world_process_zero():
            return
        from ..sharing import modelcard  # imported here: it pulls in matplotlib, which training does not need

        model = self.accelerator.unwrap_model(self.model)
        if transport_plan is None and self.args.world_size == 1:
            transport_plan = self.card_transport_plan()
        elif transport_plan is None:  # on the main process alone: a forward pass here could not gather the others'
            logger.warning("create_model_card: no transport plan (call push_to_hub, which computes it on every process).")
        plan, plan_images = transport_plan or (None, None)
        metrics = {}
        for entry in self.state.log_history:  # the latest value of each evaluation metric
            metrics.update({k.removeprefix("eval_"): v for k, v in entry.items()
                            if k in ("eval_accuracy", "eval_mean_per_class_accuracy")})  # fmt: skip
        datasets = [dataset] if isinstance(dataset, str) else list(dataset) if dataset else None
        repo_id = self.hub_model_id or self.args.hub_model_id  # None or a bare name: the card says "placeholder"
        kwargs.setdefault("cost_description", "")
        modelcard.write_model_card(
            self.args.output_dir, model, plan=plan, plan_images=plan_images,
            repo_id=repo_id, model_name=model_name or (repo_id.split("/")[-1] if repo_id else None),
            hyperparameters=modelcard.training_hyperparameters(
                self.args, steps=self.state.global_step or None, ot_used=self.loss_settings.uses_ot
            ),
            metrics=metrics, datasets=datasets, license=license or "apache-2.0",
            tags=[tags] if isinstance(tags, str) else tags, base_model=finetuned_from,
            method=method or default_method(uses_ot=self.loss_settings.uses_ot), **kwargs,
        )  # fmt: skip

    def push_to_hub(self, *args: Any, transport_plan: tuple[np.ndarray | None, int | None] | None = None,
                    **kwargs: Any):  # fmt: skip
        """:meth:`Trainer.push_to_hub`, with the card's ``transport_plan`` computed on every process first.

        Trainer hands the card to the main process alone; a forward pass there would wait forever
        for the other processes under FSDP. So :meth:`card_transport_plan` runs here, where all
        processes are, and its result goes to :meth:`create_model_card` as an argument.
        """
        if transport_plan is None:
            transport_plan = self.card_transport_plan()
        return super().push_to_hub(*args, transport_plan=transport_plan, **kwargs)


def _as_list(eval_dataset: Any) -> list:
    return [] if eval_dataset is None else list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]


__all__ = ["JTLNTrainer", "Rows"]
