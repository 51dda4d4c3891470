"""Write the demo Space's folder for a trained model (then: ``hf upload SPACE_ID OUT . --repo-type space``).

``python recipes/write_space.py OUTPUT_DIR/model OUT --model_id ID [--revision SHA]``: the Space loads the
model ``ID`` from the Hub at ``SHA`` (:func:`jtln_hf.sharing.demo.write_space_folder`).
"""

from __future__ import annotations

from jtln_hf.sharing.demo import write_space_folder


def main(argv: list[str] | None = None) -> None:
    """``python recipes/write_space.py MODEL_FOLDER OUT --model_id ID [--revision SHA]``: write the Space folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python recipes/write_space.py", description="Write the demo Space's folder "
                                     "(then: hf upload SPACE_ID OUT . --repo-type space).")  # fmt: skip
    parser.add_argument("model_folder", help="OUTPUT_DIR/model (with app.py and demo.json)")
    parser.add_argument("out", help="folder to write the Space into")
    parser.add_argument("--model_id", required=True, help="the model's repository on the Hub")
    parser.add_argument("--revision", default=None, help="the model commit the Space loads (default: main)")
    args = parser.parse_args(argv)
    print(write_space_folder(args.model_folder, args.out, model_id=args.model_id, revision=args.revision))


if __name__ == "__main__":
    main()
