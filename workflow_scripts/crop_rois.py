from kitscascade import roi, runlog

runlog.start(snakemake.log[0])
roi.crop_rois(
    snakemake.input.imaging,
    snakemake.input.get("segmentation"),
    snakemake.wildcards.case,
    snakemake.input.mask,
    snakemake.input.statistics,
    snakemake.params.cfg,
    snakemake.params.labels,
    snakemake.output.npz,
    snakemake.output.info,
)
