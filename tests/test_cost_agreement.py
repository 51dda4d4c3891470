"""jtln_hf.cost.agreement: how far a cost's relations are from a reference's (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest

from jtln_hf.data.fashion_mnist import FASHION_MNIST_PRIOR_PATH

from jtln_hf.cost import cheapest_source_agreement, load_cost, shuffle_cost_columns

PRIOR = load_cost(FASHION_MNIST_PRIOR_PATH)  # rows T-shirt/top, Trouser, Pullover, Dress, Sneaker


def test_the_prior_agrees_with_itself_and_with_any_order_preserving_rescaling():
    assert cheapest_source_agreement(PRIOR, PRIOR) == 1.0
    assert cheapest_source_agreement(3 * PRIOR + 1, PRIOR) == 1.0


def test_agreement_by_hand_on_the_prior():
    # the prior's cheapest sources: Shirt {T-shirt}, Coat {Pullover}, Sandal {Sneaker},
    # Bag {T-shirt, Pullover, Dress, Sneaker} (0.8, Trouser 1), Ankle boot {Sneaker}
    constant = np.ones_like(PRIOR)  # argmin: the first row, T-shirt/top, in every column
    assert cheapest_source_agreement(constant, PRIOR) == 2 / 5  # Shirt and Bag
    pullover_everywhere = np.ones_like(PRIOR)
    pullover_everywhere[2] = 0.0
    assert cheapest_source_agreement(pullover_everywhere, PRIOR) == 2 / 5  # Coat and Bag
    trouser_everywhere = np.ones_like(PRIOR)
    trouser_everywhere[1] = 0.0
    assert cheapest_source_agreement(trouser_everywhere, PRIOR) == 0.0


def test_a_constant_reference_column_is_left_out():
    reference = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 0.0]])  # the middle column says nothing
    cost = np.array([[0.0, 5.0, 0.0], [1.0, 0.0, 1.0]])  # agrees on column 0, not on column 2
    assert cheapest_source_agreement(cost, reference) == 1 / 2
    assert cheapest_source_agreement(cost, np.ones((2, 3))) is None


def test_a_shuffled_prior_agrees_less():
    shuffled, perm = shuffle_cost_columns(PRIOR, 0)
    by_hand = np.mean([PRIOR[PRIOR[:, perm[j]].argmin(), j] == PRIOR[:, j].min() for j in range(5)])
    assert cheapest_source_agreement(shuffled, PRIOR) == by_hand < 1.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"the cost has shape \(5, 4\) and the reference \(5, 5\)"):
        cheapest_source_agreement(PRIOR[:, :4], PRIOR)
