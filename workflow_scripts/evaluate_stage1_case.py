from kitscascade import metrics, runlog

runlog.start(snakemake.log[0])
p = snakemake.params
metrics.evaluate_stage1_case(
    snakemake.input.imaging,
    snakemake.input.segmentation,
    snakemake.wildcards.case,
    snakemake.input.stage1_labels,
    p.cfg,
    p.labels,
    p.classes,
    snakemake.output[0],
)
