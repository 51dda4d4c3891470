r"""Co-Tuning (You et al. 2020) as a baseline beside JTLN: soft source labels for target images.

Co-Tuning learns the category relationship :math:`p(y_s \mid y_t)` from the source head's
predictions on the labelled target images (:func:`jtln_hf.cost.category_relationship`), then
trains the source head on each target image against the relationship row of its label, beside
the target cross-entropy:

.. math::

    \mathcal{L} = \mathrm{CE}(h_t(x_t), y_t) + \lambda_s\,\mathrm{CE}(h_s(x_s), y_s)
        + \lambda_{ct}\,\mathrm{CE}\big(h_s(x_t),\, p(\cdot \mid y_t)\big)

Where JTLN couples the two heads through an OT cost, Co-Tuning gives the source head a fixed
soft target per target class. Here it runs on the same joint source/target batches as JTLN
(the source cross-entropy keeps the source head on its task), so the comparison with JTLN
isolates the transfer term. TLlib's ``CoTuning`` trains without source images; its default
trade-off 2.3 is our default :math:`\lambda_{ct}`.

Reference: K. You, Z. Kou, M. Long, J. Wang, "Co-Tuning for Transfer Learning", NeurIPS 2020.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .data import TARGET
from .loss import split_rows
from .trainer import JTLNTrainer

#: TLlib's default trade-off between the target cross-entropy and the soft source term.
DEFAULT_COTUNING_WEIGHT = 2.3


def soft_cross_entropy(logits: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
    r"""Mean over rows of :math:`-\sum_i q_i \log \mathrm{softmax}(z)_i` (0 for no rows), in float32."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # keeps the graph: every parameter still gets a (zero) gradient
    return -(soft_labels.to(torch.float32) * torch.log_softmax(logits.float(), -1)).sum(-1).mean()


class CoTuningTrainer(JTLNTrainer):
    """:class:`~jtln_hf.trainer.JTLNTrainer` whose loss adds Co-Tuning's soft source term on target rows.

    Args:
        relationship (`torch.Tensor` of shape `(L_t, L_s)`): :math:`p(y_s \\mid y_t)`, each row a
            distribution over the source classes.
        cotuning_weight (`float`): :math:`\\lambda_{ct}`.
        Other arguments: as :class:`~jtln_hf.trainer.JTLNTrainer` (use ``ot_loss_weight=0``).
    """

    card_method = "cotuning"  # what its model card names

    def __init__(self, *args, relationship: torch.Tensor, cotuning_weight: float = DEFAULT_COTUNING_WEIGHT,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        config = self.accelerator.unwrap_model(self.model).config
        relationship = torch.as_tensor(relationship, dtype=torch.float32)
        if tuple(relationship.shape) != (config.num_labels, config.num_source_labels):
            raise ValueError(
                f"relationship has shape {tuple(relationship.shape)} but the model needs (L_t, L_s) = "
                f"({config.num_labels}, {config.num_source_labels}): one row per target class "
                "(jtln_hf.cost.category_relationship)."
            )
        if not (cotuning_weight >= 0 and torch.isfinite(torch.tensor(cotuning_weight))):
            raise ValueError(f"cotuning_weight must be a finite number >= 0, got {cotuning_weight}.")
        self.relationship = relationship
        self.cotuning_weight = float(cotuning_weight)
        self._cotuning_sum: torch.Tensor | float = 0.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The joint objective of :class:`JTLNTrainer` plus ``cotuning_weight`` x the soft source term."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        labels, domain = inputs["labels"], inputs.get("domain")
        if domain is None:
            target_rows = torch.arange(labels.shape[0], device=labels.device)
        elif model.training and self._train_composition and labels.shape[0] == self._train_composition[0]:
            target_rows = split_rows(domain, self._train_composition[1])[1]  # known on the host: no sync
        else:
            target_rows = torch.nonzero(domain == TARGET).flatten()
        soft = self.relationship.to(labels.device)[labels[target_rows]]
        term = soft_cross_entropy(outputs.source_logits[target_rows], soft)
        if model.training:
            self._cotuning_sum = self._cotuning_sum + term.detach()
        loss = loss + self.cotuning_weight * term
        return (loss, outputs) if return_outputs else loss

    @contextlib.contextmanager
    def target_loss_only(self) -> Iterator[None]:
        """As :meth:`JTLNTrainer.target_loss_only`, with the soft source term off too."""
        saved = self.cotuning_weight
        self.cotuning_weight = 0.0
        try:
            with super().target_loss_only():
                yield
        finally:
            self.cotuning_weight = saved

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``cotuning``, the mean soft source term since the last log."""
        if "loss" in logs and self._part_count:
            value = self.accelerator.reduce(torch.as_tensor(self._cotuning_sum, dtype=torch.float32).reshape(1),
                                            reduction="mean") / self._part_count  # fmt: skip
            logs["cotuning"] = round(float(value), 6)
            self._cotuning_sum = 0.0
        super().log(logs, start_time)


__all__ = ["DEFAULT_COTUNING_WEIGHT", "CoTuningTrainer", "soft_cross_entropy"]
