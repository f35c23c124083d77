"""The ``vitcompress`` console script: thin; builds configs and calls the public verbs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from vitcompress.errors import VitCompressError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files "
                   "(default: /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitcompress", description="Compress vision transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="evaluate the reference models (and compress them) on Fashion-MNIST")
    _add_common(p)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("eval", help="evaluate a model on the test set")
    _add_common(p)
    p.add_argument("--model", required=True, help="zoo name, timm:<name>, or a compressed-model folder")
    p.add_argument("--checkpoint", default=None, help="local weights for timm:<name> models")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "imagefolder"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("zoo", help="reference models: list, train")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    z = zsub.add_parser("list", help="list the reference models and their manifests")
    z.add_argument("--json", action="store_true")
    z = zsub.add_parser("train", help="train a reference model with its seeded recipe (resumable)")
    _add_common(z)
    z.add_argument("name", help="zoo model name")
    z.add_argument("--state-dir", default=None, help="resumable state (default: runs/zoo/NAME)")
    z.add_argument("--out-dir", default=None, help="where to write NAME.safetensors/.json (default: the zoo)")
    z.add_argument("--no-resume", action="store_true", help="start over even if a state exists")
    return parser


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


@command("zoo")
def _zoo(args: argparse.Namespace) -> int:
    from vitcompress.models.zoo import ZOO

    if args.zoo_command == "list":
        from vitcompress.models.registry import read_manifest

        rows = []
        for name, entry in ZOO.items():
            m = read_manifest(name) if entry.manifest.is_file() else {}
            rows.append({"name": name, "description": entry.description, "params": m.get("params"),
                         "macs": m.get("macs"), "test_top1": m.get("test_top1")})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['name']:<14} top1={r['test_top1']}  params={r['params']}  macs={r['macs']}\n"
                      f"{'':<14} {r['description']}")
        return 0
    from vitcompress.models.train_zoo import train_zoo_model

    if args.name not in ZOO:
        raise VitCompressError(f"unknown zoo model {args.name!r}: known names are {sorted(ZOO)}")
    manifest = train_zoo_model(args.name, args.state_dir or f"runs/zoo/{args.name}", args.data_root,
                               args.out_dir, resume=not args.no_resume)
    print(json.dumps(manifest, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _set_threads(args)
    try:
        return COMMANDS[args.command](args)
    except VitCompressError as e:
        print(f"vitcompress: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
