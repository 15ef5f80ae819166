"""``python -m timm_local.hub {export,push,table}``: publish training runs to the Hugging Face Hub."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m timm_local.hub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write hub_cards/<name>/ (config.json, model.safetensors, README.md)")
    export.add_argument("run", help="a run folder (exports its last.pth.tar) or a checkpoint file")
    export.add_argument("--name", default=None, help="<arch>.<tag> (default: <arch>.k<K>_<dataset>)")
    export.add_argument("--hub-dir", "--out", dest="hub_dir", default=None,
                        help="parent folder of the model folders (default: the repository's hub_cards/)")
    export.add_argument("--bench-json", default=None,
                        help="benchmark JSON with this model's and E2E's peak training memory "
                             "(format: see timm_local.hub.memory)")
    export.add_argument("--reference-run", default=None, metavar="E2E_RUN",
                        help="the E2E run folder of the same recipe, or its record (args.yaml + results.json): "
                             "its final top-1 goes on the card")

    push = commands.add_parser("push", help="upload an exported folder with huggingface_hub")
    push.add_argument("folder", help="hub_cards/<name>")
    push.add_argument("--repo-id", default=None, help="<org>/<name> (default: $TIMM_LOCAL_HUB_ORG or timm-local)")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--commit-message", default=None)

    table = commands.add_parser("table", help="print the markdown table of published models")
    table.add_argument("--hub-dir", default=None, help="default: the repository's hub_cards/")
    table.add_argument("--update", default=None, metavar="README",
                       help="also write the table between the marker lines of this file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export":
            from .export import export_run

            folder = export_run(args.run, name=args.name, hub_dir=args.hub_dir, bench_json=args.bench_json,
                                reference_run=args.reference_run)
            files = sorted(p.name for p in folder.iterdir() if p.is_file())
            print(f"exported {folder}: {', '.join(files)}")
        elif args.command == "push":
            from .push import default_repo_id, push_folder

            repo_id = args.repo_id or default_repo_id(args.folder)
            files = push_folder(args.folder, repo_id, dry_run=args.dry_run, private=args.private,
                                commit_message=args.commit_message)
            verb = "would upload" if args.dry_run else "uploaded"
            print(f"{verb} to https://huggingface.co/{repo_id}:")
            for name in files:
                print(f"  {name}  ({_size((Path(args.folder) / name).stat().st_size)})")
        else:
            from .table import published_table, update_readme

            markdown = published_table(args.hub_dir)
            print(markdown)
            if args.update:
                update_readme(args.update, markdown)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} kB"


if __name__ == "__main__":
    sys.exit(main())
