from kitscascade import runlog, stage1

runlog.start(snakemake.log[0])
stage1.preprocess(
    snakemake.input.imaging,
    snakemake.input.get("segmentation"),
    snakemake.wildcards.case,
    snakemake.input.statistics,
    snakemake.params.cfg,
    snakemake.params.labels,
    snakemake.output[0],
)
