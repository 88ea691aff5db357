from kitscascade import plots, runlog

runlog.start(snakemake.log[0])
plots.plot_case(
    snakemake.input.imaging,
    snakemake.input.segmentation,
    snakemake.wildcards.case,
    snakemake.input.prediction,
    snakemake.params.labels,
    snakemake.output[0],
)
