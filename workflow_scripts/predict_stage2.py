from kitscascade import config, runlog, stage2

runlog.start(snakemake.log[0])
stage2.predict(
    snakemake.input.rois,
    snakemake.input.info,
    snakemake.input.models,
    snakemake.input.imaging,
    config.with_execution(snakemake.params.cfg, snakemake.config, "stage2"),
    snakemake.params.labels,
    snakemake.output[0],
    threads=snakemake.threads,
    stage1_mask_path=snakemake.input.mask,
    statistics_path=snakemake.input.statistics,
)
