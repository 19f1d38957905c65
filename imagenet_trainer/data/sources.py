"""Stage 1 of the input pipeline: where a dataset comes from.

In: ``--dataset`` as the user gave it: a preprocess.py output folder, a local folder of Parquet/image files (a Hub
clone), or a Hub dataset id. Out: a ``datasets.DatasetDict`` whose splits have ``image`` (encoded bytes) and
``label`` columns (``load_image_dataset``), and a split's class names once every row has a label
(``check_labels``). A preprocess.py output is checked against its manifest (file sizes, no reading) before it is
memory-mapped; every failure is a one-line ValueError naming the folder and what to do. The Hub's own ImageNet-1k
(``ILSVRC/imagenet-1k``, labelled by human names) comes out as preprocess.py's output has it: wnids as class names,
the human names as descriptions, an ``image_id`` per row. Next stage: ``rows``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from imagenet_trainer import archive_layouts, manifest

SCRIPT_HINT = ("datasets 5.x no longer runs loading scripts: convert the images with preprocess.py "
               "(or use a Parquet-backed Hub copy)")



def load_image_dataset(path_or_id: str) -> datasets.DatasetDict:
    """A preprocess.py output folder (``load_from_disk``) or a Parquet-backed Hub dataset id / local clone with
    ``image`` and ``label`` columns. A split named ``val`` is renamed ``validation``. Errors are one-line
    ValueErrors; a preprocess.py output is first checked against its manifest (file sizes, no reading). With
    HF_HUB_OFFLINE=1 a Hub id not in datasets' cache is read from the Hub cache (``hf download``); online, the Hub is
    asked first (``_hub_revision``), so that a refused token is an error, not datasets' cached copy."""
    path = Path(path_or_id).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = load_saved(path)
        if not isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path_or_id} holds a single Dataset, not the DatasetDict of splits preprocess.py "
                             "writes; rerun preprocess.py")
    elif path.is_dir():
        scripts = sorted(p.name for p in path.glob("*.py") if p.name != archive_layouts.HUB_CLASSES)
        data_files = _splits_in_use(path)  # outside the try: its ValueError names the missing shard
        try:
            ds = datasets.load_dataset(str(path), data_files=data_files, cache_dir=str(_local_cache_dir(path)))
        except Exception as e:  # datasets raises RuntimeError/FileNotFoundError/EmptyDatasetError here
            if scripts:
                raise ValueError(f"{path_or_id} is a loading-script dataset ({', '.join(scripts)}); "
                                 f"{SCRIPT_HINT}") from None
            raise ValueError(f"{path_or_id}: neither a preprocess.py output nor a folder of Parquet/image files "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        _attach_descriptions(ds, path)
        _as_imagenet(ds, _classes_of(path))
    elif path.exists() or path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1:
        raise ValueError(f"{path_or_id}: no such folder (give preprocess.py's --output_dir or a Hub dataset id)")
    else:
        ds = _load_hub(path_or_id)
    if "val" in ds and "validation" not in ds:
        ds["validation"] = ds.pop("val")
    for name, split in ds.items():
        missing = {"image", "label"} - set(split.column_names)
        if missing:
            raise ValueError(f"{path_or_id}: split '{name}' lacks the column(s) {sorted(missing)} "
                             f"(has {split.column_names}); an image-classification dataset needs image and label")
    return ds


def _load_hub(repo: str) -> datasets.DatasetDict:
    """Hub dataset ``repo`` through datasets' cache. datasets falls back to a cached copy on any Hub error, a refused
    token or a repo made private since included, and says so only in a log line: online, the Hub is asked first, a
    refusal is a one-line ValueError, and the revision it serves is the one loaded (printed); a Hub out of reach
    loads the cached copy offline, saying which revision. Offline, datasets' cache, else the Hub cache."""
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    revision, unreachable = (None, "") if offline else _one_answer(_hub_revision, repo)
    speaks = _rank() == 0  # one line for the job, not one per process
    with _offline_while(bool(unreachable)):  # asked once: datasets would retry each file for ~20 s
        try:
            ds = datasets.load_dataset(repo, revision=revision)
        except Exception as e:  # not found, gated, not cached, script-based: each a one-liner
            if "scripts are no longer supported" in str(e):
                raise ValueError(f"Hub dataset {repo} is script-based; {SCRIPT_HINT}") from None
            if offline:
                return load_image_dataset(_cached_snapshot(repo))
            if unreachable:
                raise ValueError(f"Hub dataset {repo}: the Hub is out of reach ({unreachable}) and datasets' cache "
                                 f"(HF_DATASETS_CACHE={datasets.config.HF_DATASETS_CACHE}) has no copy; retry once "
                                 "it is reachable, or set HF_HUB_OFFLINE=1 to read a copy `hf download` left"
                                 ) from None
            raise ValueError(_hub_failure(repo, e)) from None
        loaded = _cached_revision(ds)
        if unreachable or revision and loaded not in (revision, None):  # a download failed: a cached copy
            why = f"the Hub is out of reach ({unreachable})" if unreachable else (
                f"the Hub serves revision {revision}, but a download failed")
            print(f"Hub dataset {repo}: {why}; loaded datasets' cached copy, revision {loaded or 'unknown'}, which "
                  "may be older than the Hub's; HF_HUB_OFFLINE=1 makes this deliberate", flush=True)
            revision = loaded  # the cards of the rows loaded, from the Hub cache
        elif revision and speaks:
            print(f"Hub dataset {repo} at revision {revision}")
        _attach_descriptions(ds, repo, revision)
        _as_imagenet(ds, lambda: _classes_of(repo, revision))
    return ds


def _rank() -> int:
    """This process's rank in the job's process group; 0 outside one."""
    import torch.distributed as dist  # here: reading Arrow and Parquet files alone needs no torch

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _one_answer(ask, repo: str):
    """``ask(repo)`` on rank 0 only, its answer (or its one-line ValueError) given to every rank of the job's process
    group: ranks that each asked the Hub could load different revisions when a push lands during start-up."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return ask(repo)
    answer = [None]
    if dist.get_rank() == 0:
        try:
            answer[0] = ("ok", ask(repo))
        except ValueError as e:  # said by every rank, as each would have said it
            answer[0] = ("error", str(e))
    dist.broadcast_object_list(answer, src=0)
    kind, value = answer[0]
    if kind == "error":
        raise ValueError(value)
    return value


@contextlib.contextmanager
def _offline_while(offline: bool):
    """datasets and huggingface_hub offline (as HF_HUB_OFFLINE=1 makes them at import) inside the block, when
    ``offline``; as they were after it."""
    from huggingface_hub import constants as hf_constants

    before = datasets.config.HF_HUB_OFFLINE, hf_constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hf_constants.HF_HUB_OFFLINE = before


def _hub_revision(repo: str) -> tuple[str | None, str]:
    """(the commit the Hub serves for ``repo`` to the token in use, ""), or (None, why the Hub could not be asked:
    no connection, a time-out, a server error). A refusal (not found, private, gated, a token it refuses) is a
    one-line ValueError saying what to do."""
    from huggingface_hub import HfApi
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.errors import HFValidationError

    try:  # HF_HUB_ETAG_TIMEOUT (s): behind a firewall that drops packets, no answer ever comes
        return HfApi().dataset_info(repo, timeout=hf_constants.HF_HUB_ETAG_TIMEOUT).sha, ""
    except HFValidationError as e:  # "me/im net": no request made
        raise ValueError(f"{repo}: no such local folder, and not a valid Hub dataset id "
                         f"({str(e).splitlines()[0] if str(e) else ''})") from None
    except Exception as e:  # HTTP errors (huggingface_hub's), connection errors (httpx's, OSError)
        status = getattr(getattr(e, "response", None), "status_code", None)
        if _refused(e):
            raise ValueError(_hub_failure(repo, e)) from None
        if status is not None and status < 500 and status != 429:  # a request the Hub will never answer otherwise
            raise ValueError(f"Hub dataset {repo}: the Hub answers HTTP {status} ({type(e).__name__})") from None
        return None, f"{type(e).__name__}" + (f": HTTP {status}" if status else "")


def _refused(e: Exception) -> bool:
    """Whether the Hub refused the repo to this token (or to no token): not found, private, gated, disabled."""
    from huggingface_hub.errors import DisabledRepoError, RepositoryNotFoundError

    status = getattr(getattr(e, "response", None), "status_code", None)
    return (isinstance(e, (RepositoryNotFoundError, DisabledRepoError, datasets.exceptions.DatasetNotFoundError))
            or status in (401, 403, 404))


def _hub_failure(repo: str, e: Exception) -> str:
    """The one line for a Hub dataset that did not load; a refusal says how to get access."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import GatedRepoError

    # an owner part that is a local folder, or no owner part at all: a mistyped path, not a Hub id, may be meant
    folder = "no such local folder, and " if "/" not in repo or Path(repo).parent.is_dir() else ""
    first = str(e).splitlines()[0] if str(e) else ""
    if not _refused(e):
        return f"{repo}: {folder}the Hub dataset could not be loaded ({type(e).__name__}: {first})"
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    # the Hub's code for a repo it hides: absent, or private to this caller; a 401 without it refuses the token
    hidden = getattr(response, "headers", {}).get("X-Error-Code") == "RepoNotFound"
    if isinstance(e, GatedRepoError) or "is a gated dataset" in first:
        what = "the Hub dataset is gated, and this account has not been granted access"
    elif status == 401 and get_token() and not hidden:
        what = "the Hub refuses the token in use (HTTP 401: invalid or expired)"
    else:
        what = f"no Hub dataset of that id {'for the token in use' if get_token() else 'without a token'}" + (
            f" (HTTP {status})" if status else f" ({type(e).__name__})")
    return (f"{repo}: {folder}{what}; if it is private or gated: `hf auth login` (or set HF_TOKEN) with an account "
            "that has access")


def _cached_revision(ds: datasets.DatasetDict) -> str | None:
    """The Hub commit of the copy datasets loaded from its cache: the folder its Arrow files are in
    (<cache>/<owner>___<name>/<config>/<version>/<commit>/)."""
    for split in ds.values():
        for f in split.cache_files:
            name = Path(f["filename"]).parent.name
            if len(name) == 40 and all(c in "0123456789abcdef" for c in name):
                return name
    return None


OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")  # each makes datasets offline


def _cached_snapshot(repo: str) -> str:
    """The Hub cache's snapshot folder of dataset ``repo`` (what ``hf download REPO --repo-type dataset`` fills),
    for an offline run whose datasets cache lacks it; a one-line ValueError naming both caches when neither has it."""
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    try:
        return snapshot_download(repo, repo_type="dataset", local_files_only=True)
    except IncompleteSnapshotError as e:  # `hf download REPO --include "data/validation-*"`: some of the repo's
        return e.snapshot_path            # files; the folder loads the splits it has, as when given as a path
    except Exception:  # not in the cache (LocalEntryNotFoundError), or a damaged cache entry
        flag = next((v for v in OFFLINE_VARS if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")),
                    OFFLINE_VARS[0])
        raise ValueError(f"{flag}=1 is set and Hub dataset {repo} is in neither datasets' cache "
                         f"(HF_DATASETS_CACHE={datasets.config.HF_DATASETS_CACHE}) nor the Hub cache "
                         f"(HF_HUB_CACHE={hf_constants.HF_HUB_CACHE}): on a connected machine run `hf download "
                         f"{repo} --repo-type dataset` (with the same HF_HOME), or give --dataset the folder"
                         ) from None


def _splits_in_use(folder: Path) -> dict | None:
    """data_files of the splits train.py and validate.py can use, for a folder in the Hub's Parquet layout
    (``data/<split>-NNNNN-of-NNNNN.parquet``, as the Hub, datasets' push_to_hub and imagenet_trainer.hub_dataset
    write it): for the Hub's ImageNet-1k, whichever of train and validation it holds, never its test split, whose
    labels are all -1 (datasets would convert it to Arrow too, 13 GB); for another dataset, the splits it holds when
    its card's ``configs`` name one it lacks. `hf download --include "data/validation-*"` leaves the others out, and
    datasets alone fails on a card listing files that are not there. None, which lets datasets find the files, for
    any other folder. A ValueError naming the missing file when a split's numbered set is incomplete (a cut download
    or copy), where datasets would name none."""
    files = archive_layouts.hub_parquet_files(folder)
    archive_layouts.check_parquet_set(folder, files)
    listed = sum(map(len, files.values()))
    if not files.keys() & {"train", "validation"} or \
            listed != sum(p.is_file() for p in (folder / "data").rglob("*")):
        return None  # not only the three splits' files: datasets decides what the folder holds
    if _is_hub_imagenet(folder, files):
        return {split: [str(f) for f in found] for split, found in files.items() if split != "test"}
    if not _card_splits(folder) - files.keys():
        return None  # every split the card names is there: the card's own data_files, as datasets reads them
    return {split: [str(f) for f in found] for split, found in files.items()}


def _is_hub_imagenet(folder: Path, files: dict[str, list[Path]]) -> bool:
    """Whether the labelled splits' Parquet files are labelled by the Hub's ImageNet-1k names (or its classes.py's)."""
    import pyarrow.parquet as pq

    try:
        names = archive_layouts.parquet_label_names(pq.read_schema(next(f for s, fs in files.items() if s != "test"
                                                                         for f in fs)))
    except Exception:  # not readable as Parquet: datasets says what is wrong
        return False
    return names is not None and archive_layouts.hub_imagenet_wnids(names, _classes_of(folder)) is not None


def _card_splits(folder: Path) -> set[str]:
    """The splits the folder's README.md names, each of which datasets expects: its ``configs`` (``data_files:
    [{split, path}]``, as the Hub's cards list them) and its ``dataset_info`` (``splits: [{name, ...}]``, all an
    older push_to_hub's card has); none without such a card."""
    from huggingface_hub import metadata_load

    try:
        card = metadata_load(folder / "README.md") or {}
    except Exception:  # no card, YAML errors, a front matter that is no mapping: datasets reads no configs either
        return set()
    configs, infos = card.get("configs"), card.get("dataset_info")
    entries = [e for c in configs if isinstance(c, dict) and isinstance(c.get("data_files"), list)
               for e in c["data_files"]] if isinstance(configs, list) else []
    infos = infos if isinstance(infos, list) else [infos]  # one mapping, or one per config
    listed = [e for i in infos if isinstance(i, dict) and isinstance(i.get("splits"), list) for e in i["splits"]]
    return ({e["split"] for e in entries if isinstance(e, dict) and isinstance(e.get("split"), str)}
            | {e["name"] for e in listed if isinstance(e, dict) and isinstance(e.get("name"), str)})


def _classes_of(folder_or_repo, revision: str | None = None) -> dict | None:
    """classes.py's {wnid: name} of a folder or Hub dataset repo (at ``revision``, a commit, when given) in the Hub's
    ImageNet-1k layout; None without one."""
    if isinstance(folder_or_repo, Path):
        path = folder_or_repo / archive_layouts.HUB_CLASSES
    else:
        from huggingface_hub import hf_hub_download

        try:
            # HF_DATASETS_OFFLINE=1 makes datasets offline but not huggingface_hub: without local_files_only an
            # air-gapped node would wait for a connection timeout here
            path = Path(hf_hub_download(folder_or_repo, archive_layouts.HUB_CLASSES, repo_type="dataset",
                                        local_files_only=bool(datasets.config.HF_HUB_OFFLINE),
                                        **({"revision": revision} if revision else {})))
        except Exception:  # no such file, or not cached offline: timm's list decides
            return None
    try:
        return archive_layouts.read_hub_classes(path) if path.is_file() else None
    except ValueError:  # another dataset's classes.py: not the Hub's ImageNet
        return None


def _as_imagenet(ds: datasets.DatasetDict, classes) -> None:
    """The Hub's ImageNet-1k (ILSVRC/imagenet-1k) as preprocess.py's output has it, each split in place: its
    ClassLabel names (human names, "crane2" among them) become the wnids, in the same order, so the label indices
    stay; the human names ("crane" twice, as every route gives them) go into DatasetInfo.description as
    ``_attach_descriptions`` puts them; ``image_id`` is the file name's stem without the wnid the Hub appends
    (ILSVRC2012_val_00000001), which ReaL's labels are keyed by. Zero-copy: the Arrow data is not rewritten.
    ``classes``: classes.py's {wnid: name}, or a function giving it, called only when timm's names do not match."""
    from imagenet_trainer.ilsvrc import DESCRIPTIONS_KEY, is_wnid

    warned = False
    for name, split in list(ds.items()):
        label = split.features.get("label")
        if not isinstance(label, datasets.ClassLabel) or all(is_wnid(n) for n in label.names):
            continue
        wnids = archive_layouts.hub_imagenet_wnids(label.names)
        if wnids is None and callable(classes) and label.num_classes == 1000:  # a Hub repo: one download, at most
            classes = classes()
        if wnids is None and not callable(classes):
            wnids = archive_layouts.hub_imagenet_wnids(label.names, classes)
        if wnids is None:
            if classes is None and not warned and _looks_like_hub_imagenet(label.names):
                warned = True  # one line for the dataset, not one per split
                print(f"the dataset looks like the Hub's ILSVRC/imagenet-1k, but its 1000 class names are not "
                      f"timm's ImageNet names and it has no {archive_layouts.HUB_CLASSES}: its labels stay human "
                      f"names, with no image_id; put that repo's {archive_layouts.HUB_CLASSES} beside data/ (`hf "
                      f"download ILSVRC/imagenet-1k {archive_layouts.HUB_CLASSES} --repo-type dataset`)")
            continue
        info = split.info.copy()
        info.features = split.features.copy()
        info.features["label"] = datasets.ClassLabel(names=wnids)
        info.description = json.dumps({DESCRIPTIONS_KEY: archive_layouts.hub_descriptions(wnids, label.names)})
        fingerprint = hashlib.sha256(f"{split._fingerprint} labelled by wnids".encode()).hexdigest()[:16]
        split = datasets.Dataset(split.data, info=info, split=split.split, fingerprint=fingerprint)
        if "image_id" not in split.column_names and _has_paths(split):
            paths = (p for chunk in split.data.column("image").chunks for p in chunk.field("path").to_pylist())
            split = split.add_column("image_id", [archive_layouts.hub_image_id(p)[0] if p else None for p in paths],
                                     feature=datasets.Value("string"))
        ds[name] = split


def _looks_like_hub_imagenet(names) -> bool:
    """1000 names, most of them timm's ImageNet descriptions in order: the Hub's ImageNet with a few renamed."""
    from imagenet_trainer import ilsvrc

    if len(names) != 1000:
        return False
    try:
        lemmas = ilsvrc.imagenet_lemmas()
        wnids = ilsvrc.imagenet_wnids()
    except (ValueError, OSError):  # no timm to compare with
        return False
    return sum(lemmas.get(w) == n for w, n in zip(wnids, names)) >= 900


def _has_paths(split: datasets.Dataset) -> bool:
    image = split.data.schema.field("image").type if "image" in split.column_names else None
    return pa.types.is_struct(image) and image.get_field_index("path") >= 0


def _local_cache_dir(folder: Path) -> Path:
    """Where datasets keeps its Arrow copy of a local folder of Parquet/image files: keyed by the folder, every data
    file's size and mtime, and what of the card defines the rows (``_card_key``). datasets' own key ignores the files
    when the folder's README lists ``configs`` (the Hub layout ``imagenet_trainer.hub_dataset`` writes): a folder
    exported anew, or another folder of the same name, would silently load the first one's cached rows. The card's
    prose, source.json and class_descriptions.json (read afresh at each load) are not keyed: a rerun of the export
    that rewrites only them would otherwise convert the whole dataset again, beside the first copy."""
    from imagenet_trainer.ilsvrc import DESCRIPTIONS_FILE

    key = hashlib.sha256(str(folder.resolve()).encode())
    cards = {"README.md", manifest.SOURCE_FILE, DESCRIPTIONS_FILE}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                            p.relative_to(folder).parts)):
        if f.relative_to(folder).as_posix() not in cards:
            stat = f.stat()
            key.update(f"{f.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    key.update(_card_key(folder / "README.md"))
    return Path(datasets.config.HF_DATASETS_CACHE) / "local" / key.hexdigest()[:16]


def _card_key(readme: Path) -> bytes:
    """What of a README.md datasets builds the rows from: its front matter's ``configs`` (data files, features) and
    ``dataset_info`` (features, ClassLabel names), as ``load_dataset`` reads them (datasets/load.py); not its text,
    pretty_name or license."""
    from huggingface_hub import metadata_load

    if not readme.is_file():
        return b""
    try:
        card = metadata_load(readme) or {}
    except Exception:  # YAML errors, a front matter that is no mapping: the whole file, as datasets fails on it
        return readme.read_bytes()
    return json.dumps([card.get("configs"), card.get("dataset_info")], sort_keys=True, default=str).encode()


def _attach_descriptions(ds: datasets.DatasetDict, folder_or_repo, revision: str | None = None) -> None:
    """Human names from the ``class_descriptions.json`` beside Parquet files (a local folder or a Hub dataset repo
    written by imagenet_trainer.hub_dataset) into each split's DatasetInfo, where ``ilsvrc.class_descriptions``
    finds them: Parquet keeps the ClassLabel names (wnids), not the description preprocess.py keeps them in."""
    from imagenet_trainer.ilsvrc import DESCRIPTIONS_FILE, DESCRIPTIONS_KEY

    if isinstance(folder_or_repo, Path):
        path = folder_or_repo / DESCRIPTIONS_FILE
    else:
        from huggingface_hub import hf_hub_download  # here: local datasets need no Hub client

        try:  # from the Hub, or with HF_HUB_OFFLINE=1 from its cache
            path = Path(hf_hub_download(folder_or_repo, DESCRIPTIONS_FILE, repo_type="dataset",
                                        **({"revision": revision} if revision else {})))
        except Exception:  # no such file (another tool's repo), not cached: ClassLabel names or timm's lemmas
            return
    if not path.is_file():
        return
    names = json.loads(path.read_text())
    for split in ds.values():
        label = split.features.get("label")
        if isinstance(label, datasets.ClassLabel) and isinstance(names, list) and len(names) == label.num_classes:
            split.info.description = json.dumps({DESCRIPTIONS_KEY: names})


def load_saved(path: Path) -> datasets.DatasetDict | datasets.Dataset:
    """``load_from_disk`` of a checked folder; a damaged Arrow file is a ValueError naming it, not pyarrow's
    traceback (which names no file). source.json is left out of the check: it describes the data for cards, and a
    user may edit it (a name for the card; hub_dataset writes an edited one anew); --verify checks it."""
    listed = manifest.read(path)
    if listed is not None:
        files = {rel: entry for rel, entry in listed["files"].items() if rel != manifest.SOURCE_FILE}
        if problem := manifest.check_sizes(path, files):
            raise ValueError(problem)
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, pa.ArrowException, ValueError, KeyError) as e:  # no manifest to name it: find the damaged file
        for arrow in sorted(path.rglob("*.arrow")):
            try:
                with pa.memory_map(str(arrow)) as source:
                    pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowException):
                raise ValueError(f"{arrow}: damaged or truncated Arrow file; copy it again, or rerun "
                                 "preprocess.py") from None
        raise ValueError(f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None


def check_labels(split: datasets.Dataset, names: list[str] | None = None) -> list[str]:
    """The split's class names, once every row is known to have a label: a ClassLabel column (named like ``names``,
    in the same order, when given), no null and no -1 (unlabelled, as ILSVRC's test split). One-line ValueErrors;
    reads the label column only."""
    label = split.features.get("label")
    if not isinstance(label, datasets.ClassLabel):
        raise ValueError(f"the label column is {label}, not a ClassLabel (datasets' class_encode_column('label') "
                         "makes one; preprocess.py writes one)")
    if names is not None and list(label.names) != list(names):
        raise ValueError("its class names differ from the train split's (other classes or another order), so its "
                         "scores would be against the wrong classes")
    labels = split.with_format("arrow")["label"]
    missing = labels.null_count + (pc.sum(pc.less(labels, 0)).as_py() or 0)
    if missing:
        raise ValueError(f"{missing} of {len(split)} images have no label (null or -1; ILSVRC's test split has "
                         "none)")
    return list(label.names)

