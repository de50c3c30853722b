"""Risk models on coordinates vs embeddings: GLM / GAM / GBM adapters, spatial splits, metrics, report.

Library use::

    from geoembed.config import EvaluateConfig
    from geoembed.evaluate import run_evaluation, write_report

    cfg = EvaluateConfig(table="policies.parquet", target="claims", exposure="years", family="poisson",
                         features=["none", "coords", "embeddings"], models=["glm", "gbm"])
    result = run_evaluation(table, cfg)            # records, out-of-fold predictions, folds
    write_report(result, "report/", cfg=cfg)       # evaluation.json, report.md, figures

Fold assignment (``assign_folds``, ``grid_blocks``, ``h3_blocks``, ``kmeans_blocks``, ``blocks_to_folds``)
and the model adapters (``make_model``, ``GLMModel``, ``GAMModel``, ``GBMModel``) are usable on their own.
"""

from geoembed.evaluate.core import (
    EvaluationResult,
    design_for,
    embed,
    embedding_columns,
    evaluate,
    read_table,
    run_evaluation,
    summary_table,
)
from geoembed.evaluate.metrics import (
    actual_expected_by_decile,
    decile_index,
    deviance,
    gini,
    lorenz_curve,
    mae,
    rmse,
    unit_deviance,
)
from geoembed.evaluate.models import (
    Design,
    GAMModel,
    GBMModel,
    GLMModel,
    ModelFitError,
    make_model,
    null_predict,
)
from geoembed.evaluate.report import markdown_table, write_report
from geoembed.evaluate.splits import (
    assign_folds,
    bbox_folds,
    blocks_to_folds,
    grid_blocks,
    h3_blocks,
    inner_folds,
    kmeans_blocks,
    polygon_folds,
    random_folds,
    region_folds,
)

__all__ = [
    "Design", "EvaluationResult", "GAMModel", "GBMModel", "GLMModel", "ModelFitError",
    "actual_expected_by_decile", "assign_folds", "bbox_folds", "blocks_to_folds", "decile_index",
    "design_for", "deviance", "embed", "embedding_columns", "evaluate", "gini", "grid_blocks", "h3_blocks",
    "inner_folds", "kmeans_blocks", "lorenz_curve", "mae", "make_model", "markdown_table", "null_predict", "polygon_folds",
    "random_folds", "read_table", "region_folds", "rmse", "run_evaluation", "summary_table", "unit_deviance",
    "write_report",
]
