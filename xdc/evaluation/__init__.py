"""Evaluation of pretrained encoders: probes, finetuning, retrieval, cluster metrics and the run
report.

Each protocol is a Python function and an ``xdc`` command; a command with ``--protocol`` runs the
named recipe and writes every setting into its result (README, "Evaluation protocols";
docs/protocols.md gives each value and the file it was read from):

- ``extract.extract_splits`` (``extract``): frozen features of N clips per video → FEATURES.npz.
- ``linear_probe.evaluate_linear_probe`` (``linear-probe``, xdc's own): logistic regression on
  frozen features, video-level top-1/top-5; one-vs-rest and mAP when rows carry several labels
  (``Manifest.label_sets``) → RUN/eval/linear_probe_<modality>.json.
- ``audio_probe.audio_probe`` (``audio-probe --protocol standard|xdc-pooled --benchmark
  esc50|dcase2014``): ``standard`` is AVTS's as AVID-CMA and GDT run it (2-s windows, scores
  averaged per recording); ``xdc-pooled`` is xdc's own → RUN/eval/audio_probe.json.
- ``finetune.finetune`` (``finetune --protocol quick|xdc|xdc-32|avid-cma|avid-cma-32|gdt
  --benchmark ucf101|hmdb51``): full finetuning by a published recipe (``finetune_protocols``),
  ``quick`` being xdc's own → OUT/finetune.json, OUT/split_N/.
- ``retrieval.evaluate_retrieval`` (``retrieval --protocol xdc|selavi``): recall@k; ``xdc`` (own:
  cosine, audio↔video through CCA) or SeLaVi's video retrieval → RUN/eval/retrieval.json
  (retrieval_selavi.json).
- ``cluster_eval.cluster_evaluation`` (``cluster-eval``): NMI/ARI/purity → RUN/eval/clusters.json.
- ``report.write_report`` (``report``): one page of every result → RUN/report.html.

A run's encoders (``--checkpoint RUN``) keep their stored BatchNorm statistics; a random one of the
same architecture (``--checkpoint random --like RUN``) has them recomputed on the same training
clips (``extract.FeatureExtractor``, ``--bn-statistics``). A test video that cannot be read counts
as wrong (``protocol``: the official list is the denominator). Finetuning and retrieval need one
class per row and refuse rows with several labels (``extract.require_single_labels``). To run
several protocols on one extraction, call ``extract_splits`` once and pass its features to
``probe_clip_features``, ``retrieval.retrieval`` and ``audio_probe.probe_fold``.
"""

from xdc.evaluation.audio_probe import audio_probe, fold_rows, probe_fold, summarize_folds
from xdc.evaluation.cluster_eval import cluster_evaluation
from xdc.evaluation.encoders import RANDOM, EvalEncoders, load_eval_encoders
from xdc.evaluation.extract import EvalClips, FeatureExtractor, extract_splits
from xdc.evaluation.linear_probe import evaluate_linear_probe, linear_probe, probe_clip_features
from xdc.evaluation.retrieval import evaluate_retrieval, fit_cca, recall_at_k, retrieval
from xdc.features import calibration_keys

__all__ = [
    "RANDOM",
    "EvalClips",
    "EvalEncoders",
    "FeatureExtractor",
    "audio_probe",
    "calibration_keys",
    "cluster_evaluation",
    "evaluate_linear_probe",
    "evaluate_retrieval",
    "extract_splits",
    "fit_cca",
    "fold_rows",
    "linear_probe",
    "load_eval_encoders",
    "probe_clip_features",
    "probe_fold",
    "recall_at_k",
    "retrieval",
    "summarize_folds",
]
