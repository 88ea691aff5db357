from kitscascade import metrics, runlog

runlog.start(snakemake.log[0])
metrics.evaluate_case(
    snakemake.input.imaging,
    snakemake.input.segmentation,
    snakemake.wildcards.case,
    snakemake.input.prediction,
    snakemake.input.stage1,
    snakemake.input.rois,
    snakemake.params.cfg,
    snakemake.params.labels,
    snakemake.output[0],
)
