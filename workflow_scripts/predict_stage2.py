from kitscascade import runlog, stage2

runlog.start(snakemake.log[0])
stage2.predict(
    snakemake.input.rois,
    snakemake.input.info,
    snakemake.input.models,
    snakemake.input.imaging,
    snakemake.params.cfg,
    snakemake.output[0],
    threads=snakemake.threads,
)
