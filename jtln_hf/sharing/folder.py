"""The recipe's ``model/`` folder: everything a trained model is shared with, written atomically.

:func:`save_model` writes the weights and code (:func:`jtln_hf.sharing.hub.save_model_folder`), the card and its
figures (:mod:`jtln_hf.sharing.modelcard`), the demo (:mod:`jtln_hf.sharing.demo`) and, with ``--save_timm``, the
timm export (:mod:`jtln_hf.sharing.timm_export`); a model trained with LoRA adapters is saved merged, its
adapters also alone in ``adapter/`` (:mod:`jtln_hf.training.lora`); ``--push_to_hub`` uploads the folder as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.pools import ExperimentData
from ..data.sources import display_name, hub_dataset_id
from ..methods import METHOD_REGISTRY, MethodSettings, RunResult, baseline_method, predict_outputs
from ..training.arguments import loss_settings
from ..training.lora import ADAPTER_FOLDER, has_lora, merged_model, save_adapter, trainable_share
from ..utils.io import atomic_write_dir
from .demo import write_demo
from .examples import example_images
from .hub import save_model_folder
from .modelcard import default_model_name, has_cost, training_hyperparameters, write_model_card
from .timm_export import TIMM_FOLDER, write_timm_folder

if TYPE_CHECKING:
    from ..training.arguments import JTLNTrainingArguments


def save_model(
    run: RunResult, output_dir: str | Path, args: JTLNTrainingArguments, settings: MethodSettings,
    results_table: str | None = None, *, exp: ExperimentData | None = None,
    summary: dict[str, dict[str, Any]] | None = None,
) -> Path:  # fmt: skip
    """Write the Hub-ready ``output_dir/model`` folder, atomically (``settings``: the plan's data and cost values).

    It holds the weights (safetensors), ``config.json`` and ``preprocessor_config.json`` with their
    remote code (``configuration_jtln.py``, ``modeling_jtln.py``, ``image_processing_jtln.py``),
    the card ``README.md`` and its figures: the cost matrix, the mean transport plan over
    ``exp.target_test`` (when the model has a cost matrix and ``exp`` is given) and, for a
    comparison (``summary`` of several methods), the bar chart. ``--push_to_hub`` uploads it as is.
    Every process must call it (the plan is a gathered forward pass); the main process writes.
    """
    data, method = settings.data, METHOD_REGISTRY[run.method]
    model = merged_model(run.model)  # LoRA adapters merged: the folder's model loads as a full fine-tuning's does
    hyper: dict[str, Any] = {
        "method": method.title,
        "seed": run.seed,
        "labelled images per target class": data.shots or "all",
        **training_hyperparameters(args, ot_used=method.uses_ot),
    }
    hyper["steps"] = run.steps or hyper["steps"]  # the method's budget, e.g. "4 source + 4 target"
    if settings.lora is not None:
        trained, total = trainable_share(run.model)
        hyper["LoRA adapters"] = (f"{settings.lora.describe()}; {trained:,} of {total:,} parameters trained "
                                  f"({trained / total:.2%}, the heads included); merged here, alone in "
                                  f"`{ADAPTER_FOLDER}/`")  # fmt: skip
    plan, plan_images = None, None
    if exp is not None and has_cost(model):
        outputs, _ = predict_outputs(model, exp.target_test, data, args, ("source_logits", "logits"))
        plan = loss_settings(args).mean_transport_plan(outputs["source_logits"], outputs["logits"],
                                                       model.cost_matrix.detach().cpu())
        plan_images = len(outputs["logits"])
    specs = data.specs
    dataset_ids = [i for i in dict.fromkeys(hub_dataset_id(spec) for spec in specs) if i]  # local data: no id
    data_name = display_name(specs[-1])
    target_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    normalized = method.uses_ot and settings.cost.normalized
    card_kwargs = dict(
        repo_id=args.hub_model_id,  # None: the card names a placeholder built from method, backbone and data
        model_name=None if args.hub_model_id else default_model_name(run.method, model.config.backbone, data_name),
        method=run.method,
        seed=run.seed,
        cost_description=run.cost_description or "No cost matrix was used (no OT term).",
        cost_normalization=settings.cost.normalization if normalized else None,
        hyperparameters=hyper,
        results_table=results_table,
        metrics={k: v for k, v in run.metrics.items() if k != "loss"},
        datasets=dataset_ids,
        dataset_name=f"{data_name} {data.test_split_name} split, target classes ({', '.join(target_names)})",
        eval_dataset=hub_dataset_id(specs[-1]) or data_name,
        baseline=baseline_method(),
        source_head_trained=method.trains_source,
    )

    examples = example_images(exp.target_test, target_names) if exp is not None else []
    ot_settings = {"epsilon": args.ot_epsilon, "iterations": args.ot_iterations, "method": args.ot_method,
                   "tol": args.ot_tol}  # fmt: skip

    # The repository the JTLN folder goes to: --hub_model_id, or (pushed without one) the output folder's
    # name, as the recipe's push does; unpushed and unnamed, the cards' placeholder.
    jtln_repo = args.hub_model_id or (Path(args.output_dir).resolve().name if args.push_to_hub else None)
    jtln_repo = jtln_repo or f"your-name/{card_kwargs['model_name']}"
    timm_id = timm_repo_id(jtln_repo, args.hub_timm_model_id)
    if args.save_timm:  # the card says where the plain timm copy is: its own repository once pushed, else the folder
        card_kwargs["timm_export"] = f"hf-hub:{timm_id}" if args.push_to_hub else f"local-dir:{TIMM_FOLDER}"

    def write(folder: Path) -> None:
        save_model_folder(model, folder)
        if has_lora(run.model):
            save_adapter(run.model, folder / ADAPTER_FOLDER)
        write_model_card(folder, model, plan=plan, plan_images=plan_images, summary=summary, **card_kwargs)
        write_demo(folder, model, examples, ot_settings=ot_settings)
        if args.save_timm:
            write_timm_folder(
                model, folder / TIMM_FOLDER, repo_id=timm_id, jtln_repo_id=jtln_repo, examples=examples,
                metrics=card_kwargs["metrics"], datasets=dataset_ids, dataset_name=card_kwargs["dataset_name"],
                eval_dataset=card_kwargs["eval_dataset"], space_id=args.push_space,
            )  # fmt: skip

    if not args.should_save:  # under `accelerate launch`: the plan above needs every process, the files one
        return Path(output_dir) / "model"
    return atomic_write_dir(Path(output_dir) / "model", write)


def timm_repo_id(repo_id: str, timm_model_id: str | None = None) -> str:
    """The timm export's repository: ``--hub_timm_model_id``, else ``<repo_id>-timm``."""
    return timm_model_id or f"{repo_id}-timm"


__all__ = ["save_model", "timm_repo_id"]
