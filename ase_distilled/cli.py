"""``ase-distilled SUBCOMMAND``: the command-line face of the package.

Each subcommand is an ``_add_<name>`` function that declares its arguments and
a ``_run_<name>`` function that calls the library; heavy imports stay inside
the ``_run_`` functions so that ``ase-distilled --help`` is instant.
"""

import argparse
import sys


def _add_list(subparsers):
    parser = subparsers.add_parser("list", help="list the shipped students")
    parser.set_defaults(func=_run_list)


def _run_list(args):
    from ase_distilled.registry import available_models, model_info

    names = available_models()
    if not names:
        print("No students are shipped in this installation.")
    for name in names:
        print(f"{name:12s} {model_info(name)['summary']}")


def _add_info(subparsers):
    parser = subparsers.add_parser("info", help="show a student's model card")
    parser.add_argument("model", help="shipped name or checkpoint path")
    parser.set_defaults(func=_run_info)


def _run_info(args):
    from ase_distilled.registry import WEIGHTS_DIR, available_models, model_info

    if args.model in available_models():
        card = WEIGHTS_DIR / model_info(args.model)["file"].replace(".pt", ".md")
        if card.is_file():
            print(card.read_text())
            return
    import json

    from ase_distilled.registry import load_model

    model = load_model(args.model)
    print(json.dumps({"model_config": model.config.to_dict(),
                      "parameters": model.num_parameters(),
                      "metadata": getattr(model, "metadata", {})}, indent=2, default=str))


# Subcommands in the order `--help` lists them.
_COMMANDS = [_add_list, _add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ase-distilled",
        description="Small, fast PaiNN students distilled from large force fields.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, KeyError, FileNotFoundError, ImportError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ase-distilled {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
