"""One process of tests/test_two_nodes.py: the recipe, with the source rows of every streamed batch logged.

``python stream_node_worker.py LOG_DIR RECIPE_FLAGS...`` (under torchrun) runs ``recipes/train_jtln.py``'s
``main`` unchanged; each :class:`~jtln_hf.data.stream.PairedStream` batch it builds appends a line
``{"rank", "world_size", "source": [row identities], "target": n}`` to ``LOG_DIR/rank<RANK>.jsonl``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from jtln_hf.data.stream import PairedStream
from jtln_hf.data.stream_source import row_identity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import train_jtln  # noqa: E402


def main() -> int:
    log = Path(sys.argv[1]) / f"rank{os.environ['RANK']}.jsonl"
    collate = PairedStream._collate

    def logged(self, source, target_ids, *rest):  # rest: the stream, for stand-ins of bad rows
        record = {"rank": self.rank, "world_size": self.world_size, "target": len(target_ids),
                  "source": [row_identity(example["image"]) for example in source]}  # fmt: skip
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return collate(self, source, target_ids, *rest)

    PairedStream._collate = logged
    return train_jtln.main(sys.argv[2:])


if __name__ == "__main__":
    gc.freeze()  # as the recipe's own entry point does
    sys.exit(main())
