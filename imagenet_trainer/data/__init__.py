"""The input pipeline, one module per stage, in the order a training sample flows through them:

1. ``sources``: ``--dataset`` -> a ``DatasetDict`` of memory-mapped Arrow splits (``load_image_dataset``; a
   preprocess.py output is size-checked against its manifest first) and the class names (``check_labels``).
2. ``rows``: a split -> ``Rows(split)[i]`` = (the row's JPEG bytes as a zero-copy view of the table, label).
3. ``decode``: bytes + the crop box -> RGB pixels of just that part: JPEG header probe, the tiles under the crop
   (files preprocess.py tiled with ``imagenet_trainer.tile_writer``), DCT-scaled decode; one uint8 resize.
4. ``samples``: a key -> (uint8 CHW crop, label): ``TrainSet`` (RandomResizedCrop + flip [+ RandAugment /
   TrivialAugment], a row that does not decode replaced by another), ``EvalSet`` (resize + centre crop).
5. ``sampling``: which keys each rank reads, and every seed: ``ResumableSampler`` (exact mid-epoch resume, elastic
   across process counts: ``elastic_position``), ``sample_rng`` (one sample's stream), ``micro_batch_seed``.
6. ``batch``: samples -> one uint8 NHWC batch in shared memory (``collate``).
   ``ring``: the same written into shared-memory slots the workers reuse (``BatchRing``, ``RingCollate``),
   train.py's train loader's hand-off.
7. ``device``: on the accelerator, ``normalize``, ``random_erasing``, ``mixup_cutmix`` (mixed one-hot targets);
   train.py's loss, ``F.cross_entropy`` with ``label_smoothing``, takes it from there.

Every sample is a pure function of ``(seed, epoch, index)`` and every batch-level draw of the micro-batch's place
in the run, so a resumed run sees exactly the batches an uninterrupted one would. Why each stage is fast (against
torchvision's ImageFolder + PIL pipeline): ``benchmarks/loader.py`` and BENCHMARKS.md.

The names other code imports are re-exported here: ``from imagenet_trainer.data import TrainSet`` works.
"""
from imagenet_trainer.data.batch import Batch, collate
from imagenet_trainer.data.device import mixup_cutmix, normalize, random_erasing
from imagenet_trainer.data.rows import Rows
from imagenet_trainer.data.samples import (INTERPOLATIONS, REPLACEMENT_TRIES, EvalSet, TrainSet,
                                           random_resized_crop_params, replacement_row)
from imagenet_trainer.data.sampling import (BATCHING_KEYS, ResumableSampler, elastic_position, micro_batch_seed,
                                            sample_rng)
from imagenet_trainer.data.sources import check_labels, load_image_dataset

__all__ = ["Batch", "EvalSet", "INTERPOLATIONS", "BATCHING_KEYS", "REPLACEMENT_TRIES", "ResumableSampler", "Rows",
           "TrainSet", "check_labels", "collate", "elastic_position", "load_image_dataset", "micro_batch_seed",
           "mixup_cutmix", "normalize", "random_erasing", "random_resized_crop_params", "replacement_row",
           "sample_rng"]
