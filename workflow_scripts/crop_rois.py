from kitscascade import runlog, steps

runlog.start(snakemake.log[0])
p = snakemake.params
steps.crop_rois(
    p.data_dir,
    snakemake.wildcards.case,
    snakemake.input.mask,
    snakemake.input.statistics,
    p.cfg,
    snakemake.output.npz,
    snakemake.output.info,
)
