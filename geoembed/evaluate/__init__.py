"""Risk models on coordinates vs embeddings: GLM / GAM / GBM estimators, spatial splitters, metrics, report.

Library use::

    from geoembed.config import EvaluateConfig
    from geoembed.evaluate import run_evaluation, write_report

    cfg = EvaluateConfig(table="policies.parquet", target="claims", exposure="years", family="poisson",
                         features=["none", "coords", "embeddings"], models=["glm", "gbm"])
    result = run_evaluation(table, cfg)            # records, out-of-fold predictions, folds
    write_report(result, "report/", cfg=cfg)       # evaluation.json, report.md, figures

The estimators (``GLMRegressor``, ``GAMRegressor``, ``GBMRegressor``) and splitters (``SpatialBlockKFold``,
``LeaveRegionOut``) are scikit-learn citizens, usable on their own with ``clone``, ``GridSearchCV``,
``cross_val_predict`` and ``Pipeline``; ``make_estimator`` and ``make_splitter`` give the ones a config
describes. Fold functions (``assign_folds``, ``grid_blocks``, ``h3_blocks``, ``kmeans_blocks``,
``blocks_to_folds``) work on arrays.
"""

from geoembed.evaluate.core import (
    EvaluationResult,
    embed,
    embedding_columns,
    evaluate,
    run_evaluation,
    summary_table,
)
from geoembed.evaluate.estimators import make_estimator
from geoembed.evaluate.metrics import (
    actual_expected_by_decile,
    decile_index,
    deviance,
    deviance_scorer,
    gini,
    lorenz_curve,
    mae,
    mean_deviance,
    rmse,
    unit_deviance,
)
from geoembed.evaluate.models import (
    GAMRegressor,
    GBMRegressor,
    GLMRegressor,
    ModelFitError,
    null_predict,
)
from geoembed.evaluate.pca import EmbeddingPCA
from geoembed.evaluate.report import lift_table, markdown_table, write_report
from geoembed.evaluate.splits import (
    LeaveRegionOut,
    SpatialBlockKFold,
    assign_folds,
    bbox_folds,
    blocks_to_folds,
    fold_ids,
    grid_blocks,
    h3_blocks,
    inner_folds,
    kmeans_blocks,
    make_splitter,
    polygon_folds,
    random_folds,
    region_folds,
)
from geoembed.evaluate.support import support_summary
from geoembed.evaluate.tables import read_table

__all__ = [
    "EmbeddingPCA", "EvaluationResult", "GAMRegressor", "GBMRegressor", "GLMRegressor", "LeaveRegionOut", "ModelFitError",
    "SpatialBlockKFold", "actual_expected_by_decile", "assign_folds", "bbox_folds", "blocks_to_folds",
    "decile_index", "deviance", "deviance_scorer", "embed", "embedding_columns", "evaluate", "fold_ids", "gini",
    "grid_blocks", "h3_blocks", "inner_folds", "kmeans_blocks", "lift_table", "lorenz_curve", "mae", "make_estimator",
    "make_splitter", "markdown_table", "mean_deviance", "null_predict", "polygon_folds", "random_folds",
    "read_table", "region_folds", "rmse", "run_evaluation", "summary_table", "support_summary", "unit_deviance", "write_report",
]
