from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
steps.predict_stage2(
    snakemake.input.rois,
    snakemake.input.info,
    snakemake.input.models,
    snakemake.input.imaging,
    snakemake.params.cfg,
    snakemake.output[0],
    threads=snakemake.threads,
)
