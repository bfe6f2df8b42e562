"""The ``posterior`` command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _train(args: argparse.Namespace) -> None:
    from posterior.priors.training import train

    paths = train(
        args.name,
        args.out,
        steps=args.steps,
        classifier_steps=args.classifier_steps,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
        device=args.device,
    )
    for kind, path in paths.items():
        print(f"{kind} written to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="posterior", description="Posterior sampling with diffusion priors."
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: fastest on shared CPUs)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a bundled prior and its noise-level classifier")
    train.add_argument("name", help="recipe: digits or phantoms")
    train.add_argument("--out", type=Path, default=Path("trained"), help="output folder (default: trained/)")
    train.add_argument(
        "--steps", type=int, default=None, help="denoiser steps (default: the recipe's; 0 skips)"
    )
    train.add_argument(
        "--classifier-steps", type=int, default=None, help="classifier steps (default: the recipe's; 0 skips)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--device", default="cpu")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_train)

    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run(args)


if __name__ == "__main__":
    main()
