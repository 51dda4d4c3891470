"""What results tables, figures and model cards call each method: title, figure label, colour, OT or not.

The built-in methods' entries are here, below the training code, so that a figure or a card (the
presentation layer) names a method without importing the method registry, which pulls in training.
The registry's built-ins take their entries from here (:func:`style_of`), and
:func:`jtln_hf.methods.register_method` adds the entry of a new method. A name without an entry is
shown as itself (:func:`method_style`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodStyle:
    """``title``: the row title in results tables and cards; ``label`` and ``colour``: the figures';
    ``uses_ot``: the method trains with the OT term (the card says so)."""

    title: str
    label: str
    colour: str
    uses_ot: bool = False


#: Method name -> its style; :func:`jtln_hf.methods.register_method` adds one per registered method.
METHOD_STYLES: dict[str, MethodStyle] = {
    "finetune": MethodStyle("fine-tuning on target only", "target only", "tab:gray"),
    "consecutive": MethodStyle("consecutive fine-tuning, source then target", "consecutive", "tab:orange"),
    "joint": MethodStyle("joint fine-tuning, two heads, no OT", "joint (no OT)", "tab:blue"),
    "jtln": MethodStyle("JTLN (joint + OT)", "JTLN", "tab:green", uses_ot=True),
    "cotuning": MethodStyle("Co-Tuning (joint + soft source labels)", "Co-Tuning", "tab:purple"),
}
#: The colour of a method without a style.
FALLBACK_COLOUR = "tab:brown"


def method_style(name: str) -> MethodStyle:
    """The style of method ``name``; a name without one is its own title and label."""
    return METHOD_STYLES.get(name) or MethodStyle(name, name, FALLBACK_COLOUR)


def default_method(uses_ot: bool) -> str:
    """The method a two-head run is when its caller does not say: JTLN with the OT term, joint fine-tuning without.

    What a card names when it knows only the run's settings (e.g. ``JTLNTrainer.push_to_hub()``).
    """
    return "jtln" if uses_ot else "joint"


def style_of(name: str) -> dict[str, Any]:
    """A built-in method's style as :func:`jtln_hf.methods.register_method`'s keyword arguments."""
    return dataclasses.asdict(METHOD_STYLES[name])


__all__ = ["FALLBACK_COLOUR", "METHOD_STYLES", "MethodStyle", "default_method", "method_style", "style_of"]
