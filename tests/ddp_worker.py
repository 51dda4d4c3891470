"""A short JTLN training for tests/test_distributed.py, run by torchrun (2 CPU processes, gloo) or alone.

Real Fashion-MNIST rows, deterministic transforms (no augmentation, so that both launches see
identical pixels) and a LayerNorm backbone (timm ``test_vit``, patch 4: no batch statistics), so
that 2 processes x batch b and 1 process x batch 2b compute the same objective on the same rows.
Each process writes the composition of every batch it trained on; process 0 writes the logged
loss history and the gathered evaluation predictions. ``--nan_rank`` makes one process's logits
NaN at one training step (NaN images), for the test that every process then raises.
``--refresh_every K`` recomputes C every K steps from the source head's predictions on the labelled
target rows (:class:`jtln_hf.cost.refresh.CostRefresh`), and each process writes the cost it ends with.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import numpy as np
import torch

from jtln_hf import JointImageClassifier, JointImageClassifierConfig
from jtln_hf.data import (
    FASHION_MNIST_DATA_CONFIG,
    build_joint_dataset,
    build_transform,
    load_fashion_mnist,
    make_batch_transform,
    sample_shots,
    split_by_classes,
)
from jtln_hf.training import JTLNTrainer, JTLNTrainingArguments


class RecordingTrainer(JTLNTrainer):
    """Records (source rows, target rows) of every training batch this process sees."""

    compositions: list[tuple[int, int]]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            domain = inputs["domain"]
            self.compositions.append((int((domain == 0).sum()), int((domain == 1).sum())))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, required=True, help="per-device batch")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--eval_rows", type=int, default=101)
    p.add_argument("--logging_steps", type=int, default=1)
    p.add_argument("--ddp_timeout", type=int, default=1800, help="process group timeout, seconds")
    p.add_argument("--nan_rank", type=int, default=-1, help="this process's images are NaN at --nan_step")
    p.add_argument("--nan_step", type=int, default=2, help="1-based training forward pass")
    p.add_argument("--refresh_every", type=int, default=0, help="recompute C every K steps (0: never)")
    a = p.parse_args()
    rank = int(os.environ.get("RANK", 0))

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    source, target = split_by_classes(train, ["Trouser", "Dress", "Sneaker"], ["Shirt", "Bag"])
    _, target_test = split_by_classes(test, ["Trouser", "Dress", "Sneaker"], ["Shirt", "Bag"])
    source, target = sample_shots(source, 40, seed=0), sample_shots(target, 6, seed=0)
    transform = make_batch_transform(build_transform(FASHION_MNIST_DATA_CONFIG, training=False), in_chans=1)
    train_ds = build_joint_dataset(source, target).with_transform(transform)
    eval_ds = build_joint_dataset(None, target_test.select(range(a.eval_rows))).with_transform(transform)

    torch.manual_seed(0)
    config = JointImageClassifierConfig(
        backbone="test_vit",
        backbone_kwargs={"in_chans": 1, "img_size": 28, "patch_size": 4},
        data_config=FASHION_MNIST_DATA_CONFIG,
        source_id2label=dict(enumerate(source.features["label"].names)),
        id2label=dict(enumerate(target.features["label"].names)),
    )
    cost = torch.tensor([[0.0, 1.0], [0.4, 1.0], [1.0, 0.0]])
    model = JointImageClassifier(config, cost_matrix=cost)
    if rank == a.nan_rank:
        forwards = []

        def poison(module, args, kwargs):
            if module.training:
                forwards.append(1)
                if len(forwards) == a.nan_step:
                    return args, {**kwargs, "pixel_values": torch.full_like(kwargs["pixel_values"], float("nan"))}
            return None

        model.register_forward_pre_hook(poison, with_kwargs=True)
    args = JTLNTrainingArguments(
        output_dir=str(a.out / "trainer"),
        use_cpu=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        logging_steps=a.logging_steps,
        ddp_timeout=a.ddp_timeout,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        source_fraction=0.5,
        ot_loss_weight=1.0,
    )
    callbacks = []
    if a.refresh_every:
        from jtln_hf.cost import cost_from_relationship
        from jtln_hf.cost.relationship import relationship_of
        from jtln_hf.cost.refresh import CostRefresh

        labelled = target.with_transform(transform)

        def rebuild():  # every process runs the forward pass (gathered), as the recipe's refresh does
            relationship = relationship_of(trainer.predict_outputs, labelled, 2)
            return cost_from_relationship(relationship)

        callbacks.append(CostRefresh(rebuild, a.refresh_every))
    trainer = RecordingTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               callbacks=callbacks)  # fmt: skip
    trainer.compositions = []
    trainer.train()
    prediction = trainer.predict(eval_ds)
    outputs, labels = trainer.predict_outputs(eval_ds, ("logits", "pooler_output"))
    a.out.mkdir(parents=True, exist_ok=True)
    # the model's own forward pass on each row, alone (no Trainer, no batching, no gathering): what
    # predict_outputs must hand every process, row for row
    model = trainer.model.eval()
    with torch.no_grad():
        forward = [model(pixel_values=eval_ds[i]["pixel_values"][None]) for i in range(len(eval_ds))]
    np.savez(
        a.out / f"rank{rank}_outputs.npz",
        logits=outputs["logits"],
        pooler_output=outputs["pooler_output"],
        forward_logits=torch.cat([f.logits for f in forward]).numpy(),
        forward_pooler_output=torch.cat([f.pooler_output for f in forward]).numpy(),
    )
    (a.out / f"rank{rank}.json").write_text(
        json.dumps({
            "world_size": trainer.accelerator.num_processes,
            "compositions": trainer.compositions,
            # every process gets every row's outputs, in order (gathered, padding dropped)
            "predicted_rows": len(outputs["logits"]),
            "pooler_shape": list(outputs["pooler_output"].shape),
            "labels_in_order": labels.tolist() == eval_ds.select_columns(["label"]).with_format("numpy")[:]["label"].tolist(),
            "cost_matrix": trainer.model.cost_matrix.tolist(),
            "refreshes": [(e["step"], e["cost_refresh"]) for e in trainer.state.log_history if "cost_refresh" in e],
        })
    )
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (a.out / "history.json").write_text(
            json.dumps(
                {
                    "losses": losses,
                    "num_predictions": int(prediction.predictions.shape[0]),
                    "accuracy": prediction.metrics["test_accuracy"],
                    # the accuracy of the gathered predictions, counted here: a count over the rows, one division
                    "correct": int((prediction.predictions.argmax(-1) == prediction.label_ids).sum()),
                }
            )
        )


if __name__ == "__main__":
    gc.freeze()  # the imports' objects, as recipes/train_jtln.py's entry point freezes them
    main()
