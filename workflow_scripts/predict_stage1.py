from kitscascade import runlog, stage1

runlog.start(snakemake.log[0])
stage1.predict(
    snakemake.input.npz,
    snakemake.input.models,
    snakemake.input.imaging,
    snakemake.input.get("segmentation"),
    snakemake.wildcards.case,
    snakemake.params.cfg,
    snakemake.output.mask,
    snakemake.output.info,
    threads=snakemake.threads,
)
