"""Evaluation of pretrained encoders: probes, retrieval, cluster metrics and the run report.

Frozen-feature protocols (README, "Evaluation protocols"), each a Python function and a command:

| function                                   | command          | result file                   |
|--------------------------------------------|------------------|-------------------------------|
| ``extract.extract_splits``                 | ``extract``      | FEATURES.npz                  |
| ``linear_probe.evaluate_linear_probe``     | ``linear-probe`` | RUN/eval/linear_probe_<m>.json |
| ``audio_probe.audio_probe``                | ``audio-probe``  | RUN/eval/audio_probe.json     |
| ``retrieval.evaluate_retrieval``           | ``retrieval``    | RUN/eval/retrieval.json       |
| ``cluster_eval.cluster_evaluation``        | ``cluster-eval`` | RUN/eval/clusters.json        |

A run's encoders (``--checkpoint RUN``) keep their stored BatchNorm statistics; a random one of the
same architecture (``--checkpoint random --like RUN``) has them recomputed on the same training
clips (``extract.FeatureExtractor``, ``--bn-statistics``). A test video that cannot be read counts
as wrong (``protocol``: the official list is the denominator). To run several protocols on one
extraction, call ``extract_splits`` once and pass its features to ``probe_clip_features``,
``retrieval.retrieval`` and ``audio_probe.probe_fold``.
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
