"""python -m imagenet_trainer.hub_dataset on ImageNet writes ~150 GB over hours: a scheduler's SIGTERM stops it with
whole shards kept in the one work folder beside OUT, a rerun resumes them to the bytes an uninterrupted run writes,
and a push is checked before the export and retried without it."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub
import pytest

from imagenet_trainer import hub_dataset, ilsvrc, runinfo

ROOT = Path(__file__).resolve().parents[1]
SHARD_BYTES = 20_000  # the fixture's 36 images in many shards (each a few images)

# The CLI as a scheduler runs it, in a process of its own, with a SIGTERM from the kernel once the third shard's bytes
# are written (before its rename); SHARD_BYTES set small so that the small fixture makes several shards.
CUT_EXPORT = r"""
import os, signal, sys
import datasets
from imagenet_trainer import hub_dataset
hub_dataset.SHARD_BYTES = int(sys.argv[1])
kill_after, written = int(sys.argv[2]), []
to_parquet = datasets.Dataset.to_parquet
def to_parquet_then_sigterm(self, *args, **kwargs):
    result = to_parquet(self, *args, **kwargs)
    written.append(args)
    if len(written) == kill_after:
        os.kill(os.getpid(), signal.SIGTERM)
    return result
datasets.Dataset.to_parquet = to_parquet_then_sigterm
hub_dataset.main(sys.argv[3:])
"""


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def identities(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of each file: the same pair means the file was kept, not written again."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def reference(preprocessed, tmp_path_factory) -> Path:
    """An uninterrupted export at SHARD_BYTES."""
    return hub_dataset.export_parquet(preprocessed, tmp_path_factory.mktemp("reference") / "imagenet-parquet",
                                      shard_bytes=SHARD_BYTES)


def test_sigterm_keeps_whole_shards_and_the_rerun_resumes_to_an_uninterrupted_runs_bytes(preprocessed, reference,
                                                                                         tmp_path, capsys):
    out = tmp_path / "imagenet-parquet"
    work = tmp_path / ".imagenet-parquet.tmp"
    stale = tmp_path / ".imagenet-parquet.tmp-k3x9q0a1"  # what a cut export once left under a random name
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "train-00000-of-00009.parquet").write_bytes(b"x" * 1000)
    shards = sorted(files_of(reference / "data"))
    train = [f"data/{name}" for name in shards if name.startswith("train-")]  # the split written first
    assert len(shards) > len(train) > 3

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CUT_EXPORT, str(SHARD_BYTES), "3", "--dataset", str(preprocessed),
                           "--output_dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.strip().splitlines()[-1] == (
        f"SIGTERM: stopped with 3 of {len(shards)} shards done; they are kept in {work}: run the same command to "
        f"resume"), proc.stderr[-3000:]
    assert f"removed {stale} (0.0 GB): the work folder of an export that never finished" in proc.stdout
    assert not out.exists() and not stale.exists()
    kept = identities(work)
    assert sorted(kept) == train[:3]  # whole shards under their own names, no .part, nothing else

    hub_dataset.export_parquet(preprocessed, out, shard_bytes=SHARD_BYTES)
    assert f"resuming {work}: 3 of {len(shards)} shards already done" in capsys.readouterr().out
    assert files_of(out) == files_of(reference)
    assert {rel: identities(out)[rel] for rel in kept} == kept  # moved into place, not written again
    assert sorted(p.name for p in tmp_path.iterdir()) == [".imagenet-parquet.export.json", "imagenet-parquet"]

    # a run killed inside replace_dir after the new export went in leaves the earlier one, marked: the next run
    # removes it (tests/test_sharing.py: a user's folder of that name is left alone)
    older = tmp_path / ".imagenet-parquet.old"
    shutil.copytree(out, older)
    runinfo.atomic_write_text(older / runinfo.REPLACED_NOTE, runinfo.replaced_note(out, hub_dataset.REPLACED_BY))
    hub_dataset.export_parquet(preprocessed, out, shard_bytes=SHARD_BYTES)
    assert f"removed {older} (0.0 GB): an earlier export, replaced" in capsys.readouterr().out
    assert not older.exists() and files_of(out) == files_of(reference)
    # killed at the very end of that deletion: only the note's emptied folder is left, which no run may refuse
    (older / runinfo.REPLACED_NOTE).parent.mkdir(parents=True)
    hub_dataset.export_parquet(preprocessed, out, shard_bytes=SHARD_BYTES)
    assert not older.exists() and files_of(out) == files_of(reference)


def test_a_damaged_shard_is_written_again_and_another_jobs_work_folder_is_started_over(preprocessed, reference,
                                                                                      tmp_path, monkeypatch, capsys):
    """A shard cut short on disk (a full disk, a copy) is not taken for a finished one; a work folder left by an
    export at another shard size is removed, said in one line, and the export is that of an uninterrupted run."""
    import datasets

    out, work = tmp_path / "imagenet-parquet", tmp_path / ".imagenet-parquet.tmp"
    to_parquet, written = datasets.Dataset.to_parquet, []

    def to_parquet_then_interrupt(self, *args, **kwargs):  # Ctrl-C after the third shard's bytes
        result = to_parquet(self, *args, **kwargs)
        written.append(args)
        if len(written) % 3 == 0:
            raise KeyboardInterrupt
        return result

    def cut_export(shard_bytes: int) -> None:
        with monkeypatch.context() as m:
            m.setattr(datasets.Dataset, "to_parquet", to_parquet_then_interrupt)
            with pytest.raises(KeyboardInterrupt):
                hub_dataset.export_parquet(preprocessed, out, shard_bytes=shard_bytes)

    cut_export(SHARD_BYTES)
    finished = sorted(p for p in (work / "data").iterdir() if p.suffix == ".parquet")
    assert len(finished) == 2 and len(list((work / "data").glob("*.part"))) == 1
    finished[0].write_bytes(finished[0].read_bytes()[:-100])
    capsys.readouterr()
    hub_dataset.export_parquet(preprocessed, out, shard_bytes=SHARD_BYTES)
    assert f"resuming {work}: 1 of " in capsys.readouterr().out
    assert files_of(out) == files_of(reference) and not work.exists()

    cut_export(2 * SHARD_BYTES)
    hub_dataset.export_parquet(preprocessed, out, shard_bytes=SHARD_BYTES)
    said = capsys.readouterr().out.splitlines()
    assert f"{work}: left by an export of other data, another shard size or other library versions; starting over" \
        in said, said
    assert not any(line.startswith("resuming") for line in said), said
    assert files_of(out) == files_of(reference) and not work.exists()


def no_token(monkeypatch, tmp_path: Path) -> None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.mark.parametrize("why", ["offline", "no token"])
def test_a_push_that_cannot_work_fails_before_the_export(preprocessed, tmp_path, monkeypatch, why):
    out = tmp_path / "imagenet-parquet"
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if why == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_TOKEN", "hf_dummytoken")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        no_token(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as e:
        hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", str(out), "--push_to_hub", "me/imagenet"])
    expected = ("HF_HUB_OFFLINE=1 is set; unset it or do not ask for a push" if why == "offline" else
                "no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    assert str(e.value.code) == f"error: cannot push to 'me/imagenet': {expected}"
    assert list(tmp_path.iterdir()) == []  # nothing exported, no work folder


def test_after_a_failed_push_the_same_command_pushes_without_exporting_again(preprocessed, tmp_path, monkeypatch,
                                                                           capsys):
    from hub_server import LocalHub, point_this_process_at

    out = tmp_path / "imagenet-parquet"
    command = ["--dataset", str(preprocessed), "--output_dir", str(out), "--push_to_hub", "me/imagenet"]
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        hub.refuse["commit"] = 500
        with pytest.raises(SystemExit) as e:
            hub_dataset.main(command)
        message = str(e.value.code)
        assert message.startswith(f"error: push of {out} to dataset 'me/imagenet' failed") and "'500 " in message
        assert message.endswith("retry with the same python -m imagenet_trainer.hub_dataset command (it finds the "
                                "finished export and only pushes)"), message
        assert capsys.readouterr().out.splitlines() == [f"wrote {out}"]
        exported = identities(out)

        del hub.refuse["commit"]
        hub_dataset.main(command)
        said = capsys.readouterr().out.splitlines()
        assert said[0] == (f"{out}: already holds this export of {preprocessed} (same data and shard size, every file "
                           f"present); nothing to write"), said
        assert said[1].startswith("pushed to ") and len(said) == 2, said
        assert identities(out) == exported
        repo = hub.repo("me/imagenet", "dataset")
        assert repo.private and {k: v for k, v in repo.files.items() if k != ".gitattributes"} == files_of(out)
        assert not hub.unhandled
    record = json.loads((tmp_path / ".imagenet-parquet.export.json").read_text())
    assert record["done"] and record["files"] == {rel: len(data) for rel, data in files_of(out).items()}


def test_a_push_of_a_new_export_deletes_the_old_shards_in_the_same_commit(preprocessed, reference, tmp_path,
                                                                          monkeypatch):
    """The card's configs glob data/<split>-*: an earlier export's shards left in the repo would be read beside the
    new ones (datasets.load_dataset: NonMatchingSplitsSizesError, or every image twice). A push of the same data in
    other shards leaves exactly the new export's files, in one commit; a user's own file stays."""
    from hub_server import LocalHub, point_this_process_at

    bigger = hub_dataset.export_parquet(preprocessed, tmp_path / "bigger", shard_bytes=500 * 2**20)
    new, old = files_of(bigger), files_of(reference)
    assert {p for p in old if p.startswith("data/")} - set(new)  # other shard names
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        hub_dataset.push_dataset(reference, "me/imagenet", token=hub.token)
        repo = hub.repo("me/imagenet", "dataset")
        huggingface_hub.HfApi(token=hub.token).upload_file(path_or_fileobj=b"notes\n", path_in_repo="NOTES.md",
                                                           repo_id="me/imagenet", repo_type="dataset")
        commits = len(repo.log)
        hub_dataset.push_dataset(bigger, "me/imagenet", token=hub.token)
        assert {p: d for p, d in repo.files.items() if p != ".gitattributes"} == {**new, "NOTES.md": b"notes\n"}
        assert len(repo.log) == commits + 1 and not hub.unhandled


def test_datasets_reads_the_cards_split_info_without_a_warning(preprocessed, reference, tmp_path):
    """The card's dataset_info names each split's rows and uncompressed Arrow bytes, which datasets reads (and checks
    the rows against) on every load; a splits block without num_bytes is ignored with a warning each time
    ("Ignoring part of dataset_info from the dataset card")."""
    import logging

    import datasets

    logged, logger = [], logging.getLogger("datasets")  # datasets' root logger: it does not propagate to the root
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # whatever HF_DATASETS_VERBOSITY says
    try:
        builder = datasets.load_dataset_builder(str(reference), cache_dir=str(tmp_path / "cache"))
        loaded = datasets.load_dataset(str(reference), cache_dir=str(tmp_path / "cache"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not [m for m in logged if "dataset_info" in m], logged
    original = datasets.load_from_disk(str(preprocessed))
    assert {name: (s.num_examples, s.num_bytes) for name, s in (builder.info.splits or {}).items()} == {
        name: (len(split), split.data.nbytes) for name, split in original.items()}
    assert {name: len(split) for name, split in loaded.items()} == {name: len(s) for name, s in original.items()}


def test_a_finished_export_whose_card_is_stale_gets_a_new_card_and_keeps_its_shards(preprocessed, tmp_path, capsys):
    """A card or source.json that is not what this version writes (an export of an earlier version, a hand edit) is
    written anew on a rerun; the shards, hours of an ImageNet export, are kept as they are."""
    out = hub_dataset.export_parquet(preprocessed, tmp_path / "imagenet-parquet", shard_bytes=SHARD_BYTES)
    written = files_of(out)
    (out / "README.md").write_text("---\ncard of an earlier version\n---\n")
    (out / "class_descriptions.json").unlink()  # deleted by hand
    before = identities(out)
    hub_dataset.export_parquet(preprocessed, out, shard_bytes=SHARD_BYTES)
    assert (f"{out}: wrote class_descriptions.json, README.md anew; its Parquet shards were already this export's"
            in capsys.readouterr().out)
    assert files_of(out) == written  # the card as a fresh export writes it
    after = identities(out)
    assert {rel for rel in after if before.get(rel) != after[rel]} == {"README.md", "class_descriptions.json"}
    hub_dataset.export_parquet(preprocessed, out, shard_bytes=SHARD_BYTES)
    assert capsys.readouterr().out == ""  # nothing written: the record knows the new card's size
    assert identities(out) == after


@pytest.mark.parametrize("where", ["the dataset", "inside the dataset", "holding the dataset", "a file",
                                   "a folder of yours"])
def test_an_output_dir_an_export_would_wrongly_replace_is_refused_before_any_work(preprocessed, tmp_path, where):
    """An export replaces OUT whole (runinfo.replace_dir): the --dataset folder, a folder inside or around it and a
    folder this tool never wrote are refused in one line, as preprocess.py refuses a foreign --output_dir, and so is
    a file (the move into place would fail only after the whole export); nothing on disk changes."""
    data = tmp_path / "data" / "imagenet"
    shutil.copytree(preprocessed, data)
    (tmp_path / "data" / "NOTES.txt").write_text("mine\n")
    out = {"the dataset": data, "inside the dataset": data / "parquet", "holding the dataset": tmp_path / "data",
           "a file": tmp_path / "out.txt", "a folder of yours": tmp_path / "mine"}[where]
    if where == "a file":
        out.write_text("mine\n")
    elif where == "a folder of yours":
        (out / "data").mkdir(parents=True)
        (out / "data" / "thesis.parquet").write_bytes(b"3 years of work")
    before = {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    with pytest.raises(SystemExit) as e:
        hub_dataset.main(["--dataset", str(data), "--output_dir", str(out)])
    assert str(e.value.code) == "error: " + {
        "the dataset": f"--output_dir {out} is the --dataset folder; choose another one",
        "inside the dataset": f"--output_dir {out} is inside --dataset {data}; choose a folder outside it",
        "holding the dataset": f"--output_dir {out} holds --dataset {data}, which an export there would delete; "
                               "choose another one",
        "a file": f"--output_dir {out} is a file; choose a folder",
        "a folder of yours": f"--output_dir {out} exists and is not an export of this tool (no card of its, "
                             "README.md tagged imagenet-trainer); it writes only into a new or empty folder or its "
                             "own earlier export: choose another one"}[where]
    after = {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert after == before


def test_a_copied_export_without_its_job_record_is_written_again_in_place(preprocessed, tmp_path, capsys):
    """The job record lies beside OUT (.OUT.export.json): `cp -r` of an export, or one written before the record
    existed, leaves it behind. Such a folder holds only an export's files, so the same command writes it again;
    a data/*.parquet that is no shard of an export's (thesis.parquet) is still the user's."""
    out, copy = tmp_path / "a" / "export", tmp_path / "b" / "export"
    hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", str(out)])
    shutil.copytree(out, copy)
    capsys.readouterr()
    hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", str(copy)])
    assert capsys.readouterr().out.startswith(f"wrote {copy}")
    assert files_of(copy / "data") == files_of(out / "data")
    (copy / "data" / "thesis.parquet").write_bytes(b"3 years of work")
    job = tmp_path / "b" / ".export.export.json"
    job.write_text(job.read_text().replace('"done": true', '"done": false'))  # as if the data had changed
    with pytest.raises(SystemExit) as e:
        hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", str(copy)])
    assert f"{copy / 'data' / 'thesis.parquet'} is not an export's file" in str(e.value.code)

    # what only looks like an export, without the record: another dataset in the Hub's layout, or notes
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "data" / "train-00000-of-00001.parquet").write_bytes(b"another dataset")
    (other / "README.md").write_text("---\nlicense: mit\ntags:\n- vision\n---\n# my dataset\n")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("# my project notes\n")
    for folder in (other, notes):
        before = files_of(folder)
        with pytest.raises(SystemExit) as e:
            hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", str(folder)])
        assert "is not an export of this tool" in str(e.value.code) and files_of(folder) == before


def test_a_file_of_yours_in_a_finished_export_stays_and_no_new_export_deletes_it(preprocessed, tmp_path, capsys):
    """A rerun of a finished export writes nothing (README), a LICENSE.md added to it included; an export that must
    replace OUT (a damaged shard) refuses in one line instead of deleting that file with the folder."""
    out = tmp_path / "imagenet-parquet"
    args = ["--dataset", str(preprocessed), "--output_dir", str(out)]
    hub_dataset.main(args)
    (out / "LICENSE.md").write_text("dataset license terms\n")
    kept = identities(out)
    capsys.readouterr()
    hub_dataset.main(args)
    assert capsys.readouterr().out == (f"{out}: already holds this export of {preprocessed} (same data and shard size, "
                                       "every file present); nothing to write\n")
    assert identities(out) == kept

    shard = next((out / "data").glob("train-*.parquet"))
    shard.write_bytes(shard.read_bytes() + b"x")
    before = files_of(out)
    with pytest.raises(SystemExit) as e:
        hub_dataset.main(args)
    assert str(e.value.code) == (f"error: --output_dir {out}: {out / 'LICENSE.md'} is not an export's file (1 such "
                                 "paths), and a new export replaces the folder whole; move them out, then run again")
    assert files_of(out) == before and not (tmp_path / ".imagenet-parquet.tmp").exists()


# The CLI with a push to tests/hub_server.py's Hub, in a process of its own, and a SIGTERM from the kernel: half a
# second into an upload that takes a minute (hours for ImageNet), or as the export finishes (after the move into
# place, before the push).
CUT_PUSH = r"""
import os, signal, sys, threading, time
import huggingface_hub
from imagenet_trainer import hub_dataset
if sys.argv[1] == "during":
    upload_folder = huggingface_hub.HfApi.upload_folder
    def slow_upload(self, *args, **kwargs):
        print("upload started", time.time(), flush=True)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        time.sleep(60)
        return upload_folder(self, *args, **kwargs)
    huggingface_hub.HfApi.upload_folder = slow_upload
else:
    fsync_dir = hub_dataset.fsync_dir
    def fsync_dir_then_sigterm(path):
        fsync_dir(path)
        os.kill(os.getpid(), signal.SIGTERM)
    hub_dataset.fsync_dir = fsync_dir_then_sigterm
hub_dataset.main(sys.argv[2:])
"""


@pytest.mark.parametrize("when", ["before", "during"])
def test_sigterm_at_the_push_stops_at_once_and_says_the_export_is_complete(preprocessed, tmp_path, when):
    from hub_server import LocalHub

    out = tmp_path / "imagenet-parquet"
    with LocalHub() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "home"), HF_TOKEN=hub.token, OMP_NUM_THREADS="1",
                   HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1")
        proc = subprocess.run([sys.executable, "-c", CUT_PUSH, when, "--dataset", str(preprocessed), "--output_dir",
                               str(out), "--push_to_hub", "me/imagenet"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        ended = time.time()
        repo = hub.repo("me/imagenet", "dataset")
        assert not [p for p in (repo.files if repo else ()) if p.endswith(".parquet")]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.strip().splitlines()[-1] == (
        f"SIGTERM {when} the push: the export is complete in {out}; run the same command to push it"), proc.stderr
    said = proc.stdout.splitlines()
    assert said[0] == f"wrote {out}", said
    if when == "during":  # at once, not once the minute's upload is done
        assert ended - float(said[1].split()[-1]) < 30, said
    record = json.loads((tmp_path / ".imagenet-parquet.export.json").read_text())
    assert record["done"] and record["files"] == {rel: len(data) for rel, data in files_of(out).items()}


def test_ctrl_c_during_the_push_says_the_export_is_complete_and_the_same_command_pushes(preprocessed, tmp_path,
                                                                                     monkeypatch, capsys):
    """The work folder is gone once the export is in place: the message names OUT and the push; the rerun only
    pushes, with a LICENSE.md of the user's in OUT."""
    from hub_server import LocalHub, point_this_process_at

    out = tmp_path / "imagenet-parquet"
    command = ["--dataset", str(preprocessed), "--output_dir", str(out), "--push_to_hub", "me/imagenet"]
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        with monkeypatch.context() as m:
            m.setattr(huggingface_hub.HfApi, "upload_folder", lambda *args, **kwargs: (_ for _ in ()).throw(
                KeyboardInterrupt))  # what Ctrl-C raises in the main thread, here during the upload
            with pytest.raises(SystemExit) as e:
                hub_dataset.main(command)
        assert str(e.value.code) == (f"interrupted during the push: the export is complete in {out}; run the same "
                                     "command to push it")
        assert not (tmp_path / ".imagenet-parquet.tmp").exists()
        (out / "LICENSE.md").write_text("dataset license terms\n")
        capsys.readouterr()
        hub_dataset.main(command)
        said = capsys.readouterr().out.splitlines()
        assert said[0].endswith("nothing to write") and said[1].startswith("pushed to ") and len(said) == 2, said
        repo = hub.repo("me/imagenet", "dataset")
        assert {k: v for k, v in repo.files.items() if k != ".gitattributes"} == files_of(out)
        assert "LICENSE.md" in repo.files and not hub.unhandled


def test_a_partial_copy_of_an_export_names_the_missing_shard_and_scores_the_splits_it_has(preprocessed, reference,
                                                                                        tmp_path, monkeypatch):
    """A copy missing one shard is one line naming it and the size of its set (datasets would say only that the
    split sizes differ from the card's); the validation shards alone with the cards, what `hf download
    you/imagenet-1k --repo-type dataset --include "data/validation-*" --include "*.json" --include README.md`
    leaves, is a dataset validate.py scores: the same labels, names and human names as the preprocess.py output."""
    import datasets

    import validate
    from imagenet_trainer.data import load_image_dataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "imagenet-parquet"
    shutil.copytree(reference, copy)
    train = sorted((copy / "data").glob("train-*.parquet"))
    train[1].unlink()
    with pytest.raises(ValueError) as e:
        load_image_dataset(str(copy))
    assert str(e.value) == (f"{copy}: data/{train[1].name} is missing (the set has {len(train)} train files); "
                            "download it")

    for shard in (copy / "data").iterdir():
        if not shard.name.startswith("validation-"):
            shard.unlink()
    ds, split, names = validate.load_split(validate.ValidateConfig(model="unused", dataset=str(copy),
                                                                   split="validation"), "--split")
    original = datasets.load_from_disk(str(preprocessed))
    assert list(ds) == ["validation"] and names == original["validation"].features["label"].names
    assert split["label"] == original["validation"]["label"]
    assert ilsvrc.class_descriptions(ds) == ilsvrc.class_descriptions(original)
    # an older push_to_hub's card lists the splits in dataset_info alone, which datasets expects too
    card = huggingface_hub.metadata_load(copy / "README.md")
    del card["configs"]
    assert {s["name"] for s in card["dataset_info"]["splits"]} >= {"train", "validation"}
    huggingface_hub.metadata_save(copy / "README.md", card)
    assert list(load_image_dataset(str(copy))) == ["validation"]


def test_a_truncated_arrow_file_is_refused_in_one_line_naming_it_before_any_export(preprocessed, tmp_path):
    """Cut just after its schema, an Arrow file reads as a short one (no rows): the export would write fewer images
    with a card that agrees. It is checked against preprocess.py's manifest first, as train.py checks it."""
    import pyarrow as pa

    data, out = tmp_path / "imagenet", tmp_path / "imagenet-parquet"
    shutil.copytree(preprocessed, data)
    arrow = sorted((data / "train").glob("*.arrow"))[-1]
    with pa.OSFile(str(arrow)) as f:
        pa.ipc.read_message(f)  # the schema
        schema_end = f.tell()
    size = arrow.stat().st_size
    os.truncate(arrow, schema_end)
    with pytest.raises(SystemExit) as e:
        hub_dataset.main(["--dataset", str(data), "--output_dir", str(out)])
    assert str(e.value.code) == (f"error: {arrow} has {schema_end:,} bytes, preprocess_manifest.json says {size:,} "
                                 f"(a truncated or interrupted copy?); copy it again, then check with: preprocess.py "
                                 f"--verify {data}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet"]


def test_the_folder_the_command_runs_in_is_an_output_dir(preprocessed, tmp_path, monkeypatch, capsys):
    """`--output_dir .` in an empty folder (mkdir, cd): the work folder, lock and job record go beside it, as for any
    other name, and the line after the export says the shell's folder was replaced."""
    here = tmp_path / "imagenet-parquet"
    here.mkdir()
    monkeypatch.chdir(here)
    hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", "."])
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {here}", f"the folder this command ran in was replaced by the export: `cd {here}` to see it"]
    assert (here / "README.md").is_file() and list((here / "data").glob("validation-*.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".imagenet-parquet.export.json", "imagenet-parquet"]
    with pytest.raises(SystemExit) as e:  # the same command again, from the shell left in the replaced folder
        hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", "."])
    assert str(e.value.code) == ("error: --output_dir .: the folder this command runs in no longer exists (replaced "
                                 "by an export?): cd into it again")
    monkeypatch.chdir(here)
    hub_dataset.main(["--dataset", str(preprocessed), "--output_dir", "."])
    assert capsys.readouterr().out.endswith("; nothing to write\n")


def card_line(card: str, field: str) -> str:
    """The card's ``- **field:** ...`` line (Source section); "" without one."""
    return next((line for line in card.splitlines() if line.startswith(f"- **{field}:** ")), "")


def test_the_card_names_the_archives_imagenet_was_read_from(ilsvrc_tree, tmp_path):
    """preprocess.py reads image-net.org's tars in place and records Kaggle's tree's layout for the rows they give;
    the card names the packaging and the archives read, not Kaggle's tree."""
    import preprocess
    from imagenet_trainer import demo_archives

    tars = demo_archives.imagenet_org(ilsvrc_tree, tmp_path / "image-net.org")
    preprocess.main(["--data_dir", str(tars), "--output_dir", str(tmp_path / "imagenet"), "--num_proc", "1"])
    assert json.loads((tmp_path / "imagenet" / "source.json").read_text())["packaging"] == "image-net.org"
    card = (hub_dataset.export_parquet(tmp_path / "imagenet", tmp_path / "parquet") / "README.md").read_text()
    assert card_line(card, "Layout converted") == (
        "- **Layout converted:** image-net.org's ILSVRC-2012 tars and devkit, read in place (ILSVRC2012_img_train.tar, "
        "ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz, ILSVRC2012_img_test_v10102019.tar, "
        "ILSVRC2012_bbox_train_v2.tar.gz, ILSVRC2012_bbox_val_v3.tgz)")


def test_the_card_states_how_the_images_were_stored_and_the_files_skipped(preprocessed, reference, ilsvrc_tree,
                                                                          tmp_path):
    """A 64 px, quality 50 copy and the lossless one get different cards; both count the files preprocess.py skipped
    (the fixture's truncated, empty and non-image files), whose report goes into the repo; the columns image_id and
    objects are described; a full download with skipped files says how many."""
    import preprocess

    small = tmp_path / "imagenet64"
    preprocess.main(["--data_dir", str(ilsvrc_tree), "--output_dir", str(small), "--num_proc", "1",
                     "--shorter_side", "64", "--quality", "50"])
    small_card = (hub_dataset.export_parquet(small, tmp_path / "parquet64") / "README.md").read_text()
    card = (reference / "README.md").read_text()
    assert card_line(small_card, "Storage") == ("- **Storage:** downscaled: shorter side at most 64 px, re-encoded as "
                                                "JPEG at quality 50 (not the original files)")
    assert card_line(card, "Storage") == (
        "- **Storage:** the original files (their JPEG data kept losslessly, re-coded with restart markers for fast "
        "crops); 4 files that were not plain JPEGs re-encoded at quality 90")
    for text in (card, small_card):
        assert card_line(text, "Skipped at conversion") == (
            "- **Skipped at conversion:** 1 train, 1 validation, 1 test files that did not decode (listed with "
            "reasons in preprocess_report.json)")
        assert "`image_id` (the source file's name without its extension" in text
        assert "`objects` (bounding boxes: a list of {`bbox`: [xmin, ymin, xmax, ymax] in pixels of the stored " \
               "image, `label`}" in text
    # the repo's copy: the settings and every skipped file, and no local folder nor the list of re-encoded files
    local = json.loads((preprocessed / "preprocess_report.json").read_text())
    shared_text = (reference / "preprocess_report.json").read_text()
    shared = json.loads(shared_text)
    assert shared["skipped"] == local["skipped"] and shared["reencoded"] == local["reencoded"]
    assert shared["config"]["quality"] == 90 and "data_dir" not in shared["config"] and "reencoded_files" not in shared
    assert local["reencoded_files"] and str(preprocessed) in json.dumps(local)
    assert str(preprocessed) not in shared_text and str(ilsvrc_tree) not in shared_text

    ds = datasets.load_from_disk(str(preprocessed))
    source = json.loads((preprocessed / "source.json").read_text())
    report = json.loads((preprocessed / "preprocess_report.json").read_text())
    full = hub_dataset.dataset_card(ds, ilsvrc.class_descriptions(ds), {**source, "name": "ILSVRC-2012",
                                                                       "ilsvrc2012_full": True}, [], report)
    assert card_line(full, "Data") == ("- **Data:** ILSVRC-2012 (the full ILSVRC-2012 download, less 3 files that "
                                       "did not decode)")


@pytest.mark.parametrize("classes, imagenet", [(["n01440764", "n01443537"], True), (["cat", "dog"], False)])
def test_imagenet_images_in_imagefolder_layout_get_imagenets_terms_in_the_card(tmp_path, classes, imagenet):
    """torchvision's ImageFolder layout (train/<wnid>/, val/<wnid>/) of ImageNet's images is marked as ImageNet's
    (license: other, its terms' paragraph) as Kaggle's tree is; class folders of other names are not."""
    import numpy as np
    import preprocess
    import skimage.data
    from PIL import Image

    photo = skimage.data.astronaut()
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(2):
                crop = np.ascontiguousarray(photo[64 * i:64 * i + 96, 96 * k:96 * k + 128])
                Image.fromarray(crop).save(tmp_path / "tree" / split / name / f"{name}_{i}.JPEG", quality=90)
    preprocess.main(["--data_dir", str(tmp_path / "tree"), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    card = (hub_dataset.export_parquet(tmp_path / "out", tmp_path / "parquet") / "README.md").read_text()
    assert ("license: other" in card) == imagenet
    assert ("ImageNet's terms of access (image-net.org) allow non-commercial research use and forbid redistributing "
            "the images" in card) == imagenet


def test_the_repos_report_names_no_local_folder(tmp_path, monkeypatch):
    """preprocess.py's warnings name the data folder resolved (here given relative) and the report's config the
    folders as typed: the repo's copy of the report has neither, and keeps the warnings and the settings."""
    import numpy as np
    import preprocess
    import skimage.data
    from PIL import Image

    photo = skimage.data.astronaut()
    for k, name in enumerate(("n01440764", "n01443537")):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(4):
            crop = np.ascontiguousarray(photo[32 * i:32 * i + 96, 96 * k:96 * k + 128])
            Image.fromarray(crop).save(tmp_path / "tree" / name / f"{name}_{i}.JPEG", quality=90)
    (tmp_path / "tree" / "README.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    preprocess.main(["--data_dir", "tree", "--output_dir", "out", "--num_proc", "1", "--val_fraction", "0.25"])
    local = (tmp_path / "out" / "preprocess_report.json").read_text()
    assert str(tmp_path / "tree") in local  # a warning names the stray file's folder, resolved
    shared = (hub_dataset.export_parquet(tmp_path / "out", tmp_path / "parquet") / "preprocess_report.json")
    text = shared.read_text()
    assert str(tmp_path) not in text and "/tmp" not in text, text
    report = json.loads(text)
    assert [w for w in report["warnings"] if "README.txt" in w and "<local folder>" in w], report["warnings"]
    assert report["config"]["val_fraction"] == 0.25
