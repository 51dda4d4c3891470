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

import torch

from .trainer import JTLNTrainer, Rows

#: TLlib's default trade-off between the target cross-entropy and the soft source term.
DEFAULT_COTUNING_WEIGHT = 2.3


def soft_cross_entropy(logits: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
    r"""Mean over rows of :math:`-\sum_i q_i \log \mathrm{softmax}(z)_i` (0 for no rows), in float32."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # keeps the graph: every parameter still gets a (zero) gradient
    return -(soft_labels.to(torch.float32) * torch.log_softmax(logits.float(), -1)).sum(-1).mean()


class CoTuningTrainer(JTLNTrainer):
    """:class:`~jtln_hf.training.trainer.JTLNTrainer` whose objective adds Co-Tuning's soft source term on target rows.

    The term comes in through :meth:`~jtln_hf.training.trainer.JTLNTrainer.extra_loss` and is logged as
    ``cotuning`` (``eval_cotuning`` in evaluation, where ``eval_loss`` stays the target cross-entropy).
    Its card names the method only if told: ``push_to_hub(method="cotuning")``.

    Args:
        relationship (`torch.Tensor` of shape `(L_t, L_s)`): :math:`p(y_s \\mid y_t)`, each row a
            distribution over the source classes.
        cotuning_weight (`float`): :math:`\\lambda_{ct}`.
        Other arguments: as :class:`~jtln_hf.training.trainer.JTLNTrainer`, keyword-only (use ``ot_loss_weight=0``).
    """

    loss_parts = (*JTLNTrainer.loss_parts, "cotuning")

    def __init__(self, *, relationship: torch.Tensor, cotuning_weight: float = DEFAULT_COTUNING_WEIGHT,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(**kwargs)
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

    def extra_loss(self, outputs, labels: torch.Tensor, rows: Rows) -> dict[str, tuple[float, torch.Tensor]]:
        """``{"cotuning": (λ_ct, soft source cross-entropy on the target rows)}``."""
        soft = self.relationship.to(labels.device)[labels[rows.target]]
        return {"cotuning": (self.cotuning_weight, soft_cross_entropy(outputs.source_logits[rows.target], soft))}


__all__ = ["DEFAULT_COTUNING_WEIGHT", "CoTuningTrainer", "soft_cross_entropy"]
