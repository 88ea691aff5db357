from kitscascade import config, runlog, stage1

runlog.start(snakemake.log[0])
stage1.predict(
    snakemake.input.npz,
    snakemake.input.models,
    snakemake.input.imaging,
    snakemake.input.get("segmentation"),
    snakemake.wildcards.case,
    config.with_execution(snakemake.params.cfg, snakemake.config, "stage1"),
    snakemake.params.labels,
    snakemake.output.mask,
    snakemake.output.labels,
    snakemake.output.info,
    threads=snakemake.threads,
)
