"""Find a benchmark's files (a local ``--data-dir`` copy or the Hub id) and open one split with ``datasets``.

Contract:
- ``data_dir=None`` loads ``spec.hub_id`` / ``spec.config`` (pinned ``spec.revision``) from the Hub.
- ``data_dir=PATH`` must be a local copy of the Hub repo layout. Two layouts are accepted:
  1. a ``README.md`` whose YAML header lists ``configs:`` (``config_name`` + ``data_files`` per split), exactly
     what ``hf download <hub_id> --repo-type dataset --local-dir PATH`` produces (:func:`download_command`);
  2. no ``configs:`` YAML, parquet files named ``<config>/<split>-*.parquet`` (or ``<split>-*.parquet``
     directly in PATH, or ``data/<split>-*.parquet`` for config-less sets).
  Everything that touches a local copy runs with the Hub offline (:func:`hub_offline`), so nothing reaches
  for the network, and a path that does not exist is an error, never a Hub id.
- Problems raise ``FileNotFoundError`` / ``ValueError`` whose message names the problem and the fix.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .specs import DatasetSpec

__all__ = ["DataSource", "resolve_source", "hub_offline", "layout_hint", "download_command", "check_columns",
           "label_names_of"]


def download_command(spec: DatasetSpec, local_dir: str = "DIR") -> str:
    """The shell command that makes a ``--data-dir`` copy of ``spec`` (``hf``, the CLI of huggingface_hub >= 0.34)."""
    revision = f" --revision {spec.revision}" if spec.revision else ""
    return f"hf download {spec.hub_id} --repo-type dataset{revision} --local-dir {local_dir}"


def layout_hint(spec: DatasetSpec) -> str:
    """One paragraph describing the ``--data-dir`` layout expected for ``spec``."""
    sub = spec.hub_data_dir
    config = spec.config or "default"
    return (
        f"Expected --data-dir layout for {spec.name!r}: a local copy of the Hub dataset {spec.hub_id} "
        f"(e.g. `{download_command(spec)}`), i.e. either a "
        f"README.md whose YAML header lists `configs:` with `config_name: {config}` and `data_files` for the "
        f"splits {spec.train_split!r} and {spec.eval_split!r}, or parquet files "
        f"`{sub}/{spec.train_split}-*.parquet` and `{sub}/{spec.eval_split}-*.parquet`; columns "
        f"{spec.image_column!r} (Image) and {spec.label_column!r} (ClassLabel with {spec.num_classes} names)."
    )


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Run the block with ``datasets`` and ``huggingface_hub`` in offline mode, then restore the settings.

    Sets ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` in the environment and the module-level flags both
    libraries read at call time (they read the environment only at import).
    """
    import datasets.config
    import huggingface_hub.constants

    env_keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE,
             huggingface_hub.constants.HF_HUB_OFFLINE)
    try:
        for k in env_keys:
            os.environ[k] = "1"
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE,
         huggingface_hub.constants.HF_HUB_OFFLINE) = saved


@dataclass(frozen=True)
class DataSource:
    """Where one benchmark's files are, resolved once.

    Attributes:
        spec: the benchmark.
        path: what ``datasets.load_dataset`` gets as its first argument (absolute local dir, or the Hub id).
        config: config name passed to ``load_dataset`` (``None``: the only one).
        subdir: ``data_dir=`` passed to ``load_dataset`` for a ``<config>/`` folder without README configs.
        revision: Hub revision (``None`` for local copies).
        split_files: resolved data files per split (absolute paths, or ``hf://`` URLs that embed the commit).
        local: ``True`` for a ``--data-dir`` copy (read with the Hub offline), ``False`` for the Hub id.
    """

    spec: DatasetSpec
    path: str
    config: Optional[str] = None
    subdir: Optional[str] = None
    revision: Optional[str] = None
    split_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    local: bool = True

    def describe(self) -> str:
        where = self.path + (f" (config {self.config!r})" if self.config else "")
        return where + (f" [subfolder {self.subdir!r}]" if self.subdir else "")

    def files(self, split: str) -> tuple[str, ...]:
        """The data files of ``split``; raises ValueError naming the splits that exist."""
        if split not in self.split_files:
            raise ValueError(
                f"Split {split!r} not found in {self.describe()}: it has splits {sorted(self.split_files)}. "
                f"Dataset {self.spec.name!r} needs {self.spec.train_split!r} (train) and {self.spec.eval_split!r} "
                f"(eval). {layout_hint(self.spec)}"
            )
        return self.split_files[split]

    def context(self):
        """Offline guard for local copies, no-op for the Hub."""
        return hub_offline() if self.local else contextlib.nullcontext()

    def load(self, split: str, *, streaming: bool = False, cache_dir: Optional[str] = None):
        """``datasets.load_dataset`` of one split (an IterableDataset when ``streaming``), columns checked.

        Streaming reads the parquet files directly (no arrow copy in the HF cache): used to decode the
        in-memory sets once. Map-style (``streaming=False``) prepares the HF arrow cache in ``cache_dir``.
        """
        import datasets

        self.files(split)  # clear error for a missing split before datasets' own
        kwargs = {"split": split, "streaming": streaming}
        if self.subdir:
            kwargs["data_dir"] = self.subdir
        if self.revision:
            kwargs["revision"] = self.revision
        if cache_dir is not None and not streaming:
            kwargs["cache_dir"] = str(cache_dir)
        with self.context():
            ds = datasets.load_dataset(self.path, self.config, **kwargs)
        check_columns(self.spec, ds.features, self.describe(), split)
        return ds


def check_columns(spec: DatasetSpec, features, where: str, split: str) -> None:
    """Raise ValueError unless ``features`` has the image and label columns of ``spec`` (names and types)."""
    import datasets

    if features is None:
        return  # unknown until read; the decoder checks the first batch instead
    have = list(features)
    missing = [c for c in (spec.image_column, spec.label_column) if c not in features]
    if missing:
        raise ValueError(
            f"Split {split!r} of {where} has columns {have}, but dataset {spec.name!r} expects image column "
            f"{spec.image_column!r} and label column {spec.label_column!r} (missing: {missing}). Point "
            f"--data-dir at a copy of {spec.hub_id}, or rename the columns "
            f"(`ds.rename_column(old, new)`) before saving. {layout_hint(spec)}"
        )
    if not isinstance(features[spec.image_column], datasets.Image):
        raise ValueError(
            f"Column {spec.image_column!r} of {where} is {features[spec.image_column]!r}, not an Image feature; "
            f"store encoded images (PNG/JPEG bytes) as in {spec.hub_id}. {layout_hint(spec)}"
        )
    label = features[spec.label_column]
    if isinstance(label, datasets.ClassLabel) and label.num_classes != spec.num_classes:
        raise ValueError(
            f"Label column {spec.label_column!r} of {where} has {label.num_classes} classes, but dataset "
            f"{spec.name!r} has {spec.num_classes}; --data-dir probably points at another dataset "
            f"(expected a copy of {spec.hub_id})."
        )


def label_names_of(spec: DatasetSpec, features) -> tuple[str, ...]:
    """Class names from the dataset's ClassLabel, else ``spec.label_names``, else ``('0', '1', ...)``."""
    import datasets

    label = None if features is None else features.get(spec.label_column)
    if isinstance(label, datasets.ClassLabel):
        return tuple(label.names)
    if spec.label_names is not None:
        return spec.label_names
    return tuple(str(i) for i in range(spec.num_classes))


def resolve_source(spec: DatasetSpec, data_dir: Optional[str | os.PathLike] = None) -> DataSource:
    """Resolve the files of ``spec`` in ``data_dir`` (or on the Hub when ``None``).

    Raises:
        FileNotFoundError: ``data_dir`` does not exist / is not a directory / holds no data files.
        ValueError: the copy's configs do not include ``spec.config`` (and no ``<config>/`` folder exists).
    """
    import datasets

    if data_dir is None:
        builder = datasets.load_dataset_builder(spec.hub_id, spec.config, revision=spec.revision)
        return DataSource(spec, spec.hub_id, spec.config, None, spec.revision, _split_files(builder), local=False)

    p = Path(data_dir).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"--data-dir {str(data_dir)!r} does not exist (resolved to {p.resolve()} from the working directory "
            f"{os.getcwd()}). Pass the folder of a local copy of {spec.hub_id}, or leave --data-dir unset to "
            f"load {spec.hub_id} from the Hub. {layout_hint(spec)}"
        )
    if not p.is_dir():
        raise FileNotFoundError(f"--data-dir {str(p)!r} is a file, not a directory. {layout_hint(spec)}")
    path = str(p.resolve())
    with hub_offline():
        try:
            names = datasets.get_dataset_config_names(path)
        except FileNotFoundError as e:  # includes datasets' EmptyDatasetError
            raise FileNotFoundError(f"No data files found in --data-dir {path}: {e}. {layout_hint(spec)}") from e
        config, subdir = _pick_config(spec, path, names)
        kwargs = {"data_dir": subdir} if subdir else {}
        try:
            builder = datasets.load_dataset_builder(path, config, **kwargs)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"Could not read --data-dir {path} as {spec.hub_id}: {e}. {layout_hint(spec)}") from e
    source = DataSource(spec, path, config, subdir, None, _split_files(builder))
    for split, files in source.split_files.items():
        if not files:
            raise FileNotFoundError(
                f"Split {split!r} of {source.describe()} matches no files. {layout_hint(spec)}"
            )
    return source


def _pick_config(spec: DatasetSpec, path: str, names: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(config, subdir) to pass to load_dataset for a local copy that has configs ``names``."""
    if spec.config is None:
        if len(names) == 1:
            return names[0], None
        if "default" in names:
            return "default", None
        raise ValueError(
            f"--data-dir {path} defines several configs {names} but {spec.name!r} ({spec.hub_id}) has one; "
            f"keep only the configs of {spec.hub_id} in the README YAML. {layout_hint(spec)}"
        )
    if spec.config in names:
        return spec.config, None
    if names == ["default"]:
        if os.path.isdir(os.path.join(path, spec.config)):
            return None, spec.config  # <config>/<split>-*.parquet without README configs
        return None, None  # the split files sit directly in data_dir
    raise ValueError(
        f"--data-dir {path} has configs {names} but dataset {spec.name!r} needs config {spec.config!r} "
        f"(the {spec.hub_id} layout). Add it to the README YAML `configs:` or put the files in "
        f"`{spec.config}/`. {layout_hint(spec)}"
    )


def _split_files(builder) -> dict[str, tuple[str, ...]]:
    data_files = builder.config.data_files or {}
    return {str(k): tuple(str(f) for f in v) for k, v in data_files.items()}
